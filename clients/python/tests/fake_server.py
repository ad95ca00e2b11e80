"""An in-process stand-in for the leasehold server, for what the real one does
not readily do on cue: close with 1012 at a chosen moment, drop a connection
without a close frame, refuse handshakes while it "restarts", answer a resume
in a chosen way, keep a revoked lease's connection open.

Each connection runs one script, in order of arrival: an ``async def
script(conn)`` that plays the server's side with :class:`FakeConnection`'s
helpers. Scripts run on the server's event loop (a thread of its own); the
test waits for what they record with :meth:`FakeServer.wait`, and lets them go
on with ``threading.Event``s that they wait for with :meth:`FakeConnection.until`.
Whatever a script raises fails the test at teardown.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http import HTTPStatus
from typing import Any, Awaitable, Callable, Optional

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

#: Every wait in a script or a test ends by this many seconds (a hang guard).
HANG_GUARD = 60.0

TOKEN = "rt-2b7d1f0c9a4e4d3b8c6a5f1e0d9c8b7a"
RESOURCES = [{"name": "array-01", "type": "array", "labels": {"proto": "fc"},
              "attributes": {"mgmt": "10.0.0.11"}, "epoch": 17}]


def granted(lease: str = "L1", token: str | None = TOKEN, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"event": "granted", "lease": lease, "resources": RESOURCES, **extra}
    if token is not None:
        event["resume"] = token
    return event


def queued(position: int, lease: str = "L1", token: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"event": "queued", "lease": lease, "position": position}
    if token is not None:
        event["resume"] = token
    return event


Script = Callable[["FakeConnection"], Awaitable[None]]


class FakeConnection:
    """The server's side of one accepted connection."""

    def __init__(self, server: "FakeServer", index: int, ws: ServerConnection) -> None:
        self.server = server
        self.index = index
        self.ws = ws
        #: Messages the client sent, in order.
        self.received: list[str] = []
        #: The close frame the client sent (its own close, or its echo of ours).
        self.client_close: Optional[Close] = None
        #: True when the client started the closing handshake.
        self.client_closed_first = False
        #: Set once the connection is closed, whoever closed it.
        self.closed = threading.Event()

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(m) for m in list(self.received)]

    async def recv(self) -> dict[str, Any]:
        """The client's next message, decoded; raises ConnectionClosed."""
        try:
            message = await asyncio.wait_for(self.ws.recv(), HANG_GUARD)
        except ConnectionClosed as exc:
            self._closed(exc)
            raise
        assert isinstance(message, str), f"the client sent a binary message: {message!r}"
        self.received.append(message)
        self.server.note(f"conn {self.index} got {message}")
        return json.loads(message)  # type: ignore[no-any-return]

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))
        self.server.note(f"conn {self.index} sent {event.get('event')}")

    async def close(self, code: int, reason: str = "") -> None:
        """Close with ``code`` (the server's close, as on a restart or a refusal)."""
        self.server.note(f"conn {self.index} closing with {code}")
        await self.ws.close(code, reason)
        self._done()

    def abort(self) -> None:
        """Drop the connection: no close frame, the TCP connection is reset."""
        self.server.note(f"conn {self.index} aborted")
        self.ws.transport.abort()
        self._done()

    async def until(self, event: threading.Event) -> None:
        """Wait for the test to set ``event``."""
        deadline = time.monotonic() + HANG_GUARD
        while not event.is_set():
            if time.monotonic() > deadline:
                raise AssertionError("the test never let the fake server go on")
            await asyncio.sleep(0.005)

    async def serve_until_closed(self) -> None:
        """Answer as the server does until the client closes: a ``release``
        gets a 1000 close; anything else is recorded."""
        while True:
            try:
                message = await self.recv()
            except ConnectionClosed:
                return
            if message.get("op") == "release":
                await self.close(1000)
                return

    def _closed(self, exc: ConnectionClosed) -> None:
        self.client_close = exc.rcvd
        self.client_closed_first = bool(exc.rcvd_then_sent)
        if exc.rcvd is not None:
            self.server.note(f"conn {self.index} closed by the client with {exc.rcvd.code}")
        self._done()

    def _done(self) -> None:
        self.closed.set()


class FakeServer:
    """Listens on 127.0.0.1; connection i runs ``scripts[i]``."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = list(scripts)
        self.conns: list[FakeConnection] = []
        self.errors: list[BaseException] = []
        self.log: list[str] = []
        #: Handshakes still to refuse with HTTP 503 (as a restarting server
        #: behind a proxy would); a negative number refuses them all.
        self.refuse = 0
        #: Handshakes refused so far.
        self.refused = 0
        self.port = 0
        self._lock = threading.Lock()
        self._server: Server | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fake-leasehold", daemon=True)
        self._thread.start()
        self.listen()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def note(self, line: str) -> None:
        with self._lock:
            self.log.append(line)

    def _run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(HANG_GUARD)  # type: ignore[arg-type]

    def listen(self) -> None:
        """Start listening (again, on the same port after :meth:`stop_listening`)."""
        async def start() -> Server:
            return await serve(self._handle, "127.0.0.1", self.port,
                               process_request=self._process_request, ping_interval=None)

        self._server = self._run(start())
        self.port = self._server.sockets[0].getsockname()[1]
        self.note("listening")

    def stop_listening(self) -> None:
        """Stop accepting connections (connects are refused); open ones stay."""
        assert self._server is not None
        server = self._server

        async def stop() -> None:
            # (wait_closed() would wait for the open connections too.)
            server.close(close_connections=False)
            while server.is_serving():
                await asyncio.sleep(0.005)

        self._run(stop())
        self._server = None
        self.note("stopped listening")

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = HANG_GUARD) -> Any:
        """Wait (in the test) until ``predicate()`` is true; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if self.errors:
                raise AssertionError(f"the fake server's script failed: {self.errors[0]!r}") from self.errors[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout:g}s for {what}; the fake server saw: {self.log}")
            time.sleep(0.005)

    def conn(self, index: int) -> FakeConnection:
        """Connection ``index``, once it arrived."""
        return self.wait(lambda: self.conns[index] if len(self.conns) > index else None,
                         f"connection {index}")

    def first_message(self, index: int) -> dict[str, Any]:
        conn = self.conn(index)
        self.wait(lambda: conn.received, f"a message on connection {index}")
        return conn.messages[0]

    async def _process_request(self, connection: ServerConnection, request: Any) -> Any:
        with self._lock:
            if self.refuse == 0:
                return None
            if self.refuse > 0:
                self.refuse -= 1
            self.refused += 1
        self.note("refused a handshake")
        return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "restarting\n")

    async def _handle(self, ws: ServerConnection) -> None:
        with self._lock:
            index = len(self.conns)
            conn = FakeConnection(self, index, ws)
            self.conns.append(conn)
        self.note(f"conn {index} open")
        if index >= len(self.scripts):
            self.errors.append(AssertionError(f"unexpected connection {index}"))
            await ws.close(1011, "no script for this connection")
            return
        try:
            await self.scripts[index](conn)
        except ConnectionClosed as exc:
            conn._closed(exc)
        except BaseException as exc:  # reported by the test's teardown
            self.errors.append(exc)
            self.note(f"conn {index} script failed: {exc!r}")

    def close(self) -> None:
        if self._server is not None:
            server = self._server

            async def stop() -> None:
                server.close()
                await server.wait_closed()

            try:
                self._run(stop())
            finally:
                self._server = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(HANG_GUARD)
        if not self._thread.is_alive():
            self.loop.close()
