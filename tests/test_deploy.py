"""The deployment files in deploy/ against the real binary and the tools that read them.

- Dockerfile: the build stage runs the packaging command README.md gives; the runtime CMD uses
  only options `leasehold serve --help` lists; inventory and token are mounted, not baked.
- systemd: `systemd-analyze verify` on the units (skipped without systemd-analyze); the service
  works with and without the socket (no --listen); socket activation with the real binary.
- nginx: `nginx -t` on the server block (skipped without nginx); its WebSocket and proxy headers.
- compose.yaml and kubernetes/: one replica, stop-first / Recreate, inventory and token mounted
  from a config / ConfigMap and a secret, state on a volume, the same command as the image.

The binary is LEASEHOLD_BIN (default <repo>/.build/debug/leasehold).
    .venv/bin/python -m pytest -q tests/test_deploy.py
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path, PurePosixPath

import pytest
from websockets.sync.client import connect

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
BIN = Path(os.environ.get("LEASEHOLD_BIN", REPO / ".build" / "debug" / "leasehold"))
START_TIMEOUT = 60.0  # a hang guard: it only runs out when a test fails anyway


# ---------------------------------------------------------------------------------------------
# The binary


def require_binary() -> Path:
    if not BIN.is_file():
        pytest.fail(
            f"leasehold not found at {BIN}: run `swift build` in {REPO} first "
            "(or set LEASEHOLD_BIN to the binary)",
            pytrace=False,
        )
    return BIN


@pytest.fixture(scope="module")
def serve_help() -> str:
    result = subprocess.run([str(require_binary()), "serve", "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def serve_options(serve_help: str) -> set[str]:
    """The options `leasehold serve --help` defines (its option lines, not the prose)."""
    options = set(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z0-9-]*)", serve_help, re.M))
    assert "--inventory" in options and "--listen" in options, serve_help
    return options


def options_of(command: list[str]) -> list[str]:
    """`--name` of every option after `serve` in an argument vector."""
    assert "serve" in command, command
    return [arg.split("=", 1)[0] for arg in command[command.index("serve") + 1 :] if arg.startswith("--")]


def option_value(command: list[str], name: str) -> str:
    values = [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == name]
    values += [arg.split("=", 1)[1] for arg in command if arg.startswith(name + "=")]
    assert len(values) == 1, f"{name} given {len(values)} times in {command}"
    return values[0]


def assert_known_options(command: list[str], serve_options: set[str], where: str) -> None:
    unknown = sorted(set(options_of(command)) - serve_options)
    assert not unknown, f"{where} uses options `leasehold serve --help` does not list: {unknown}"


class Server:
    def __init__(self, process: subprocess.Popen[str], lines: list[str]) -> None:
        self.process = process
        self.lines = lines

    def ports(self) -> list[int]:
        return [int(m.group(1)) for line in self.lines if (m := re.search(r"listening on .*:(\d+)$", line))]

    def stop(self) -> tuple[int, str]:
        """SIGTERM; the exit status and stderr (stdout belongs to the reader thread)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("leasehold did not exit within 10 s of SIGTERM")
        err = self.process.stderr.read() if self.process.stderr else ""
        return self.process.returncode, err


def wait_for_listening(process: subprocess.Popen[str], count: int, what: str) -> list[str]:
    """The first COUNT `listening on` lines of a starting server (a thread reads them: readline
    on a pipe may buffer lines a selector never sees again); fails with its output otherwise."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT
    while len(seen) < count:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None or "listening on" not in line:
            break
        seen.append(line)
    if len(seen) < count:
        process.kill()
        process.wait(timeout=5)
        err = process.stderr.read() if process.stderr else ""
        pytest.fail(f"{what} did not start: stdout {seen!r}, stderr {err!r}", pytrace=False)
    return seen


def start_server(args: list[str], expect_lines: int = 1, **popen) -> Server:
    """Starts `leasehold serve ARGS` and waits for its `listening on` lines."""
    process = subprocess.Popen(
        [str(require_binary()), "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )
    return Server(process, wait_for_listening(process, expect_lines, f"leasehold serve {args}"))


def get(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return response.status


# ---------------------------------------------------------------------------------------------
# A small YAML reader for the files in deploy/ (block mappings and sequences, flow sequences,
# quoted and plain scalars, literal blocks, comments): the test environment has no PyYAML.
# Where PyYAML is installed, every file is also read with it and the two must agree.


def _strip_comment(text: str) -> str:
    quote = None
    for i, char in enumerate(text):
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'" and (i == 0 or text[i - 1] in " [{,:"):
            quote = char
        elif char == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
    return text.rstrip()


def _split_items(text: str) -> list[str]:
    items, depth, quote, start = [], 0, None, 0
    for i, char in enumerate(text):
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


_KEY = re.compile(r'^("[^"]*"|[^\s"\'\[\]{}#:-][^:#]*?|-[^\s:#][^:#]*?)\s*:(?:\s+(.*))?$')


def _scalar(text: str):
    text = text.strip()
    if text.startswith('"'):
        return json.loads(text)
    if text.startswith("'"):
        return text[1:-1].replace("''", "'")
    if text.startswith("["):
        return [_scalar(item) for item in _split_items(text[1:-1])]
    if text.startswith("{"):
        result = {}
        for item in _split_items(text[1:-1]):
            key, _, value = item.partition(":")
            result[_scalar(key)] = _scalar(value)
        return result
    if text in ("true", "True"):
        return True
    if text in ("false", "False"):
        return False
    if text in ("null", "~", ""):
        return None
    if re.fullmatch(r"0[0-7]+", text):
        return int(text, 8)
    if re.fullmatch(r"-?(0|[1-9][0-9]*)", text):
        return int(text)
    return text


class _Yaml:
    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.i = 0

    def peek(self) -> tuple[int, str] | None:
        while self.i < len(self.lines):
            stripped = self.lines[self.i].strip()
            if stripped and not stripped.startswith("#") and stripped != "---":
                line = self.lines[self.i]
                return len(line) - len(line.lstrip(" ")), _strip_comment(stripped)
            self.i += 1
        return None

    def node(self, indent: int):
        _, content = self.peek()
        return self.sequence(indent) if content == "-" or content.startswith("- ") else self.mapping(indent)

    def mapping(self, indent: int) -> dict:
        result = {}
        while (line := self.peek()) is not None and line[0] == indent and not line[1].startswith("- "):
            match = _KEY.match(line[1])
            assert match, f"cannot read line {self.i + 1}: {self.lines[self.i]!r}"
            self.i += 1
            key, rest = _scalar(match.group(1)), (match.group(2) or "").strip()
            if rest in ("|", "|-"):
                result[key] = self.literal(indent, keep_newline=rest == "|")
            elif rest:
                result[key] = _scalar(rest)
            elif (following := self.peek()) is not None and (
                following[0] > indent or (following[0] == indent and following[1].startswith("- "))
            ):
                result[key] = self.node(following[0])
            else:
                result[key] = None
        return result

    def sequence(self, indent: int) -> list:
        items = []
        while (line := self.peek()) is not None and line[0] == indent and (line[1] == "-" or line[1].startswith("- ")):
            raw = self.lines[self.i]
            content = line[1][1:].lstrip()
            column = indent + 1 + (len(raw) - indent - 1 - len(raw[indent + 1 :].lstrip(" ")))
            if not content:
                self.i += 1
                items.append(self.node(self.peek()[0]))
            elif _KEY.match(content) and not content.startswith(("[", "{", '"', "'")):
                self.lines[self.i] = " " * column + raw[column:]
                items.append(self.mapping(column))
            else:
                self.i += 1
                items.append(_scalar(content))
        return items

    def literal(self, indent: int, keep_newline: bool) -> str:
        lines, block = [], None
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.strip():
                current = len(line) - len(line.lstrip(" "))
                if current <= indent:
                    break
                block = current if block is None else block
                lines.append(line[block:])
            else:
                lines.append("")
            self.i += 1
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines) + ("\n" if keep_newline and lines else "")


def load_yaml(path: Path):
    text = path.read_text()
    reader = _Yaml(text)
    first = reader.peek()
    document = reader.node(first[0]) if first else None
    assert reader.peek() is None, f"{path}: cannot read from line {reader.i + 1}"
    try:
        import yaml  # type: ignore[import-not-found]
    except ImportError:
        return document
    assert document == yaml.safe_load(text), f"{path}: the test's YAML reader disagrees with PyYAML"
    return document


# ---------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_stages() -> list[dict]:
    """[{'from': image, 'name': alias, 'instructions': [(KEYWORD, arguments)]}] in order."""
    logical, current = [], ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue  # comments inside a continued instruction
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
        else:
            logical.append(current + line)
            current = ""
    stages: list[dict] = []
    for line in logical:
        keyword, _, arguments = line.strip().partition(" ")
        keyword, arguments = keyword.upper(), arguments.strip()
        if keyword == "FROM":
            parts = arguments.split()
            name = parts[parts.index("AS") + 1] if "AS" in parts else parts[parts.index("as") + 1] if "as" in parts else None
            stages.append({"from": parts[0], "name": name, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, arguments))
    return stages


def shell_commands(run: str) -> list[str]:
    return [part.strip() for part in re.split(r"&&|;|\|\|", run) if part.strip()]


def readme_packaging_commands() -> list[str]:
    commands, fenced = [], False
    for line in (REPO / "README.md").read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced and "scripts/package" in line:
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command.startswith("scripts/package"):
                commands.append(command)
    return commands


def runtime_cmd() -> list[str]:
    [cmd] = [args for keyword, args in dockerfile_stages()[-1]["instructions"] if keyword == "CMD"]
    return json.loads(cmd)


def test_dockerfile_build_stage_runs_the_readme_packaging_command():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "deploy/Dockerfile must be multi-stage (build, runtime)"
    build = next((stage for stage in stages if stage["name"] == "build"), stages[0])
    runs = [command for keyword, args in build["instructions"] if keyword == "RUN" for command in shell_commands(args)]
    installs = " ".join(runs)
    assert "libssl-dev" in installs and "zlib1g-dev" in installs, runs
    readme = readme_packaging_commands()
    if not readme:
        pytest.fail(
            "README.md gives no packaging command: expected a fenced line starting with "
            "`scripts/package` in its packaging section, which the Dockerfile's build stage must run",
            pytrace=False,
        )
    assert any(command in runs for command in readme), (
        f"the Dockerfile's build stage runs {runs}, but README.md packages with {readme}"
    )


def test_dockerfile_runtime_stage(serve_options):
    runtime = dockerfile_stages()[-1]
    assert runtime["from"].startswith("debian:") and "slim" in runtime["from"], runtime["from"]
    instructions = runtime["instructions"]
    args_of = lambda keyword: [args for kw, args in instructions if kw == keyword]  # noqa: E731

    installed = set()
    for run in args_of("RUN"):
        for command in shell_commands(run):
            words = command.split()
            if "apt-get" in words and "install" in words:
                installed |= {word for word in words[words.index("install") + 1 :] if not word.startswith("-")}
    assert installed <= {"libstdc++6", "libssl3", "zlib1g", "ca-certificates", "curl"}, installed

    [user] = args_of("USER")
    assert user.split(":")[0] not in ("root", "0"), "the runtime must not run as root"
    assert any("/usr/bin/leasehold" in args and "--from=" in args for args in args_of("COPY")), args_of("COPY")
    # Only the binary comes into the runtime image: no inventory, no token.
    for args in args_of("COPY") + args_of("ADD"):
        assert not re.search(r"inventory|\.ya?ml|token|secret", args), f"baked into the image: COPY {args}"
    [healthcheck] = args_of("HEALTHCHECK")
    assert "http://127.0.0.1:7400/healthz" in healthcheck
    assert any("7400" in args.split() for args in args_of("EXPOSE"))
    assert any("/var/lib/leasehold" in args for args in args_of("VOLUME"))

    cmd = runtime_cmd()
    assert cmd[:2] == ["/usr/bin/leasehold", "serve"], cmd
    assert_known_options(cmd, serve_options, "the Dockerfile's CMD")
    assert option_value(cmd, "--listen") == "0.0.0.0:7400"
    assert option_value(cmd, "--inventory") == "/etc/leasehold/inventory.yaml"
    assert option_value(cmd, "--admin-token-file") == "/run/secrets/leasehold-admin-token"
    assert option_value(cmd, "--state-dir") == "/var/lib/leasehold", "the state outside the volume"
    assert option_value(cmd, "--audit-file").startswith("/var/lib/leasehold/"), "the journal outside the volume"


def test_dockerignore_keeps_local_builds_out_but_not_what_the_build_needs():
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    ignored = lambda path: any(  # noqa: E731
        fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path.split("/")[0], pattern) for pattern in patterns
    )
    for path in (".build", ".build-asan", ".venv", ".git"):
        assert ignored(path), f".dockerignore does not exclude {path}"
    # What scripts/package reads.
    for path in ("Package.swift", "Sources/leasehold/Serve.swift", "scripts/package", "scripts/setup",
                 "deploy/leasehold.service", "deploy/leasehold.socket", "deploy/lab-inventory.yaml",
                 "deploy/README.md"):
        assert not ignored(path), f".dockerignore excludes {path}, which the image build needs"


# ---------------------------------------------------------------------------------------------
# systemd


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    current = ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith(("#", ";", "["))):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        key, _, value = (current + line).partition("=")
        settings.setdefault(key.strip(), []).append(" ".join(value.split()))
        current = ""
    return settings


def test_service_works_with_and_without_the_socket(serve_options):
    service = unit_settings(DEPLOY / "leasehold.service")
    [exec_start] = service["ExecStart"]
    command = exec_start.split()
    assert command[:2] == ["/usr/bin/leasehold", "serve"], command
    assert "--listen" not in options_of(command), (
        "ExecStart must not --listen: with the socket unit it gets the socket, without it the "
        "server binds its default 0.0.0.0:7400"
    )
    assert_known_options(command, serve_options, "leasehold.service's ExecStart")
    credential = service["LoadCredential"][0].split(":", 1)[0]
    assert option_value(command, "--admin-token-file") in (
        f"${{CREDENTIALS_DIRECTORY}}/{credential}", f"%d/{credential}"
    )
    assert service["StateDirectory"] == ["leasehold"]
    assert option_value(command, "--state-dir") == "/var/lib/leasehold"

    socket_unit = unit_settings(DEPLOY / "leasehold.socket")
    assert socket_unit["ListenStream"] == ["7400"]
    assert socket_unit["BindIPv6Only"] == ["both"]
    assert "Service" not in socket_unit, "the socket activates leasehold.service by its name"


def test_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify insists that ExecStart's program exists: point it at one that does.
    program = str(BIN) if BIN.is_file() else shutil.which("true")
    for name in ("leasehold.service", "leasehold.socket"):
        text = (DEPLOY / name).read_text().replace("/usr/bin/leasehold", program)
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / "leasehold.socket"), str(tmp_path / "leasehold.service")],
        capture_output=True, text=True, timeout=60,
    )
    output = (result.stdout + result.stderr).strip()
    ours = [line for line in output.splitlines() if "leasehold" in line]
    assert not ours, "systemd-analyze verify complains about the units:\n" + output
    if result.returncode != 0:
        pytest.skip(f"systemd-analyze verify cannot run here (exit {result.returncode}): {output}")


def _systemd_style_popen(sock: socket.socket) -> dict:
    """Popen arguments that pass SOCK as descriptor 3 with LISTEN_FDS=1 and LISTEN_PID set to the
    server's own pid, as systemd does (sd_listen_fds(3))."""
    fd = sock.fileno()

    def as_fd_3() -> None:
        if fd == 3:
            os.set_inheritable(3, True)
        else:
            os.dup2(fd, 3)  # the copy is inheritable

    return {"preexec_fn": as_fd_3, "close_fds": False}


def test_socket_from_systemd_and_listen_are_both_served():
    """With the socket unit and a --listen added in a drop-in, both listeners serve (the socket
    alone, and that the default address is then not bound: tests/test_packaging.py)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        port = sock.getsockname()[1]
        # LISTEN_PID must be the server's pid: a shell that sets it to its own and execs.
        script = 'export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" serve "$@"'
        args = ["--inventory", str(DEPLOY / "lab-inventory.yaml"), "--listen", "127.0.0.1:0"]
        process = subprocess.Popen(
            ["/bin/sh", "-c", script, str(require_binary()), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **_systemd_style_popen(sock),
        )
        server = Server(process, wait_for_listening(process, 2, "socket-activated leasehold"))
        try:
            others = [p for p in server.ports() if p != port]
            assert port in server.ports() and len(others) == 1, server.lines
            assert get(f"http://127.0.0.1:{port}/healthz") == 200
            assert get(f"http://127.0.0.1:{others[0]}/healthz") == 200
        finally:
            status, err = server.stop()
    assert status == 0, err


# ---------------------------------------------------------------------------------------------
# nginx


def nginx_locations(text: str) -> dict[str, str]:
    text = "\n".join(_strip_comment(line) for line in text.splitlines())
    return {m.group(1).strip(): m.group(2) for m in re.finditer(r"location\s+([^{]+)\{([^{}]*)\}", text)}


def seconds(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([smhd]?)", value).groups()
    return int(number) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def test_nginx_config_proxies_leases_as_websockets():
    text = (DEPLOY / "nginx" / "leasehold.conf").read_text()
    assert "--trusted-proxy 127.0.0.1/32" in text and "--public-url https://lab.example" in text
    assert re.search(r"map \$http_upgrade \$(\w+)", text), "no Upgrade/Connection map"
    connection = re.search(r"map \$http_upgrade \$(\w+)", text).group(1)
    locations = nginx_locations(text)
    for path in ("= /v1/lease", "= /v1/watch", "/"):
        assert path in locations, f"no `location {path}`: {sorted(locations)}"
        body = locations[path]
        assert "proxy_pass http://" in body
        for header in ("Host $host", "X-Forwarded-For $proxy_add_x_forwarded_for",
                       "X-Forwarded-Proto $scheme", "X-Forwarded-Host $host"):
            assert f"proxy_set_header {header};" in body, f"location {path} lacks proxy_set_header {header}"
    for path in ("= /v1/lease", "= /v1/watch"):
        body = locations[path]
        assert "proxy_http_version 1.1;" in body
        assert "proxy_set_header Upgrade $http_upgrade;" in body
        assert f"proxy_set_header Connection ${connection};" in body
        for timeout in ("proxy_read_timeout", "proxy_send_timeout"):
            value = re.search(rf"{timeout}\s+(\w+);", body)
            assert value and seconds(value.group(1)) >= 6 * 3600, f"{path}: {timeout} too short for long leases"
        assert "limit_req" not in body, f"{path} must not be rate-limited"
    assert "limit_req zone=" in locations["/"], "the HTTP API is not rate-limited"
    assert re.search(r"ssl_certificate\s+\S*CHANGE-ME", text) and re.search(r"ssl_certificate_key\s+\S*CHANGE-ME", text)


def nginx_binary() -> str:
    nginx = os.environ.get("NGINX_BIN") or shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
    )
    if nginx is None:
        pytest.skip("nginx is not installed")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed for a test certificate")
    return nginx


def nginx_setup(tmp_path: Path, conf: str, main: str = "") -> Path:
    """leasehold.conf with a self-signed certificate for the CHANGE-ME paths, included by a
    minimal nginx.conf whose files all live in TMP_PATH; returns that nginx.conf."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=lab.example",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True, timeout=60,
    )
    conf = re.sub(r"(ssl_certificate\s+)\S*CHANGE-ME\S*;", rf"\g<1>{tmp_path}/cert.pem;", conf)
    conf = re.sub(r"(ssl_certificate_key\s+)\S*CHANGE-ME\S*;", rf"\g<1>{tmp_path}/key.pem;", conf)
    (tmp_path / "leasehold.conf").write_text(conf)
    temp = " ".join(f"{kind}_temp_path {tmp_path}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"{main}pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  {temp}\n  include {tmp_path}/leasehold.conf;\n}}\n"
    )
    return tmp_path / "nginx.conf"


def nginx_command(nginx: str, conf: Path) -> list[str]:
    return [nginx, "-p", f"{conf.parent}/", "-e", str(conf.parent / "error.log"), "-c", str(conf)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_nginx_t(tmp_path):
    nginx = nginx_binary()
    conf = nginx_setup(tmp_path, (DEPLOY / "nginx" / "leasehold.conf").read_text())
    result = subprocess.run([*nginx_command(nginx, conf), "-t"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_through_nginx_leases_and_the_live_page_work(tmp_path):
    """The config as given, on loopback ports, in front of the real server started with the flags
    its comment names: a wss:// lease is granted, the page's /v1/watch (Origin: the public URL)
    gets its snapshot, and the HTTP API is rate-limited while leases are not."""
    nginx = nginx_binary()
    tls_port, http_port = free_port(), free_port()
    public = f"https://lab.example:{tls_port}"
    server = start_server([
        "--listen", "127.0.0.1:0", "--inventory", str(DEPLOY / "lab-inventory.yaml"),
        "--trusted-proxy", "127.0.0.1/32", "--public-url", public,
    ])
    [upstream] = server.ports()
    conf = (DEPLOY / "nginx" / "leasehold.conf").read_text()
    conf = re.sub(r"\n\s*listen \[::\]:\d+( ssl)?;", "", conf)
    conf = conf.replace("listen 443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;")
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    conf = conf.replace("server 127.0.0.1:7400;", f"server 127.0.0.1:{upstream};")
    main = "daemon off;\nmaster_process off;\n"
    proxy = subprocess.Popen(nginx_command(nginx, nginx_setup(tmp_path, conf, main)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    def through_nginx() -> socket.socket:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                return socket.create_connection(("127.0.0.1", tls_port), timeout=5)
            except OSError:
                if proxy.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"nginx did not start: {proxy.communicate()[1]}")
                time.sleep(0.05)

    def https_get(path: str) -> int:
        with context.wrap_socket(through_nginx(), server_hostname="lab.example") as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: lab.example:{tls_port}\r\nConnection: close\r\n\r\n".encode())
            return int(tls.recv(64).split()[1])

    try:
        url = f"wss://lab.example:{tls_port}"
        with connect(f"{url}/v1/lease", ssl=context, sock=through_nginx(), open_timeout=10) as lease:
            lease.send(json.dumps({"op": "acquire", "holder": "ci/deploy-test", "want": [{"name": "switch-03"}]}))
            granted = json.loads(lease.recv(timeout=10))
            assert granted["event"] == "granted", granted
            with connect(f"{url}/v1/watch", ssl=context, sock=through_nginx(), origin=public, open_timeout=10) as watch:
                snapshot = json.loads(watch.recv(timeout=10))
                assert snapshot["event"] == "snapshot", snapshot
                held = [r for r in snapshot["resources"] if r["name"] == "switch-03"]
                assert held and "ci/deploy-test" in json.dumps(held), held
            assert https_get("/") == 200
            # 80 requests pipelined on one connection reach nginx together, however slow this
            # machine is: past the burst allowance they must be refused.
            with context.wrap_socket(through_nginx(), server_hostname="lab.example") as tls:
                request = f"GET /v1/status HTTP/1.1\r\nHost: lab.example:{tls_port}\r\n\r\n"
                closing = f"GET /v1/status HTTP/1.1\r\nHost: lab.example:{tls_port}\r\nConnection: close\r\n\r\n"
                tls.sendall((request * 79 + closing).encode())
                answers = b""
                while chunk := tls.recv(1 << 16):
                    answers += chunk
            statuses = [int(line.split()[1]) for line in answers.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
            assert 200 in statuses and 429 in statuses, f"the HTTP API is not rate-limited: {statuses}"
            # Leases and watches are not: a new one right after is still let through.
            with connect(f"{url}/v1/watch", ssl=context, sock=through_nginx(), origin=public, open_timeout=10) as watch:
                assert json.loads(watch.recv(timeout=10))["event"] == "snapshot"
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        status, err = server.stop()
    assert status == 0, err


# ---------------------------------------------------------------------------------------------
# Docker Compose / Swarm


def test_compose_runs_one_server_with_mounted_inventory_and_token(serve_options):
    compose = load_yaml(DEPLOY / "compose.yaml")
    services = compose["services"]
    assert list(services) == ["leasehold"], "one service: the lease server"
    service = services["leasehold"]
    deploy = service["deploy"]
    assert deploy["replicas"] == 1
    assert deploy["update_config"]["order"] == "stop-first"
    assert deploy.get("rollback_config", {}).get("order", "stop-first") == "stop-first"
    assert "stop_grace_period" in service
    assert "/healthz" in " ".join(service["healthcheck"]["test"])
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"

    command = service["command"]
    assert_known_options(command, serve_options, "compose.yaml's command")
    assert command[: len(runtime_cmd())] == runtime_cmd(), "compose.yaml's command is the image's CMD and more"

    # The inventory is a config, the token a secret: mounted, not in the image.
    [config] = service["configs"]
    assert config["target"] == option_value(command, "--inventory")
    assert (DEPLOY / compose["configs"][config["source"]]["file"]).is_file()
    [secret] = service["secrets"]
    target = secret.get("target", secret["source"])
    assert PurePosixPath("/run/secrets", target) == PurePosixPath(option_value(command, "--admin-token-file"))
    definition = compose["secrets"][secret["source"]]
    assert "file" in definition or definition.get("external") is True

    # The state on a named volume.
    mounts = dict(volume.split(":", 1) for volume in service["volumes"])
    state = next(source for source, target in mounts.items() if target.split(":")[0] == "/var/lib/leasehold")
    assert state in compose["volumes"], "the state volume is a named volume"
    assert option_value(command, "--state-dir") == "/var/lib/leasehold"
    assert option_value(command, "--audit-file").startswith("/var/lib/leasehold/")


# ---------------------------------------------------------------------------------------------
# Kubernetes


def manifests() -> dict[str, dict]:
    found = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        document = load_yaml(path)
        found[document["kind"]] = document
    assert set(found) >= {"Deployment", "Service", "ConfigMap", "Secret", "PersistentVolumeClaim"}, sorted(found)
    return found


def test_kubernetes_deployment_is_one_recreated_non_root_pod(serve_options):
    k8s = manifests()
    deployment = k8s["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 10
    [container] = pod["containers"]
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    assert security.get("runAsNonRoot") is True and security.get("runAsUser", 1) != 0
    assert security.get("allowPrivilegeEscalation") is False

    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] == "/healthz", probe
        assert http["port"] in ports or http["port"] in ports.values(), probe

    command = container.get("command", []) + container.get("args", [])
    assert_known_options(command, serve_options, "the Deployment's command")
    assert command[: len(runtime_cmd())] == runtime_cmd(), "the Deployment runs the image's CMD and more"

    # Inventory from the ConfigMap, token from the Secret, state on the PVC: all mounted.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}

    def source_of(path: str) -> tuple[dict, str]:
        """The volume a file path lies on, and the path inside it."""
        for mount_path, mount in mounts.items():
            if path == mount_path and "subPath" in mount:
                return volumes[mount["name"]], mount["subPath"]
            if "subPath" not in mount and path.rstrip("/") == mount_path.rstrip("/"):
                return volumes[mount["name"]], ""
            if "subPath" not in mount and path.startswith(mount_path.rstrip("/") + "/"):
                return volumes[mount["name"]], path[len(mount_path.rstrip("/")) + 1 :]
        raise AssertionError(f"{path} is on no volume: it would be baked into the image")

    volume, key = source_of(option_value(command, "--inventory"))
    configmap = k8s["ConfigMap"]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert key in configmap["data"]

    volume, key = source_of(option_value(command, "--admin-token-file"))
    secret = k8s["Secret"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert key in {**secret.get("data", {}), **secret.get("stringData", {})}

    for name in ("--state-dir", "--audit-file"):
        volume, _ = source_of(option_value(command, name))
        assert volume["persistentVolumeClaim"]["claimName"] == k8s["PersistentVolumeClaim"]["metadata"]["name"]

    service = k8s["Service"]
    labels = spec["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    [port] = service["spec"]["ports"]
    assert port["targetPort"] in ports or port["targetPort"] in ports.values()


def test_kubernetes_configmap_inventory_is_served(tmp_path):
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(manifests()["ConfigMap"]["data"]["inventory.yaml"])
    server = start_server(["--listen", "127.0.0.1:0", "--inventory", str(inventory)])
    try:
        [port] = server.ports()
        assert get(f"http://127.0.0.1:{port}/healthz") == 200
    finally:
        status, err = server.stop()
    assert status == 0, err


def test_kubernetes_example_secret_is_refused_by_the_server(tmp_path):
    """secret.yaml's token is a placeholder the server refuses, so it never guards a real lab."""
    secret = manifests()["Secret"]
    [token] = secret["stringData"].values()
    path = tmp_path / "admin-token"
    path.write_text(token + "\n")
    result = subprocess.run(
        [str(require_binary()), "serve", "--listen", "127.0.0.1:0", "--inventory", str(DEPLOY / "lab-inventory.yaml"),
         "--admin-token-file", str(path)],
        capture_output=True, text=True, timeout=START_TIMEOUT,
    )
    assert result.returncode != 0 and "admin-token" in result.stderr, (result.returncode, result.stderr)
