"""Interop: the `websockets` library (an independent RFC 6455 implementation) against leasehold-echo.

The echo server is the real binary, started on 127.0.0.1 port 0; its first stdout line names the
port. Set LEASEHOLD_ECHO_BIN to use another build (default: <repo>/.build/debug/leasehold-echo).
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

REPO = Path(__file__).resolve().parent.parent
ECHO_BIN = Path(os.environ.get("LEASEHOLD_ECHO_BIN", REPO / ".build" / "debug" / "leasehold-echo"))
LISTENING = re.compile(r"leasehold-echo listening on 127\.0\.0\.1:(\d+)")
START_TIMEOUT = 10.0


class EchoServer:
    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.port = port
        self.uri = f"ws://127.0.0.1:{port}/echo"

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (the server closes its WebSockets with 1001 and exits); returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"leasehold-echo did not exit within {timeout} s of SIGTERM")


def start_echo_server(*arguments: str) -> EchoServer:
    if not ECHO_BIN.is_file():
        pytest.fail(
            f"leasehold-echo not found at {ECHO_BIN}: run `swift build` in {REPO} first "
            "(or set LEASEHOLD_ECHO_BIN to the binary)",
            pytrace=False,
        )
    process = subprocess.Popen(
        [str(ECHO_BIN), "--listen", "127.0.0.1:0", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + START_TIMEOUT
    line = ""
    try:
        while time.monotonic() < deadline:
            if selector.select(timeout=deadline - time.monotonic()):
                line = process.stdout.readline()
                break
            if process.poll() is not None:
                break
    finally:
        selector.close()
    match = LISTENING.search(line)
    if not match:
        process.kill()
        _, stderr = process.communicate(timeout=5)
        pytest.fail(f"leasehold-echo did not report its port; stdout {line!r}, stderr {stderr!r}", pytrace=False)
    return EchoServer(process, int(match.group(1)))


@pytest.fixture(scope="module")
def echo_server():
    server = start_echo_server()
    yield server
    status = server.stop()
    assert status == 0, f"leasehold-echo exited with {status} after SIGTERM"


def client(server: EchoServer, **options):
    # No proxy from the environment for loopback; permessage-deflate stays offered, as a browser
    # or a default client would offer it (the server accepts it).
    options.setdefault("open_timeout", 10)  # liveness only: a loaded machine may be slow
    options.setdefault("close_timeout", 5)
    return connect(server.uri, proxy=None, **options)


def test_text_echo(echo_server):
    with client(echo_server) as ws:
        for message in ["hello", "", "grüße, 世界 🎉", "x" * 126, "y" * 70_000]:
            ws.send(message)
            assert ws.recv(timeout=5) == message


def test_binary_echo(echo_server):
    with client(echo_server) as ws:
        for message in [b"\x00\x01\xff", b"", bytes(range(256)) * 300]:
            ws.send(message)
            assert ws.recv(timeout=5) == message


def test_deflate_offer_is_declined_with_compression_off():
    server = start_echo_server("--compression", "off")
    try:
        with client(server) as ws:
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
            ws.send("plain" * 100)
            assert ws.recv(timeout=5) == "plain" * 100
    finally:
        assert server.stop() == 0


def test_deflate_offer_is_accepted(echo_server):
    with client(echo_server) as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") == "permessage-deflate; client_max_window_bits=15"
        ws.send("compressed " * 100)
        assert ws.recv(timeout=5) == "compressed " * 100


def test_one_mebibyte_messages(echo_server):
    payload = os.urandom(1 << 20)
    text = "leasehold " * ((1 << 20) // 10)
    with client(echo_server, max_size=4 << 20) as ws:
        ws.send(payload)
        assert ws.recv(timeout=10) == payload
        ws.send(text)
        assert ws.recv(timeout=10) == text


def test_fragmented_message(echo_server):
    with client(echo_server) as ws:
        ws.send(["frag", "mented ", "tëxt"])
        assert ws.recv(timeout=5) == "fragmented tëxt"
        ws.send([b"\x01", b"\x02\x03"])
        assert ws.recv(timeout=5) == b"\x01\x02\x03"


def test_ping_pong(echo_server):
    with client(echo_server, ping_interval=None) as ws:
        for payload in [b"", b"are you there?", b"\xff" * 125]:
            pong = ws.ping(payload)
            assert pong.wait(timeout=5), f"no pong for ping {payload!r}"
        ws.send("after pings")
        assert ws.recv(timeout=5) == "after pings"


@pytest.mark.parametrize("code", [1000, 4000])
def test_close_code_is_echoed(echo_server, code):
    with client(echo_server) as ws:
        ws.send("bye soon")
        assert ws.recv(timeout=5) == "bye soon"
        started = time.monotonic()
        ws.close(code=code, reason="done")
        # The server answers with the same code and closes TCP itself, so close() returns
        # without waiting out close_timeout.
        assert ws.close_code == code
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == code
        assert time.monotonic() - started < 4.5
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=1)


def test_fifty_concurrent_clients(echo_server):
    clients = 50
    messages = 20
    barrier = threading.Barrier(clients, timeout=20)

    def run(index: int) -> int:
        with client(echo_server) as ws:
            barrier.wait()  # all 50 are connected at once before any message
            for number in range(messages):
                text = f"client {index} message {number}"
                ws.send(text)
                assert ws.recv(timeout=10) == text
                data = bytes([index, number]) * 1000
                ws.send(data)
                assert ws.recv(timeout=10) == data
            ws.close()
            assert ws.close_code == 1000
        return index

    with ThreadPoolExecutor(max_workers=clients) as pool:
        done = sorted(pool.map(run, range(clients)))
    assert done == list(range(clients))


def test_sigterm_closes_clients_with_1001_and_exits_cleanly():
    server = start_echo_server()
    try:
        with ExitStack() as stack:
            sockets = [stack.enter_context(client(server)) for _ in range(3)]
            for ws in sockets:
                ws.send("hi")
                assert ws.recv(timeout=5) == "hi"
            server.process.send_signal(signal.SIGTERM)
            for ws in sockets:
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=5)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            assert server.process.wait(timeout=10) == 0
    finally:
        server.stop()
