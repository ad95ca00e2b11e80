"""Fixtures that run the real leasehold server for the client's tests.

The binary is ``$LEASEHOLD_BIN``, else ``<repo>/.build/debug/leasehold``; when
that is missing it is built once with ``swift build --product leasehold``
(under the shared build lock). A test never runs without a real server: if
there is none, the tests fail and say why. (``fake_server`` is the exception:
an in-process stand-in, fake_server.py, for the client's unit tests of what
the real server does not readily do on cue.)
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from fake_server import FakeServer, Script

pytest_plugins = ["pytester"]

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_LOCK = "/tmp/leasehold-swift-build.lock"
ADMIN_TOKEN = "test-admin-token"

#: The default test inventory: two FC arrays, one iSCSI array, one switch.
INVENTORY: list[dict[str, Any]] = [
    {"name": "array-01", "type": "array", "labels": {"proto": "fc", "model": "af40"},
     "attributes": {"mgmt": "10.0.0.11"}},
    {"name": "array-02", "type": "array", "labels": {"proto": "fc", "model": "af40"},
     "attributes": {"mgmt": "10.0.0.12"}},
    {"name": "array-03", "type": "array", "labels": {"proto": "iscsi"},
     "attributes": {"mgmt": "10.0.0.13"}},
    {"name": "switch-01", "type": "switch", "labels": {}, "attributes": {"mgmt": "10.0.1.1"}},
]


def inventory_yaml(resources: list[dict[str, Any]]) -> str:
    """The inventory as YAML (JSON-quoted scalars, which YAML reads as-is)."""
    lines = ["resources:"]
    for r in resources:
        lines.append(f"  - name: {json.dumps(r['name'])}")
        lines.append(f"    type: {json.dumps(r['type'])}")
        if r.get("labels"):
            lines.append(f"    labels: {json.dumps(r['labels'])}")
        if r.get("attributes"):
            lines.append(f"    attributes: {json.dumps(r['attributes'])}")
    return "\n".join(lines) + "\n"


def _build_binary(path: Path) -> None:
    swift = shutil.which("swift")
    if swift is None:
        pytest.fail(
            f"the leasehold server binary is missing ({path}) and there is no `swift` "
            "to build it; build it (swift build --product leasehold) or set LEASEHOLD_BIN",
            pytrace=False,
        )
    cmd = ["flock", BUILD_LOCK, swift, "build", "--product", "leasehold"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or not path.exists():
        pytest.fail(
            f"building the leasehold server failed ({' '.join(cmd)} in {REPO_ROOT}, "
            f"exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def leasehold_bin() -> Path:
    """Path to the server binary (built if it is missing)."""
    env = os.environ.get("LEASEHOLD_BIN")
    if env:
        path = Path(env)
        if not path.exists():
            pytest.fail(f"LEASEHOLD_BIN={env} does not exist", pytrace=False)
        return path
    path = REPO_ROOT / ".build" / "debug" / "leasehold"
    if not path.exists():
        _build_binary(path)
    return path


@dataclass
class Server:
    """A running ``leasehold serve`` on an ephemeral port."""

    proc: subprocess.Popen[str]
    port: int
    workdir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def free(
        self, name: str, reason: str | None = None, token: str = ADMIN_TOKEN, now: bool = False
    ) -> int:
        """Admin force-free (``now``: whatever the lease's revoke_wait); returns the HTTP status."""
        payload: dict[str, Any] = {} if reason is None else {"reason": reason}
        if now:
            payload["now"] = True
        body = json.dumps(payload).encode()
        req = urllib.request.Request(
            f"{self.http_url}/v1/resources/{name}/free",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``."""
        with urllib.request.urlopen(f"{self.http_url}/v1/status", timeout=10) as resp:
            return json.loads(resp.read())

    def state_of(self, name: str) -> str:
        for r in self.status()["resources"]:
            if r["name"] == name:
                return str(r["state"])
        raise KeyError(name)

    def wait_state(self, name: str, state: str, timeout: float = 5.0) -> None:
        """Wait until the server shows resource ``name`` in ``state``."""
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = self.state_of(name)
            if seen == state:
                return
            time.sleep(0.02)
        raise AssertionError(f"{name} is {seen!r}, not {state!r}, after {timeout}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def start_server(
    binary: Path,
    workdir: Path,
    resources: list[dict[str, Any]] | None = None,
    extra_args: tuple[str, ...] = (),
    listen: str = "127.0.0.1:0",
) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    inventory = workdir / "inventory.yaml"
    inventory.write_text(inventory_yaml(INVENTORY if resources is None else resources))
    token_file = workdir / "admin-token"
    # With the trailing newline editors add: the server must trim it.
    token_file.write_text(ADMIN_TOKEN + "\n")
    log_path = workdir / "server.log"
    cmd = [
        str(binary), "serve",
        "--listen", listen,
        "--inventory", str(inventory),
        "--admin-token-file", str(token_file),
        *extra_args,
    ]
    with open(log_path, "a") as log:  # appended: a restarted server keeps its workdir
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    line = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            break
        if proc.poll() is not None:
            break
    prefix = "leasehold listening on 127.0.0.1:"
    if not line.startswith(prefix):
        proc.kill()
        proc.wait()
        pytest.fail(
            f"`{' '.join(cmd)}` did not print '{prefix}PORT' (got {line!r}, exit "
            f"{proc.returncode}); its log:\n{log_path.read_text(errors='replace')[-3000:]}",
            pytrace=False,
        )
    return Server(proc=proc, port=int(line.strip()[len(prefix):]), workdir=workdir, log_path=log_path)


@pytest.fixture
def server_factory(
    leasehold_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Server]]:
    """Start servers (custom inventory or flags); all stopped at teardown.

    ``workdir=`` and ``listen=`` (keywords) start one where an earlier one ran
    (the same inventory, files and port), as a restart does."""
    started: list[Server] = []

    def make(
        resources: list[dict[str, Any]] | None = None,
        *extra_args: str,
        workdir: Path | None = None,
        listen: str = "127.0.0.1:0",
    ) -> Server:
        server = start_server(
            leasehold_bin, workdir or tmp_path_factory.mktemp("leasehold"), resources,
            extra_args, listen=listen,
        )
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
        # Captured: pytest shows it only for a test that failed.
        print(f"--- leasehold server log ({server.log_path}), last 4000 characters ---")
        print(server.log()[-4000:])


@pytest.fixture
def server(server_factory: Callable[..., Server]) -> Server:
    """A fresh server with the default test inventory."""
    return server_factory()


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeServer]]:
    """Start an in-process fake server: ``fake_server(script0, script1, ...)``,
    connection i running script i. At teardown it stops, and a script that
    failed fails the test."""
    started: list[FakeServer] = []

    def make(*scripts: Script) -> FakeServer:
        server = FakeServer(*scripts)
        started.append(server)
        return server

    yield make
    for server in started:
        server.close()
    for server in started:
        if server.errors:
            raise AssertionError(f"a fake server script failed: {server.errors!r}; it saw {server.log}")
