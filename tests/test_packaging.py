"""Packaging and deployment: systemd socket activation, the portable binary, the Debian package.

The portable binary and the .deb are what `scripts/package` builds (`scripts/test` runs it first):
`.build/release/leasehold` and `.build/package/leasehold_*.deb`. Socket activation runs the debug
build (LEASEHOLD_BIN) as systemd would: the listening socket as descriptor 3, LISTEN_FDS=1 and
LISTEN_PID naming the server's own process.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("LEASEHOLD_BIN", REPO / ".build" / "debug" / "leasehold"))
PORTABLE = REPO / ".build" / "release" / "leasehold"
PACKAGE_DIR = REPO / ".build" / "package"
INVENTORY = REPO / "deploy" / "lab-inventory.yaml"
WAIT = 60.0  # a hang guard: it runs out only when a test fails anyway


def require(path: Path, how: str) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: {how}", pytrace=False)
    return path


def http_get(sock: socket.socket, path: str) -> str:
    sock.settimeout(WAIT)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer.decode("utf-8", "replace")


def test_socket_activation_serves_the_passed_socket_and_keeps_connections_made_before_it_started(tmp_path: Path) -> None:
    require(BIN, "run `swift build` first (or set LEASEHOLD_BIN)")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    # A client that connects while no server runs (as during a restart): the kernel queues it.
    early = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    # As systemd does: the socket as descriptor 3, LISTEN_PID the server's own (the shell execs it).
    script = 'export LISTEN_FDS=1 LISTEN_PID=$$; exec "$0" "$@"'
    server = subprocess.Popen(
        ["sh", "-c", script, str(BIN), "serve", "--inventory", str(INVENTORY)],
        preexec_fn=lambda: os.dup2(listener.fileno(), 3), pass_fds=(3,),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    listener.close()
    try:
        assert server.stdout is not None
        first = server.stdout.readline().strip()
        if not first:
            server.wait(timeout=WAIT)
            assert server.stderr is not None
            pytest.fail(f"the server exited with {server.returncode}: {server.stderr.read()}")
        assert first == f"leasehold listening on 127.0.0.1:{port}"
        answer = http_get(early, "/healthz")
        assert answer.startswith("HTTP/1.1 200"), answer
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as late:
            assert '"resources"' in http_get(late, "/v1/status")
    finally:
        early.close()
        server.terminate()
        rest, stderr = server.communicate(timeout=WAIT)
    assert server.returncode == 0, stderr
    # The default 0.0.0.0:7400 was not bound: the passed socket was the only listener.
    assert "listening on" not in rest, rest


def test_a_descriptor_that_is_not_a_listening_socket_is_refused_with_a_reason(tmp_path: Path) -> None:
    require(BIN, "run `swift build` first (or set LEASEHOLD_BIN)")
    script = 'exec 3</dev/null; export LISTEN_FDS=1 LISTEN_PID=$$; exec "$0" "$@"'
    result = subprocess.run(["sh", "-c", script, str(BIN), "serve", "--inventory", str(INVENTORY)],
                            capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 64, result
    assert "descriptor 3" in result.stderr and "not a socket" in result.stderr, result.stderr


def toolchain_library_dir() -> Path:
    swift = shutil.which("swift")
    assert swift, "swift is not on the PATH"
    return Path(os.path.realpath(swift)).parent.parent / "lib"


def run_without_toolchain(binary: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Runs `binary` in a mount namespace where the Swift toolchain's libraries are hidden under an
    empty tmpfs, as on a CI machine that has no Swift."""
    hidden = toolchain_library_dir()
    script = 'mount -t tmpfs none "$1" && shift && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(hidden), str(binary), *arguments],
                          capture_output=True, text=True, timeout=WAIT)


@pytest.fixture(scope="module")
def can_hide_the_toolchain() -> None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.fail("hiding the toolchain needs root and unshare(1) (util-linux)", pytrace=False)


def test_the_portable_binary_runs_without_the_swift_toolchain(can_hide_the_toolchain: None) -> None:
    portable = require(PORTABLE, "run scripts/package first")
    # The check can fail: the debug build, linked against the toolchain's libraries, does not start.
    control = run_without_toolchain(require(BIN, "run `swift build` first"), "--version")
    assert control.returncode != 0 and "libswift" in control.stderr, control
    result = run_without_toolchain(portable, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == subprocess.run([str(portable), "--version"], capture_output=True, text=True).stdout.strip()
    # And it serves: --help of serve runs the whole argument parser and the server's module.
    assert run_without_toolchain(portable, "serve", "--help").returncode == 0


def test_the_debian_package_installs_a_binary_that_runs_its_units_and_a_man_page(tmp_path: Path, can_hide_the_toolchain: None) -> None:
    packages = sorted(require(PACKAGE_DIR, "run scripts/package first").glob("leasehold_*.deb"))
    assert len(packages) == 1, packages
    control = subprocess.run(["dpkg-deb", "--field", str(packages[0]), "Package", "Version", "Depends"],
                             capture_output=True, text=True, check=True).stdout
    assert "Package: leasehold" in control
    root = tmp_path / "root"
    subprocess.run(["dpkg", "-x", str(packages[0]), str(root)], check=True)
    # Every shared library the binary loads comes from a package it depends on.
    libraries = [line.split("=>")[1].split()[0] for line in
                 subprocess.run(["ldd", str(root / "usr/bin/leasehold")], capture_output=True, text=True, check=True).stdout.splitlines()
                 if "=> /" in line]
    assert libraries and not any("swift" in library for library in libraries), libraries
    depends = control.split("Depends:")[1]
    for library in libraries:
        owner = subprocess.run(["dpkg", "-S", os.path.realpath(library)], capture_output=True, text=True)
        if owner.returncode != 0:
            owner = subprocess.run(["dpkg", "-S", library], capture_output=True, text=True, check=True)
        package = owner.stdout.split(":")[0]
        assert package in depends, f"{library} comes from {package}, not in Depends:{depends}"
    version = run_without_toolchain(root / "usr/bin/leasehold", "--version")
    assert version.returncode == 0, version.stderr
    assert f"Version: {version.stdout.strip()}" in control
    for path in ("lib/systemd/system/leasehold.service", "lib/systemd/system/leasehold.socket",
                 "etc/leasehold/inventory.yaml", "usr/share/man/man1/leasehold.1.gz"):
        assert (root / path).is_file(), path
    man = subprocess.run(["zcat", str(root / "usr/share/man/man1/leasehold.1.gz")], capture_output=True, text=True, check=True).stdout
    assert man.startswith(".TH LEASEHOLD 1") and "--trusted-proxy" in man and "--wait" in man
    unit = (root / "lib/systemd/system/leasehold.service").read_text()
    assert "ExecStart=/usr/bin/leasehold serve" in unit

    # Installing makes the admin token the service needs (once), and purging removes it.
    control_dir = tmp_path / "control"
    subprocess.run(["dpkg-deb", "--control", str(packages[0]), str(control_dir)], check=True)
    environment = dict(os.environ, DPKG_ROOT=str(root))
    subprocess.run(["sh", str(control_dir / "postinst"), "configure"], env=environment, check=True, capture_output=True)
    token = root / "etc/leasehold/admin-token"
    assert token.stat().st_mode & 0o777 == 0o600
    first = token.read_text()
    assert len(first) >= 32 and first.isalnum()
    subprocess.run(["sh", str(control_dir / "postinst"), "configure"], env=environment, check=True, capture_output=True)
    assert token.read_text() == first, "a second configure keeps the token"
    # The installed server takes it: GET /v1/admin with it is 200.
    server = subprocess.Popen([str(root / "usr/bin/leasehold"), "serve", "--listen", "127.0.0.1:0",
                               "--inventory", str(root / "etc/leasehold/inventory.yaml"), "--admin-token-file", str(token)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        address = server.stdout.readline().strip().removeprefix("leasehold listening on ")
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=WAIT) as client:
            client.settimeout(WAIT)
            client.sendall(f"GET /v1/admin HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {first}\r\n"
                           "Connection: close\r\n\r\n".encode())
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        server.terminate()
        server.communicate(timeout=WAIT)
    subprocess.run(["sh", str(control_dir / "postrm"), "purge"], env=environment, check=True)
    assert not token.exists()
