"""The asyncio client: :func:`alease` and :class:`AsyncLease`."""

from __future__ import annotations

import asyncio
import inspect
import ssl as ssl_module
from types import TracebackType
from typing import Any, Callable, Mapping, Sequence

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

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

__all__ = ["AsyncLease", "alease"]


async def _call(callback: Callable[[Any], Any], arg: Any) -> None:
    result = callback(arg)
    if inspect.isawaitable(result):
        await result


class AsyncLease(LeaseBase):
    """The asyncio twin of :class:`~leasehold.Lease`.

    ``async with alease(...) as lease:`` waits until granted and releases on
    exit. A background task reads the connection while the lease is held;
    ``on_lost`` and ``on_queued`` may be plain functions or coroutine
    functions. Same attributes, same exceptions as :class:`~leasehold.Lease`;
    the task resumes the lease after a server restart as the thread does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._done: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None

    async def _connect(self, timeout: float) -> ClientConnection:
        return await connect(
            self.url,
            open_timeout=timeout,
            close_timeout=self.close_timeout,
            **self.websocket_options,
        )

    async def acquire(self) -> "AsyncLease":
        """Connect, ask, and wait until granted. Returns the lease itself."""
        self._check_unused()
        # Made here, inside the running loop (Python 3.9 binds them at creation).
        self._done = asyncio.Event()
        self._wake = asyncio.Event()
        try:
            ws = await self._connect(self.open_timeout)
        except Exception as exc:
            raise connect_error(self.url, exc) from exc
        self._ws = ws
        try:
            await self._run(self._waiting_steps())
        except BaseException:
            # Closing the socket is how a waiter leaves the queue.
            await self._close_quietly()
            raise
        self._task = asyncio.create_task(self._watch(), name=f"leasehold-{self.id}")
        return self

    async def _watch(self) -> None:
        """The background task: the holding steps, until the lease ends."""
        try:
            await self._run(self._holding_steps())
        except asyncio.CancelledError:
            # Cancelled by release() when the server never closed.
            self._mark_ended(None, None)
            assert self._done is not None
            self._done.set()
            raise

    async def _run(self, steps: Steps) -> None:
        """Do the I/O that ``steps`` asks for, with asyncio, until they are done."""
        result: Any = None
        failure: BaseException | None = None
        while (request := next_request(steps, result, failure)) is not None:
            result, failure = None, None
            try:
                result = await self._perform(request)
            except BaseException as exc:  # handed to the steps, which decide
                failure = exc

    async def _perform(self, request: Request) -> Any:
        ws = self._ws
        assert ws is not None and self._done is not None and self._wake is not None
        if isinstance(request, Receive):
            return await asyncio.wait_for(ws.recv(), request.timeout)
        if isinstance(request, Send):
            await ws.send(request.text)
        elif isinstance(request, Connect):
            await self._close_quietly()
            self._ws = await self._connect(request.timeout)
        elif isinstance(request, Sleep):
            try:
                await asyncio.wait_for(self._wake.wait(), request.seconds)
                self._wake.clear()
            except asyncio.TimeoutError:
                pass
        elif isinstance(request, Call):
            await _call(request.callback, self)
        else:  # ENDED
            self._done.set()
        return None

    async def release(self) -> None:
        """Release the lease (tell the server, wait for its close). Idempotent.

        For a revoked lease it closes the connection that the server kept
        open (``revoke_wait``). Safe to await from ``on_lost``."""
        if self._ws is None:
            return
        send = self._begin_release()
        if send is None:
            return
        if self._wake is not None:
            self._wake.set()
        if self._task is not None and self._task is asyncio.current_task():
            # From on_lost, in the watcher task itself: close, and the task
            # sees the close when the callback returns.
            await self._close_quietly()
            return
        if self._task is not None and self._done is not None and not self._done.is_set():
            try:
                if send:
                    await self._ws.send(RELEASE_MESSAGE)
                # (While resuming, the task releases once resumed.)
                await asyncio.wait_for(self._done.wait(), self.close_timeout)
            except (ConnectionClosed, asyncio.TimeoutError):
                pass
        await self._close_quietly()
        if self._task is not None:
            if not self._task.done():
                try:
                    await asyncio.wait_for(asyncio.shield(self._task), self.close_timeout)
                except asyncio.TimeoutError:  # pragma: no cover - server never closed
                    self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def wait_lost(self, timeout: float | None = None) -> bool:
        """Wait until the lease ends (released or lost); True if it has ended."""
        if self._done is None or self._task is None:
            return False
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def _close_quietly(self) -> None:
        ws = self._ws
        if ws is None:
            return
        try:
            await ws.close()
        except Exception:  # pragma: no cover
            pass

    async def __aenter__(self) -> "AsyncLease":
        if self._ws is not None:
            return self
        return await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()
        self._raise_if_lost_on_exit(exc_type)


def alease(
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
    on_lost: Callable[[AsyncLease], Any] | None = None,
    on_queued: Callable[[AsyncLease], Any] | None = None,
    open_timeout: float = 10.0,
    close_timeout: float = 5.0,
    raise_if_lost: bool = True,
    websocket_options: Mapping[str, Any] | None = None,
    ssl: "ssl_module.SSLContext | None" = None,
    ca_file: str | None = None,
) -> AsyncLease:
    """Ask for lab resources; use the result in an ``async with`` block.

    ::

        async with leasehold.alease(type="switch", wait=60) as lease:
            await configure(lease.resources[0].attributes["mgmt"])

    Same arguments as :func:`leasehold.lease`; the callbacks may be coroutine
    functions, and ``websocket_options`` go to
    ``websockets.asyncio.client.connect``.
    """
    return AsyncLease(
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
