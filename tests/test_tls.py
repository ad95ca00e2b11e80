"""TLS end to end: `leasehold serve --listen-tls` with certificates made at test time by `openssl`,
against Python's `ssl`/`websockets`, curl, and the CLI; mutual TLS; SIGHUP swapping the
certificate while a lease stays up; plain HTTP sent to the TLS port.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidMessage
from websockets.sync.client import connect

from test_lease_interop import DEADLINE, INVENTORY, binary

ADMIN_TOKEN = "tls-admin-token-1234"
REPO_ROOT = Path(__file__).resolve().parent.parent


def openssl(*arguments: str, cwd) -> None:
    result = subprocess.run(["openssl", *arguments], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"openssl {' '.join(arguments)}: {result.stderr}"


class PKI:
    """A CA, a server certificate for localhost/127.0.0.1, client certificates (one from the CA,
    one self-signed, one expired), all made here with `openssl req` / `openssl x509` / `openssl ca`."""

    def __init__(self, directory) -> None:
        self.dir = directory
        d = str(directory)
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=leasehold test CA", cwd=d)
        self.server("server", "localhost")
        self.client("alice", "/O=lab/CN=alice")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", "stranger.key", "-out", "stranger.pem", "-days", "2", "-subj", "/CN=stranger", cwd=d)
        self.expired_client()

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def server(self, name: str, common_name: str) -> None:
        d = str(self.dir)
        (self.dir / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={common_name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)

    def client(self, name: str, subject: str) -> None:
        d = str(self.dir)
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", cwd=d)

    def expired_client(self) -> None:
        # `openssl ca` takes explicit dates: valid for a day in 2020.
        d = self.dir
        (d / "index.txt").write_text("")
        (d / "serial").write_text("1000\n")
        (d / "ca.cnf").write_text(
            "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nserial = serial\nnew_certs_dir = .\n"
            "default_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n"
        )
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", "expired.key", "-out", "expired.csr", "-subj", "/CN=expired", cwd=str(d))
        openssl("ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-in", "expired.csr",
                "-out", "expired.pem", "-startdate", "20200101000000Z", "-enddate", "20200102000000Z", cwd=str(d))

    def context(self, client: str | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.path("ca.pem"))
        if client:
            context.load_cert_chain(self.path(f"{client}.pem"), self.path(f"{client}.key"))
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(tmp_path_factory.mktemp("pki"))


class Server:
    def __init__(self, process, lines, plain_port: int, tls_port: int, journal) -> None:
        self.process = process
        self.lines = lines
        self.http = f"http://127.0.0.1:{plain_port}"
        self.tls_port = tls_port
        self.https = f"https://localhost:{tls_port}"
        self.wss = f"wss://localhost:{tls_port}"
        self.journal = journal

    def wait_for_log(self, pattern: str) -> str:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if re.search(pattern, line):
                return line
        pytest.fail(f"no log line matching {pattern!r}")


def start_server(tmp_path, pki: PKI, *extra: str, certificate: tuple[str, str] | None = None) -> Server:
    certificate = certificate or (pki.path("server.pem"), pki.path("server.key"))
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    token = tmp_path / "admin-token"
    token.write_text(ADMIN_TOKEN + "\n")
    journal = tmp_path / "journal.jsonl"
    process = subprocess.Popen(
        [str(binary()), "serve", "--listen", "127.0.0.1:0", "--listen-tls", "127.0.0.1:0",
         "--tls-cert", certificate[0], "--tls-key", certificate[1],
         "--inventory", str(inventory), "--admin-token-file", str(token), "--audit-file", str(journal),
         "--log-level", "info", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    out: queue.Queue[str] = queue.Queue()
    err: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [out.put(line) for line in process.stdout], daemon=True).start()
    threading.Thread(target=lambda: [err.put(line) for line in process.stderr], daemon=True).start()
    try:
        plain = re.fullmatch(r"leasehold listening on 127\.0\.0\.1:(\d+)\n", out.get(timeout=DEADLINE))
        tls = re.fullmatch(r"leasehold listening on 127\.0\.0\.1:(\d+) \(TLS\)\n", out.get(timeout=DEADLINE))
    except queue.Empty:
        process.kill()
        pytest.fail("leasehold printed no listening lines", pytrace=False)
    assert plain and tls
    return Server(process, err, int(plain.group(1)), int(tls.group(1)), journal)


@pytest.fixture
def tls_server(tmp_path, pki):
    server = start_server(tmp_path, pki)
    yield server
    stop(server)


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        assert server.process.wait(timeout=DEADLINE) == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()


def curl(pki: PKI, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", str(DEADLINE), "--cacert", pki.path("ca.pem"), *arguments],
                          capture_output=True, text=True)


def test_curl_reads_health_status_and_admin_over_https(tls_server, pki):
    assert curl(pki, f"{tls_server.https}/healthz").stdout == "ok\n"
    status = json.loads(curl(pki, f"{tls_server.https}/v1/status").stdout)
    assert [r["name"] for r in status["resources"]] == ["switch-01", "array-01"]
    admin = curl(pki, "-X", "POST", "-H", f"Authorization: Bearer {ADMIN_TOKEN}", "-d", "{}",
                 f"{tls_server.https}/v1/resources/array-01/disable")
    assert json.loads(admin.stdout)["ok"] is True
    refused = curl(pki, "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d", "{}",
                   f"{tls_server.https}/v1/resources/array-01/enable")
    assert refused.stdout == "401"
    # The plain listener beside it serves the same server.
    assert json.loads(subprocess.run(["curl", "-sS", f"{tls_server.http}/v1/status"], capture_output=True,
                                     text=True).stdout)["resources"][1]["enabled"] is False


def test_an_untrusting_client_refuses_the_server(tls_server):
    result = subprocess.run(["curl", "-sS", "--max-time", str(DEADLINE), f"{tls_server.https}/healthz"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "certificate" in result.stderr.lower()


def test_lease_and_watch_over_wss_with_websockets(tls_server, pki):
    context = pki.context()
    with connect(f"{tls_server.wss}/v1/watch", ssl=context, open_timeout=DEADLINE) as watch:
        assert "permessage-deflate" in watch.response.headers["Sec-WebSocket-Extensions"]
        assert "switch-01" in watch.recv(timeout=DEADLINE)
        with connect(f"{tls_server.wss}/v1/lease", ssl=context, open_timeout=DEADLINE) as holder:
            holder.send(json.dumps({"op": "acquire", "want": [{"name": "switch-01"}], "holder": "py/tls",
                                    "meta": {"job": "tls"}}))
            granted = json.loads(holder.recv(timeout=DEADLINE))
            assert granted["event"] == "granted"
            for _ in range(20):
                if "py/tls" in watch.recv(timeout=DEADLINE):
                    break
            else:
                pytest.fail("the watch never showed the TLS lease")
            holder.send(json.dumps({"op": "release"}))
            with pytest.raises(ConnectionClosed) as closed:
                holder.recv(timeout=DEADLINE)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


def test_plain_http_on_the_tls_port_fails_cleanly_and_the_server_goes_on(tls_server, pki):
    with socket.create_connection(("127.0.0.1", tls_server.tls_port), timeout=DEADLINE) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"speaks HTTPS" in answer
    tls_server.wait_for_log(r"plain HTTP request on a TLS port")
    assert curl(pki, f"{tls_server.https}/healthz").stdout == "ok\n"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_the_server_offers_no_session_resumption(tls_server, pki, version):
    # Our clients never resume, and a session ticket costs every connection memory for its life.
    context = pki.context()
    context.maximum_version = version
    with socket.create_connection(("127.0.0.1", tls_server.tls_port), timeout=DEADLINE) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(4096):  # TLS 1.3 tickets arrive after the handshake: read to the end
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert tls.version() == {ssl.TLSVersion.TLSv1_3: "TLSv1.3", ssl.TLSVersion.TLSv1_2: "TLSv1.2"}[version]
        assert not tls.session.has_ticket


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_1_1_is_refused(tls_server, pki):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki.path("ca.pem"))
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", tls_server.tls_port), timeout=DEADLINE) as raw:
        with pytest.raises(ssl.SSLError):
            with context.wrap_socket(raw, server_hostname="localhost"):
                pass


@pytest.fixture
def mtls_server(tmp_path, pki):
    server = start_server(tmp_path, pki, "--tls-client-ca", pki.path("ca.pem"))
    yield server
    stop(server)


def test_mutual_tls_names_the_holder_after_the_certificate(mtls_server, pki):
    with connect(f"{mtls_server.wss}/v1/lease", ssl=pki.context("alice"), open_timeout=DEADLINE) as holder:
        holder.send(json.dumps({"op": "acquire", "want": [{"name": "switch-01"}]}))
        granted = json.loads(holder.recv(timeout=DEADLINE))
        assert granted["event"] == "granted"
        status = json.loads(curl(pki, "--cert", pki.path("alice.pem"), "--key", pki.path("alice.key"),
                                 f"{mtls_server.https}/v1/status").stdout)
        assert status["resources"][0]["holder"] == "alice"
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in mtls_server.journal.read_text().splitlines() if line.strip()]
        grants = [line for line in lines if line.get("event") == "granted"]
        if grants:
            break
        time.sleep(0.05)
    assert grants[0]["holder"] == "alice"
    assert grants[0]["client_certificate"] == "CN=alice,O=lab"


@pytest.mark.parametrize("client", [None, "stranger", "expired"])
def test_mutual_tls_refuses_a_missing_untrusted_or_expired_certificate(mtls_server, pki, client):
    with pytest.raises((ssl.SSLError, ConnectionError, ConnectionClosed, InvalidMessage, EOFError, OSError)):
        with connect(f"{mtls_server.wss}/v1/lease", ssl=pki.context(client), open_timeout=DEADLINE) as ws:
            # TLS 1.3: the client learns of the refusal at its first read.
            ws.send(json.dumps({"op": "acquire", "want": [{"name": "switch-01"}]}))
            ws.recv(timeout=DEADLINE)
    line = mtls_server.wait_for_log(r"TLS failed")
    expected = {None: "certificate", "stranger": "certificate", "expired": "expired"}[client]
    assert expected in line.lower()
    # The server goes on.
    assert curl(pki, "--cert", pki.path("alice.pem"), "--key", pki.path("alice.key"),
                f"{mtls_server.https}/healthz").stdout == "ok\n"


def peer_certificate_subject(port: int, pki: PKI) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as raw:
        with pki.context().wrap_socket(raw, server_hostname="localhost") as tls:
            subject = dict(item[0] for item in tls.getpeercert()["subject"])
            return subject["commonName"]


def test_sighup_swaps_the_certificate_while_a_lease_stays_up(tmp_path, pki):
    # The server reads its certificate from files this test replaces.
    for suffix in ("pem", "key"):
        (tmp_path / f"live.{suffix}").write_bytes((pki.dir / f"server.{suffix}").read_bytes())
    pki.server("renewed", "renewed.localhost")
    server = start_server(tmp_path, pki, certificate=(str(tmp_path / "live.pem"), str(tmp_path / "live.key")))
    try:
        assert peer_certificate_subject(server.tls_port, pki) == "localhost"
        with connect(f"{server.wss}/v1/lease", ssl=pki.context(), open_timeout=DEADLINE) as holder:
            holder.send(json.dumps({"op": "acquire", "want": [{"name": "switch-01"}], "holder": "py/steady"}))
            assert json.loads(holder.recv(timeout=DEADLINE))["event"] == "granted"
            for suffix in ("pem", "key"):
                (tmp_path / f"live.{suffix}").write_bytes((pki.dir / f"renewed.{suffix}").read_bytes())
            server.process.send_signal(signal.SIGHUP)
            server.wait_for_log(r"TLS certificate reloaded \(CN=renewed\.localhost\)")
            assert peer_certificate_subject(server.tls_port, pki) == "renewed.localhost"
            # The lease's connection (made with the old certificate) is still up and answered.
            holder.ping().wait(DEADLINE)
            status = json.loads(curl(pki, f"{server.https}/v1/status").stdout)
            assert status["resources"][0]["holder"] == "py/steady"
            # A broken key is refused and the working certificate stays.
            (tmp_path / "live.key").write_text("not a key\n")
            server.process.send_signal(signal.SIGHUP)
            server.wait_for_log(r"reload on SIGHUP refused")
            assert peer_certificate_subject(server.tls_port, pki) == "renewed.localhost"
            holder.ping().wait(DEADLINE)
    finally:
        stop(server)


def cli(*arguments: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary()), *arguments], capture_output=True, text=True, timeout=DEADLINE * 3,
                          env={**os.environ, **(env or {})})


def test_the_cli_holds_reads_status_and_administers_over_tls(tls_server, pki):
    ca = ["--ca-file", pki.path("ca.pem")]
    held = cli("hold", "--server", tls_server.wss, *ca, "--name", "switch-01", "--", "sh", "-c", "echo lease=$LEASEHOLD_LEASE")
    assert held.returncode == 0, held.stderr
    assert held.stdout.startswith("lease=L")
    status = cli("status", "--server", tls_server.https, *ca)
    assert status.returncode == 0, status.stderr
    assert "switch-01" in status.stdout
    disabled = cli("disable", "array-01", "--server", tls_server.https, *ca, env={"LEASEHOLD_ADMIN_TOKEN": ADMIN_TOKEN})
    assert disabled.returncode == 0, disabled.stderr
    # LEASEHOLD_CA_FILE does what --ca-file does.
    enabled = cli("enable", "array-01", "--server", tls_server.https,
                  env={"LEASEHOLD_ADMIN_TOKEN": ADMIN_TOKEN, "LEASEHOLD_CA_FILE": pki.path("ca.pem")})
    assert enabled.returncode == 0, enabled.stderr


def test_the_cli_refuses_an_untrusted_server_with_a_clear_error(tls_server, pki):
    untrusted = cli("hold", "--server", tls_server.wss, "--name", "switch-01", "--", "true")
    assert untrusted.returncode == 69
    assert "TLS with" in untrusted.stderr and "certificate verify failed" in untrusted.stderr
    missing = cli("status", "--server", tls_server.https, "--ca-file", "/nonexistent/ca.pem")
    assert missing.returncode == 69
    assert "cannot load CA certificates from /nonexistent/ca.pem" in missing.stderr


def test_the_cli_shows_a_client_certificate_under_mutual_tls(mtls_server, pki):
    ca = ["--ca-file", pki.path("ca.pem")]
    refused = cli("status", "--server", mtls_server.https, *ca)
    assert refused.returncode == 69, refused.stdout
    mine = ["--cert", pki.path("alice.pem"), "--key", pki.path("alice.key")]
    held = cli("hold", "--server", mtls_server.wss, *ca, *mine, "--name", "switch-01", "--", "true")
    assert held.returncode == 0, held.stderr
    status = cli("status", "--server", mtls_server.https, *ca, *mine)
    assert status.returncode == 0 and "switch-01" in status.stdout


def test_the_python_client_leases_over_wss(tls_server, pki, monkeypatch):
    import leasehold

    with leasehold.lease(name="switch-01", server=tls_server.wss, ca_file=pki.path("ca.pem"), holder="py/client") as held:
        assert held.resources[0].name == "switch-01"
    # LEASEHOLD_CA_FILE, and an https:// URL mapped to wss://.
    monkeypatch.setenv("LEASEHOLD_CA_FILE", pki.path("ca.pem"))
    with leasehold.lease(name="switch-01", server=tls_server.https, holder="py/env") as held:
        assert held.id
    monkeypatch.delenv("LEASEHOLD_CA_FILE")
    with pytest.raises(leasehold.LeaseholdError) as refused:
        with leasehold.lease(name="switch-01", server=tls_server.wss, open_timeout=DEADLINE):
            pass
    assert "certificate" in str(refused.value).lower()


def test_the_python_client_shows_a_client_certificate(mtls_server, pki):
    import leasehold

    with leasehold.lease(name="switch-01", server=mtls_server.wss, ssl=pki.context("alice")) as held:
        assert held.resources[0].name == "switch-01"
        status = json.loads(curl(pki, "--cert", pki.path("alice.pem"), "--key", pki.path("alice.key"),
                                 f"{mtls_server.https}/v1/status").stdout)
        assert status["resources"][0]["holder"] == held.holder


def test_the_async_python_client_leases_over_wss(tls_server, pki):
    import asyncio

    import leasehold

    async def hold() -> str:
        async with leasehold.alease(name="switch-01", server=tls_server.wss, ca_file=pki.path("ca.pem")) as held:
            return held.resources[0].name

    assert asyncio.run(asyncio.wait_for(hold(), DEADLINE * 3)) == "switch-01"


def test_the_pytest_plugin_leases_over_wss_with_its_ca_file_option(tls_server, pki, tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "test_inner.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.lease(name='switch-01')\n"
        "def test_held(leased):\n"
        "    assert leased.resources[0].name == 'switch-01' and leased.id.startswith('L')\n"
    )
    environment = {key: value for key, value in os.environ.items() if key != "LEASEHOLD_CA_FILE"}
    source = str(REPO_ROOT / "clients" / "python" / "src")
    environment["PYTHONPATH"] = source + os.pathsep + environment.get("PYTHONPATH", "")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--leasehold-url={tls_server.wss}",
         f"--leasehold-ca-file={pki.path('ca.pem')}", str(inner)],
        capture_output=True, text=True, timeout=DEADLINE * 6, env=environment, cwd=inner,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
