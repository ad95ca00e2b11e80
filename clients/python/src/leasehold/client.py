"""The blocking client: :func:`lease` and :class:`Lease`."""

from __future__ import annotations

import inspect
import threading
from types import TracebackType
from typing import Any, Callable, Mapping, Sequence

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

# websockets >= 17 wants connect() used as a context manager unless the
# caller opts into getting the connection directly (``legacy=True``); older
# versions do that without the flag (and do not know it).
_DIRECT = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}

from ._base import (
    RELEASE_MESSAGE,
    Call,
    LeaseBase,
    Receive,
    Request,
    Send,
    Steps,
    connect_error,
    next_request,
)
from .model import Want, WaitSeconds

__all__ = ["Lease", "lease"]


class Lease(LeaseBase):
    """A lease on lab resources, held by one WebSocket connection.

    Use it as a context manager (``with lease(...) as l:``): entering waits
    in the server's queue until everything asked for is granted, leaving
    releases it. Or call :meth:`acquire` and :meth:`release` yourself.

    While the lease is held, a background thread reads the connection (the
    websockets library answers the server's pings on its own thread), so the
    lease stays alive whatever the caller is doing. If the lease ends early,
    :attr:`lost` turns true (:attr:`revoked` too when an admin revoked it),
    :attr:`error` holds the :class:`~leasehold.Revoked` or
    :class:`~leasehold.ConnectionLost`, and ``on_lost(lease)`` is called from
    that background thread.

    Raises (from :meth:`acquire` / entering ``with``):
        Unsatisfiable, WaitTimeout, BadRequest, ProtocolError: the server
            turned the request down.
        ConnectionRefused, HandshakeError: the server could not be reached.
        ConnectionLost: the connection dropped while waiting.

    Leaving the ``with`` block raises :attr:`error` when the lease ended
    early and the block itself raised nothing (unless ``raise_if_lost=False``),
    so work done without the resources does not pass unnoticed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ws: ClientConnection | None = None
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    def acquire(self) -> "Lease":
        """Connect, ask, and wait until granted. Returns the lease itself."""
        self._check_unused()
        try:
            ws = connect(
                self.url,
                open_timeout=self.open_timeout,
                close_timeout=self.close_timeout,
                **{**_DIRECT, **self.websocket_options},
            )
        except Exception as exc:
            raise connect_error(self.url, exc) from exc
        self._ws = ws
        try:
            self._run(self._waiting_steps())
        except BaseException:
            # Leaving the queue (error, timeout, Ctrl-C, a failing callback):
            # closing the socket is how a waiter leaves.
            self._close_quietly()
            raise
        self._thread = threading.Thread(
            target=self._run,
            args=(self._holding_steps(),),
            name=f"leasehold-{self.id}",
            daemon=True,
        )
        self._thread.start()
        return self

    def _run(self, steps: Steps) -> None:
        """Do the I/O that ``steps`` asks for, blocking, until they are done."""
        result: Any = None
        failure: BaseException | None = None
        while (request := next_request(steps, result, failure)) is not None:
            result, failure = None, None
            try:
                result = self._perform(request)
            except BaseException as exc:  # handed to the steps, which decide
                failure = exc

    def _perform(self, request: Request) -> Any:
        ws = self._ws
        assert ws is not None
        if isinstance(request, Receive):
            return ws.recv(timeout=request.timeout)
        if isinstance(request, Send):
            ws.send(request.text)
        elif isinstance(request, Call):
            request.callback(self)
        else:  # ENDED
            self._done.set()
        return None

    def release(self) -> None:
        """Release the lease (tell the server, wait for its close). Idempotent;
        a no-op for a lease that already ended."""
        ws = self._ws
        if ws is None or not self._begin_release():
            return
        if self._thread is not None and not self._done.is_set():
            try:
                ws.send(RELEASE_MESSAGE)
            except ConnectionClosed:
                pass
            # The server releases and closes with 1000; the watcher sees it.
            self._done.wait(self.close_timeout)
        self._close_quietly()
        if self._thread is not None:
            self._thread.join(self.close_timeout)
            if not self._done.is_set():  # pragma: no cover - server never closed
                self._mark_ended(None, None)
                self._done.set()

    def wait_lost(self, timeout: float | None = None) -> bool:
        """Block until the lease ends (released or lost); True if it has ended."""
        if self._thread is None:
            return False
        return self._done.wait(timeout)

    def _close_quietly(self) -> None:
        ws = self._ws
        if ws is None:
            return
        try:
            ws.close()
        except Exception:  # pragma: no cover - closing a broken socket
            pass

    def __enter__(self) -> "Lease":
        # A lease acquired already (``lease(...).acquire()``, or one the
        # pytest ``lease`` factory handed out) may still be used in ``with``
        # to release it at the end of the block.
        if self._ws is not None:
            return self
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
        self._raise_if_lost_on_exit(exc_type)


def lease(
    want: Sequence[Want] | Want | None = None,
    *,
    type: str | None = None,
    count: int | None = None,
    labels: Mapping[str, str] | None = None,
    name: str | None = None,
    server: str | None = None,
    wait: WaitSeconds = None,
    holder: str | None = None,
    meta: Mapping[str, str] | None = None,
    on_lost: Callable[[Lease], Any] | None = None,
    on_queued: Callable[[Lease], Any] | None = None,
    open_timeout: float = 10.0,
    close_timeout: float = 5.0,
    raise_if_lost: bool = True,
    websocket_options: Mapping[str, Any] | None = None,
) -> Lease:
    """Ask for lab resources; use the result in a ``with`` block.

    ::

        with leasehold.lease(want=[{"type": "array", "labels": {"proto": "fc"}}],
                             wait=600, holder="ci/nightly-1234") as lease:
            mgmt = lease.resources[0].attributes["mgmt"]

        with leasehold.lease(type="array", count=2) as lease:   # shorthand
            ...

    Args:
        want: the request's groups, as PROTOCOL.md spells them:
            ``{"type": ..., "count": ..., "labels": {...}}`` or ``{"name": ...}``.
        type, count, labels: shorthand for one group of ``count`` resources of
            ``type`` carrying ``labels``.
        name: shorthand for one named resource.
        server: the server URL (``ws://host:7400``); default ``LEASEHOLD_URL``,
            else ``ws://127.0.0.1:7400``.
        wait: seconds to wait in the queue; ``None`` (default) waits forever,
            ``0`` does not queue.
        holder: who holds it, shown on the status page; default
            ``LEASEHOLD_HOLDER`` or ``user@host pid N``.
        meta: provenance shown with the lease (job URL, commit, test id): up to
            16 string values.
        on_lost: called with the lease, from the background thread, if the
            lease ends before it is released (revoked, or the connection lost).
        on_queued: called with the lease from the waiting thread each time the
            queue position changes (``lease.position``).
        open_timeout: seconds to wait for the connection to open.
        close_timeout: seconds to wait for the server's close on release.
        raise_if_lost: whether leaving the ``with`` block raises the lease's
            :attr:`~Lease.error` when it ended early.
        websocket_options: extra keyword arguments for
            ``websockets.sync.client.connect`` (``ssl=...``, ``proxy=None``, ...).

    Returns:
        A :class:`Lease`, not acquired yet: entering ``with`` acquires it.
    """
    return Lease(
        want,
        type=type,
        count=count,
        labels=labels,
        name=name,
        server=server,
        wait=wait,
        holder=holder,
        meta=meta,
        on_lost=on_lost,
        on_queued=on_queued,
        open_timeout=open_timeout,
        close_timeout=close_timeout,
        raise_if_lost=raise_if_lost,
        websocket_options=websocket_options,
    )
