"""The blocking client: :func:`lease` and :class:`Lease`."""

from __future__ import annotations

import inspect
import ssl as ssl_module
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
    Connect,
    LeaseBase,
    Receive,
    Request,
    Send,
    Sleep,
    Steps,
    connect_error,
    next_request,
)
from .model import DEFAULT_RESUME_WINDOW, DEFAULT_REVOKE_WAIT, Want, WaitSeconds

__all__ = ["Lease", "lease"]


class Lease(LeaseBase):
    """A lease on lab resources, held by one WebSocket connection.

    Use it as a context manager (``with lease(...) as l:``): entering waits
    in the server's queue until everything asked for is granted, leaving
    releases it. Or call :meth:`acquire` and :meth:`release` yourself.

    While the lease is held, a background thread reads the connection (the
    websockets library answers the server's pings on its own thread), so the
    lease stays alive whatever the caller is doing. When the server restarts
    (close 1012), or the connection drops and the lease asked for a
    ``grace``, that thread reconnects and resumes the lease; it stays
    :attr:`active` meanwhile. If the lease ends early, :attr:`lost` turns true
    (:attr:`revoked` too when an admin revoked it), :attr:`error` holds the
    :class:`~leasehold.Revoked` or :class:`~leasehold.ConnectionLost`, and
    ``on_lost(lease)`` is called from that background thread. A revoked
    lease keeps its connection open (the server keeps the resources from
    everyone else meanwhile, for ``revoke_wait``) until :meth:`release` or
    leaving ``with`` closes it: do so once the work on the resources stopped.

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
        # Set by release() to cut a pause between resume attempts short.
        self._wake = threading.Event()

    def _connect(self, timeout: float) -> ClientConnection:
        return connect(
            self.url,
            open_timeout=timeout,
            close_timeout=self.close_timeout,
            **{**_DIRECT, **self.websocket_options},
        )

    def acquire(self) -> "Lease":
        """Connect, ask, and wait until granted. Returns the lease itself."""
        self._check_unused()
        try:
            ws = self._connect(self.open_timeout)
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
        elif isinstance(request, Connect):
            self._close_quietly()
            self._ws = self._connect(request.timeout)
        elif isinstance(request, Sleep):
            if self._wake.wait(request.seconds):
                self._wake.clear()
        elif isinstance(request, Call):
            request.callback(self)
        else:  # ENDED
            self._done.set()
        return None

    def release(self) -> None:
        """Release the lease (tell the server, wait for its close). Idempotent.

        For a lease that ended early (revoked), it closes the connection that
        the server kept open (``revoke_wait``) so that the resources go to
        the next holder. Safe to call from ``on_lost``."""
        if self._ws is None:
            return
        send = self._begin_release()
        if send is None:
            return
        self._wake.set()
        watcher = self._thread is not None and self._thread is not threading.current_thread()
        if self._thread is not None and not self._done.is_set():
            if send:
                try:
                    self._ws.send(RELEASE_MESSAGE)
                except ConnectionClosed:
                    pass
            # The server releases and closes with 1000; the watcher sees it.
            # (While resuming, the watcher releases once resumed.)
            if watcher:
                self._done.wait(self.close_timeout)
        self._close_quietly()
        if watcher:
            assert self._thread is not None
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
    grace: float | None = None,
    revoke_wait: float | None = DEFAULT_REVOKE_WAIT,
    max_hold: float | None = None,
    resume_window: float | None = DEFAULT_RESUME_WINDOW,
    on_lost: Callable[[Lease], Any] | None = None,
    on_queued: Callable[[Lease], Any] | None = None,
    open_timeout: float = 10.0,
    close_timeout: float = 5.0,
    raise_if_lost: bool = True,
    websocket_options: Mapping[str, Any] | None = None,
    ssl: "ssl_module.SSLContext | None" = None,
    ca_file: str | None = None,
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
        server: the server URL (``ws://host:7400``, or ``wss://host:7443`` for a
            server with TLS); default ``LEASEHOLD_URL``, else ``ws://127.0.0.1:7400``.
        wait: seconds to wait in the queue; ``None`` (default) waits forever,
            ``0`` does not queue.
        holder: who holds it, shown on the status page; default
            ``LEASEHOLD_HOLDER`` or ``user@host pid N``.
        meta: provenance shown with the lease (job URL, commit, test id): up to
            16 string values.
        grace: seconds the server keeps the lease when its connection drops
            without a release (a network blip), for this client to resume it;
            ``None`` (default): not asked, a drop ends the lease. The server
            caps it (default 300).
        revoke_wait: seconds the server keeps a revoked lease's resources
            from everyone else, until this client closed the connection
            (it does once the lease is released or ``with`` is left).
            Default 30; ``None`` or 0: the server frees them at once.
        max_hold: the longest the lease may be held, in seconds; the server
            revokes it then (``None``: only the inventory's limit applies).
            :attr:`~Lease.expires` says when.
        resume_window: seconds to keep trying to resume the lease after the
            server closed the connection for a restart (close 1012); default
            60, the server's default resume grace. ``None`` or 0: do not.
        on_lost: called with the lease, from the background thread, if the
            lease ends before it is released (revoked, or the connection lost).
        on_queued: called with the lease from the waiting thread each time the
            queue position changes (``lease.position``).
        open_timeout: seconds to wait for the connection to open.
        close_timeout: seconds to wait for the server's close on release.
        raise_if_lost: whether leaving the ``with`` block raises the lease's
            :attr:`~Lease.error` when it ended early.
        websocket_options: extra keyword arguments for
            ``websockets.sync.client.connect`` (``proxy=None``, ...).
        ssl: for ``wss://``: the ``ssl.SSLContext`` to use (load a client
            certificate into it for mutual TLS).
        ca_file: for ``wss://``: PEM file of the CA certificates to trust;
            default ``LEASEHOLD_CA_FILE``, else the system's trust store.

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
        grace=grace,
        revoke_wait=revoke_wait,
        max_hold=max_hold,
        resume_window=resume_window,
        on_lost=on_lost,
        on_queued=on_queued,
        open_timeout=open_timeout,
        close_timeout=close_timeout,
        raise_if_lost=raise_if_lost,
        websocket_options=websocket_options,
        ssl=ssl,
        ca_file=ca_file,
    )
