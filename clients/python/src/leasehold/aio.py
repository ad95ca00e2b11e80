"""The asyncio client: :func:`alease` and :class:`AsyncLease`."""

from __future__ import annotations

import asyncio
import inspect
from types import TracebackType
from typing import Any, Callable, Mapping, Sequence

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ._base import RELEASE_MESSAGE, LeaseBase, close_info, connect_error, log
from .errors import LeaseholdError, RequestError, WaitTimeout
from .model import Want, WaitSeconds, decode_event

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
    functions. Same attributes, same exceptions as :class:`~leasehold.Lease`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._done: asyncio.Event | None = None

    async def acquire(self) -> "AsyncLease":
        """Connect, ask, and wait until granted. Returns the lease itself."""
        if self._ws is not None:
            raise RuntimeError("this lease was acquired already; make a new one")
        self._done = asyncio.Event()
        try:
            ws = await connect(
                self.url,
                open_timeout=self.open_timeout,
                close_timeout=self.close_timeout,
                **self.websocket_options,
            )
        except Exception as exc:
            raise connect_error(self.url, exc) from exc
        self._ws = ws
        try:
            await ws.send(self._acquire_message())
            limit = self._recv_timeout()
            loop = asyncio.get_running_loop()
            deadline = None if limit is None else loop.time() + limit
            while True:
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    data = await asyncio.wait_for(ws.recv(), timeout)
                except asyncio.TimeoutError:
                    raise WaitTimeout(
                        f"no grant within wait={self.wait}s and the server did not say so; "
                        "giving up",
                        close_code=None,
                    ) from None
                except ConnectionClosed as exc:
                    raise self._waiting_close_error(*close_info(exc)) from None
                queued_before = self.position
                try:
                    granted = self._handle_waiting_event(decode_event(data))
                except RequestError as err:
                    # The server closes right after an error event; record
                    # the close code it actually used.
                    try:
                        await asyncio.wait_for(ws.recv(), self.close_timeout)
                    except ConnectionClosed as exc:
                        code, _ = close_info(exc)
                        if code is not None:
                            err.close_code = code
                    except Exception:
                        pass
                    raise
                if granted:
                    break
                if self.on_queued is not None and self.position != queued_before:
                    await _call(self.on_queued, self)
        except BaseException:
            await self._close_quietly()
            raise
        self._task = asyncio.create_task(self._watch(), name=f"leasehold-{self.id}")
        log.debug("leasehold: granted %s: %s", self.id, self.names)
        return self

    async def _watch(self) -> None:
        ws = self._ws
        assert ws is not None and self._done is not None
        code: int | None = None
        reason: str | None = None
        try:
            while True:
                data = await ws.recv()
                try:
                    event = decode_event(data)
                except LeaseholdError as exc:
                    log.warning("leasehold: %s", exc)
                    continue
                self._handle_held_event(event)
        except ConnectionClosed as exc:
            code, reason = close_info(exc)
        except asyncio.CancelledError:
            # Cancelled by release() when the server never closed.
            self._mark_ended(None, None)
            self._done.set()
            raise
        except Exception as exc:  # pragma: no cover - defensive
            log.exception("leasehold: watcher failed")
            reason = str(exc)
        ended_early = self._mark_ended(code, reason)
        self._done.set()
        if ended_early and self.on_lost is not None:
            try:
                await _call(self.on_lost, self)
            except Exception:
                log.exception("leasehold: on_lost callback failed")

    async def release(self) -> None:
        """Release the lease (tell the server, wait for its close). Idempotent."""
        ws = self._ws
        if ws is None:
            return
        with self._state_lock:
            if self._releasing:
                return
            self._releasing = True
        if self._task is not None and self._done is not None and not self._done.is_set():
            try:
                await ws.send(RELEASE_MESSAGE)
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
        if exc_type is None and self.raise_if_lost and self._error is not None:
            raise self._error


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
    on_lost: Callable[[AsyncLease], Any] | None = None,
    on_queued: Callable[[AsyncLease], Any] | None = None,
    open_timeout: float = 10.0,
    close_timeout: float = 5.0,
    raise_if_lost: bool = True,
    websocket_options: Mapping[str, Any] | None = None,
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
        on_lost=on_lost,
        on_queued=on_queued,
        open_timeout=open_timeout,
        close_timeout=close_timeout,
        raise_if_lost=raise_if_lost,
        websocket_options=websocket_options,
    )
