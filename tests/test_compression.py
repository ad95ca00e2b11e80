"""permessage-deflate (RFC 7692) with independent peers: Python's `websockets` (which offers it by
default) and a raw socket whose frames are built and inflated with Python's zlib, against
leasehold-echo and `leasehold serve`.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import zlib

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import connect

from test_interop import client, start_echo_server
from test_lease_interop import DEADLINE, event, server  # noqa: F401  (fixture)

TAIL = b"\x00\x00\xff\xff"


@pytest.fixture(scope="module")
def echo():
    started = start_echo_server()
    yield started
    assert started.stop() == 0


MESSAGES = [
    "",
    "short",
    json.dumps([{"name": f"gpu-{i:03}", "state": "free", "labels": {"rack": "r1"}} for i in range(300)]),
    "grüße, 世界 🎉 " * 500,
    os.urandom(70_000),
    b"\x00" * 200_000,
]


@pytest.mark.parametrize(
    "options, answer",
    [
        ({}, "permessage-deflate; client_max_window_bits=15"),
        (
            {"server_no_context_takeover": True, "client_no_context_takeover": True},
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=15",
        ),
        ({"client_max_window_bits": 9}, "permessage-deflate; client_max_window_bits=9"),
        (
            {"server_max_window_bits": 9, "client_max_window_bits": 9},
            "permessage-deflate; server_max_window_bits=9; client_max_window_bits=9",
        ),
    ],
    ids=["context-takeover", "no-context-takeover", "client-window-9", "both-windows-9"],
)
def test_websockets_client_round_trips_with_each_negotiation(echo, options, answer):
    factory = ClientPerMessageDeflateFactory(**options)
    with client(echo, extensions=[factory], max_size=4 << 20) as ws:
        assert ws.response.headers["Sec-WebSocket-Extensions"] == answer
        for _ in range(2):  # twice: the second round refers back when context is kept
            for message in MESSAGES:
                ws.send(message)
                assert ws.recv(timeout=10) == message
        ws.send(["frag", "mented ", "compressed " * 50])
        assert ws.recv(timeout=10) == "fragmented " + "compressed " * 50


class RawClient:
    """Frames by hand: what the server puts on the wire, RSV1 bits included."""

    def __init__(self, port: int, path: str = "/", extensions: str = "permessage-deflate") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: {extensions}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            assert chunk, "connection closed during the handshake"
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        self.head = head.decode()
        assert self.head.startswith("HTTP/1.1 101"), self.head

    def send(self, opcode: int, payload: bytes, rsv1: bool = False, fin: bool = True) -> None:
        mask = os.urandom(4)
        first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
        if len(payload) < 126:
            header = struct.pack("!BB", first, 0x80 | len(payload))
        elif len(payload) < 65536:
            header = struct.pack("!BBH", first, 0x80 | 126, len(payload))
        else:
            header = struct.pack("!BBQ", first, 0x80 | 127, len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed while reading a frame"
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def frame(self) -> tuple[int, bool, bytes]:
        """(first byte, fin, payload) of the server's next frame."""
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
        return first, bool(first & 0x80), self._read(length)


def test_server_frames_carry_rsv1_and_inflate_with_pythons_zlib(echo):
    raw = RawClient(echo.port)
    assert "Sec-WebSocket-Extensions: permessage-deflate" in raw.head
    inflater = zlib.decompressobj(-15)
    for _ in range(2):
        message = ("lease gpu-07 granted to alice; " * 200).encode()
        raw.send(0x1, message)
        first, fin, payload = raw.frame()
        assert first == 0xC1, "FIN + RSV1 + text"
        assert len(payload) * 10 < len(message)
        assert not payload.endswith(TAIL), "the sync-flush tail is removed"
        assert inflater.decompress(payload + TAIL) == message
    # A tiny message is not worth compressing: RSV1 clear.
    raw.send(0x1, b"hi")
    assert raw.frame() == (0x81, True, b"hi")
    # A message compressed by Python's zlib, sent in two fragments, RSV1 on the first only.
    deflater = zlib.compressobj(wbits=-15)
    compressed = (deflater.compress(b"from python " * 20) + deflater.flush(zlib.Z_SYNC_FLUSH))[:-4]
    raw.send(0x1, compressed[:5], rsv1=True, fin=False)
    raw.send(0x9, b"ping")  # a control frame between fragments, never compressed
    raw.send(0x0, compressed[5:])
    assert raw.frame() == (0x8A, True, b"ping")
    first, _, payload = raw.frame()
    assert first == 0xC1 and inflater.decompress(payload + TAIL) == b"from python " * 20


def test_a_decompression_bomb_is_refused_with_1009_by_the_echo_server():
    small = start_echo_server("--max-message-size", "1048576")
    try:
        raw = RawClient(small.port)
        bomb = zlib.compressobj(wbits=-15)
        payload = (bomb.compress(b"\x00" * (64 << 20)) + bomb.flush(zlib.Z_SYNC_FLUSH))[:-4]
        assert len(payload) < 100_000
        raw.send(0x2, payload, rsv1=True)
        first, _, close = raw.frame()
        assert first == 0x88 and struct.unpack("!H", close[:2])[0] == 1009
        # The server goes on.
        with client(small) as ws:
            ws.send("still here " * 10)
            assert ws.recv(timeout=10) == "still here " * 10
    finally:
        assert small.stop() == 0


def test_lease_and_watch_flows_are_compressed_with_leasehold_serve(server):  # noqa: F811
    with connect(f"{server}/v1/watch", open_timeout=DEADLINE, proxy=None) as watch:
        negotiated = watch.response.headers["Sec-WebSocket-Extensions"]
        # The server asks clients not to keep context: no inflate stream outlives a message.
        assert negotiated == "permessage-deflate; client_no_context_takeover; client_max_window_bits=15"
        first = json.loads(watch.recv(timeout=DEADLINE))
        assert "resources" in json.dumps(first)
        with connect(f"{server}/v1/lease", open_timeout=DEADLINE, proxy=None) as holder:
            assert "permessage-deflate" in holder.response.headers["Sec-WebSocket-Extensions"]
            holder.send(json.dumps({"op": "acquire", "want": [{"name": "switch-01"}], "holder": "py/zipped",
                                    "meta": {"note": "x" * 500}}))
            granted = event(holder)
            assert granted["event"] == "granted"
            deadline_snapshots = 20
            for _ in range(deadline_snapshots):
                snapshot = watch.recv(timeout=DEADLINE)
                if "py/zipped" in snapshot:
                    break
            else:
                pytest.fail("no watch snapshot showed the new lease")
            holder.send(json.dumps({"op": "release"}))
            with pytest.raises(ConnectionClosed):
                holder.recv(timeout=DEADLINE)


def test_an_oversized_compressed_message_closes_a_lease_with_1009(server):  # noqa: F811
    # 1 MB of zeros compresses to about 1 KB: the server's 64 KiB cap is on the inflated size.
    with connect(f"{server}/v1/lease", open_timeout=DEADLINE, proxy=None, max_size=None) as ws:
        ws.send(json.dumps({"op": "acquire", "want": [{"name": "switch-01"}], "holder": " " * (1 << 20)}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=DEADLINE)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_compression_off_declines_the_offer(tmp_path):
    from test_lease_interop import INVENTORY, binary
    import queue
    import re
    import subprocess
    import threading

    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    process = subprocess.Popen(
        [str(binary()), "serve", "--listen", "127.0.0.1:0", "--inventory", str(inventory),
         "--log-level", "warning", "--compression", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        match = re.fullmatch(r"leasehold listening on 127\.0\.0\.1:(\d+)\n", lines.get(timeout=DEADLINE))
        assert match
        with connect(f"ws://127.0.0.1:{match.group(1)}/v1/watch", open_timeout=DEADLINE, proxy=None) as watch:
            assert watch.response.headers.get("Sec-WebSocket-Extensions") is None
            assert "resources" in watch.recv(timeout=DEADLINE)
    finally:
        process.terminate()
        assert process.wait(timeout=DEADLINE) == 0
