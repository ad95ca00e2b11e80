"""State and event handling shared by :class:`~leasehold.Lease` and
:class:`~leasehold.AsyncLease`. The subclasses add the I/O."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable, Mapping, Sequence

import websockets
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from .errors import (
    ConnectionLost,
    ConnectionRefused,
    HandshakeError,
    LeaseEnded,
    LeaseholdError,
    ProtocolError,
    Revoked,
    error_for_close,
    error_for_code,
)
from .model import (
    Resource,
    Want,
    WaitSeconds,
    acquire_message,
    build_want,
    default_holder,
    describe_want,
    lease_url,
    parse_resources,
)

log = logging.getLogger("leasehold")

#: Extra seconds the client gives the server past ``wait`` before it gives up
#: waiting by itself (the server is meant to answer ``wait_timeout`` first).
WAIT_GRACE = 10.0

RELEASE_MESSAGE = '{"op": "release"}'


def close_description(code: int | None, reason: str | None) -> str:
    """Human words for a close code as PROTOCOL.md uses them."""
    if code is None:
        return "the connection dropped without a closing handshake"
    words = {
        1000: "the server closed the connection normally",
        1001: "the server is going away (shut down or restarting)",
        1002: "WebSocket protocol error",
        1006: "the connection dropped without a closing handshake",
        1007: "invalid UTF-8 in a text message",
        1008: "protocol misuse",
        1009: "message too large",
        1011: "the connection failed (keepalive ping timed out or internal error)",
        4001: "revoked by an admin",
        4400: "bad request",
        4404: "unsatisfiable",
        4408: "waited longer than `wait`",
    }.get(code, "closed")
    text = f"{words} (close code {code}"
    if reason:
        text += f": {reason}"
    return text + ")"


def connect_error(url: str, exc: BaseException) -> LeaseholdError:
    """Map a failure to open the WebSocket to :class:`ConnectionRefused`/:class:`HandshakeError`."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return HandshakeError(url, f"it answered HTTP {status}", status=status)
    if isinstance(exc, InvalidURI):
        return ConnectionRefused(url, f"the URL is not valid ({exc})")
    if isinstance(exc, InvalidHandshake):
        return HandshakeError(url, f"the WebSocket handshake failed ({exc})")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return ConnectionRefused(url, "no answer before the open timeout")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionRefused(url, "connection refused (nothing is listening there)")
    if isinstance(exc, OSError):
        return ConnectionRefused(url, f"{exc.strerror or exc}")
    return ConnectionRefused(url, str(exc) or type(exc).__name__)


class LeaseBase:
    """What a lease knows, independent of how its I/O is done.

    Attributes:
        url: the lease endpoint this lease talks to.
        want: the request's ``want`` groups.
        holder: the holder text sent to the server.
        meta: the provenance sent to the server.
        wait: seconds to wait in the queue (``None``: forever).
        id: the lease id (``"L…"``) once the server has named it.
        position: the latest queue position (``None`` if it never queued).
        resources: the granted resources, in the order of the want groups.
    """

    def __init__(
        self,
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
        on_lost: Callable[[Any], Any] | None = None,
        on_queued: Callable[[Any], Any] | None = None,
        open_timeout: float = 10.0,
        close_timeout: float = 5.0,
        raise_if_lost: bool = True,
        websocket_options: Mapping[str, Any] | None = None,
    ) -> None:
        if wait is not None and wait < 0:
            raise ValueError("wait= must be >= 0 seconds, or None to wait forever")
        self.want: list[dict[str, Any]] = build_want(
            want, type=type, count=count, labels=labels, name=name
        )
        self.url: str = lease_url(server)
        self.wait: WaitSeconds = wait
        self.holder: str = holder if holder is not None else default_holder()
        self.meta: dict[str, str] = dict(meta or {})
        self.on_lost = on_lost
        self.on_queued = on_queued
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.raise_if_lost = raise_if_lost
        self.websocket_options: dict[str, Any] = dict(websocket_options or {})

        self.id: str | None = None
        self.position: int | None = None
        self.resources: list[Resource] = []
        self._granted = False
        self._releasing = False
        self._released = False
        self._ended = False
        self._revoke_reason: str | None = None
        self._error: LeaseEnded | None = None
        self._state_lock = threading.Lock()

    # ----------------------------------------------------------- public state

    @property
    def granted(self) -> bool:
        """True once the resources were granted (and still after the lease ended)."""
        return self._granted

    @property
    def active(self) -> bool:
        """True while the resources are this lease's: granted and not yet ended."""
        return self._granted and not self._ended

    @property
    def released(self) -> bool:
        """True once the holder released the lease (``release()`` or leaving ``with``)."""
        return self._released

    @property
    def lost(self) -> bool:
        """True if the lease ended before its holder released it, for any reason
        (an admin revoked it, the server went away, the connection dropped).
        :attr:`error` says why."""
        return self._error is not None

    @property
    def revoked(self) -> bool:
        """True if an admin revoked the lease (force-freed one of its resources)."""
        return isinstance(self._error, Revoked)

    @property
    def revoke_reason(self) -> str | None:
        """The admin's reason, when the lease was revoked."""
        return self._error.reason if isinstance(self._error, Revoked) else None

    @property
    def error(self) -> LeaseEnded | None:
        """:class:`~leasehold.Revoked` or :class:`~leasehold.ConnectionLost` if
        the lease ended early, else ``None``."""
        return self._error

    def check(self) -> None:
        """Raise :attr:`error` if the lease ended early; else do nothing.

        Call it before touching the hardware when you want a hard stop.
        """
        if self._error is not None:
            raise self._error

    @property
    def names(self) -> list[str]:
        """Names of the granted resources, in want order."""
        return [r.name for r in self.resources]

    def describe(self) -> str:
        """A short description of what this lease asks for."""
        return describe_want(self.want)

    def __repr__(self) -> str:
        if self._error is not None:
            state = "revoked" if self.revoked else "lost"
        elif self._released:
            state = "released"
        elif self._granted:
            state = "granted"
        elif self.position is not None:
            state = f"queued at {self.position}"
        else:
            state = "new"
        held = f" {self.names}" if self.resources else ""
        return f"<{type(self).__name__} {self.id or '-'} {state}{held} want={self.describe()!r}>"

    # -------------------------------------------------------- event handling

    def _acquire_message(self) -> str:
        return acquire_message(self.want, holder=self.holder, meta=self.meta, wait=self.wait)

    def _recv_timeout(self) -> float | None:
        return None if self.wait is None else float(self.wait) + WAIT_GRACE

    def _handle_waiting_event(self, event: Mapping[str, Any]) -> bool:
        """Handle one event before the grant. True when granted; raises on error.
        Calls ``on_queued`` for queue events (from the caller's thread/task)."""
        kind = event.get("event")
        if kind == "queued":
            self.id = event.get("lease") or self.id
            position = event.get("position")
            if isinstance(position, int):
                self.position = position
            return False
        if kind == "granted":
            self.id = event.get("lease") or self.id
            self.resources = parse_resources(event)
            self._granted = True
            return True
        if kind == "error":
            code = str(event.get("code") or "protocol")
            raise error_for_code(code, str(event.get("message") or ""))
        if kind == "revoked":
            raise ConnectionLost(
                f"revoked before the grant: {event.get('reason') or ''}",
                lease_id=self.id,
            )
        log.debug("leasehold: ignoring unknown event while waiting: %r", event)
        return False

    def _waiting_close_error(self, code: int | None, reason: str | None) -> LeaseholdError:
        """The error for a connection that closed before the grant."""
        if code is not None:
            err = error_for_close(code, reason or "")
            if err is not None:
                return err
            if code == 1008:
                return ProtocolError(reason or "protocol misuse", code="protocol", close_code=1008)
        return ConnectionLost(
            f"{close_description(code, reason)} before the request was granted",
            close_code=code,
            close_reason=reason,
            lease_id=self.id,
        )

    def _handle_held_event(self, event: Mapping[str, Any]) -> None:
        """Handle one event after the grant (from the watcher)."""
        kind = event.get("event")
        if kind == "revoked":
            with self._state_lock:
                if self._releasing:
                    # Released by its holder already; the revocation changes nothing.
                    return
                self._revoke_reason = str(event.get("reason") or "")
            log.debug("leasehold: lease %s on %s revoked: %s", self.id, self.names, self._revoke_reason)
        elif kind == "error":
            log.warning("leasehold: server error during lease %s: %s", self.id, event)
        else:
            log.debug("leasehold: ignoring event during lease %s: %r", self.id, event)

    def _mark_ended(self, code: int | None, reason: str | None) -> bool:
        """Record that the connection of a granted lease closed.

        Returns True when the lease ended early (the caller then fires
        ``on_lost``), False when it was released as asked.
        """
        with self._state_lock:
            if self._ended:
                return False
            self._ended = True
            if self._revoke_reason is not None or (code == 4001 and not self._releasing):
                self._error = Revoked(
                    self._revoke_reason if self._revoke_reason is not None else (reason or ""),
                    lease_id=self.id,
                    resources=self.resources,
                )
            elif self._releasing:
                self._released = True
                return False
            else:
                self._error = ConnectionLost(
                    close_description(code, reason),
                    close_code=code,
                    close_reason=reason,
                    lease_id=self.id,
                    resources=self.resources,
                )
        log.warning("leasehold: %s", self._error)
        return True


def close_info(exc: websockets.ConnectionClosed) -> tuple[int | None, str | None]:
    """(code, reason) the peer closed with, or (None, None) if it sent no close."""
    if exc.rcvd is None:
        return None, None
    return exc.rcvd.code, exc.rcvd.reason
