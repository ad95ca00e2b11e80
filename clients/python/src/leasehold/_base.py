"""The sans-I/O core shared by :class:`~leasehold.Lease` and
:class:`~leasehold.AsyncLease`.

Every protocol decision lives here: the messages sent, what each server event
and close code means, the lease's state (waiting, granted, ended), which
exception a failure becomes, and the checks on the options. The conversation
with the server is written once, as generators ("steps") that yield a request
for each piece of I/O they need: :class:`Send`, :class:`Receive`,
:class:`Call` and :data:`ENDED`. client.py and aio.py run the steps, doing
that I/O blocking or with asyncio, and hand back each outcome: a result with
``send()``, a failure (``ConnectionClosed``, a timeout, a callback's
exception) with ``throw()``, so that the steps handle it where they asked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, Mapping, Sequence, Union

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from .errors import (
    ConnectionLost,
    ConnectionRefused,
    HandshakeError,
    LeaseEnded,
    LeaseholdError,
    ProtocolError,
    RequestError,
    Revoked,
    WaitTimeout,
    error_for_close,
    error_for_code,
)
from .model import (
    Resource,
    Want,
    WaitSeconds,
    acquire_message,
    build_want,
    decode_event,
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


# ---------------------------------------------- what the steps ask of the I/O


@dataclass(frozen=True)
class Send:
    """Send one text message to the server."""

    text: str


@dataclass(frozen=True)
class Receive:
    """Receive one message (``str`` or ``bytes``), waiting ``timeout``
    seconds at most (``None``: as long as it takes)."""

    timeout: float | None


@dataclass(frozen=True)
class Call:
    """Call a user callback with the lease; under asyncio, await what it
    returns if that is awaitable."""

    callback: Callable[[Any], Any]


class _Ended:
    """See :data:`ENDED`."""


#: The lease has ended: wake whoever waits for that (``wait_lost()``, ``release()``).
ENDED = _Ended()

Request = Union[Send, Receive, Call, _Ended]

#: A conversation with the server: yields requests, is sent their results.
Steps = Generator[Request, Any, None]


def next_request(steps: Steps, result: Any, failure: BaseException | None) -> Request | None:
    """Hand ``steps`` the outcome of its last request (``failure`` if it
    raised, else ``result``); return its next request, or None when it is done.

    Exceptions the steps do not handle propagate to the caller.
    """
    try:
        if failure is not None:
            return steps.throw(failure)
        return steps.send(result)
    except StopIteration:
        return None


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
        if status == 401:
            return HandshakeError(
                url,
                "it leases only to holders of a lease token (HTTP 401); "
                "set LEASEHOLD_LEASE_TOKEN to one",
                status=status,
            )
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
        # A server started with --lease-token-file wants one of its tokens.
        token = os.environ.get("LEASEHOLD_LEASE_TOKEN", "").strip()
        if token:
            headers = dict(self.websocket_options.get("additional_headers") or {})
            headers.setdefault("Authorization", f"Bearer {token}")
            self.websocket_options["additional_headers"] = headers

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
        # The connection once it is open; the subclass owns it and its I/O.
        self._ws: Any = None

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

    # --------------------------------------------- the conversation, as steps

    def _waiting_steps(self) -> Steps:
        """Ask, then wait until granted: returns once granted, raises what
        the server's answer (or its silence) means otherwise."""
        yield Send(acquire_message(self.want, holder=self.holder, meta=self.meta, wait=self.wait))
        # Past `wait` (and a grace) the client gives up by itself; the
        # server is meant to answer wait_timeout first.
        deadline = None if self.wait is None else time.monotonic() + float(self.wait) + WAIT_GRACE
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                data = yield Receive(timeout)
            except (TimeoutError, asyncio.TimeoutError):
                gave_up = WaitTimeout(
                    f"no grant within wait={self.wait}s and the server did not say so; "
                    f"gave up waiting for {self.describe()}"
                )
                gave_up.close_code = None  # the client decided: no close code came
                raise gave_up from None
            except ConnectionClosed as exc:
                raise self._waiting_close_error(*close_info(exc)) from None
            queued_before = self.position
            try:
                granted = self._handle_waiting_event(decode_event(data))
            except RequestError as err:
                # The server closes right after an error event; record the
                # close code it actually used.
                try:
                    yield Receive(self.close_timeout)
                except ConnectionClosed as exc:
                    code, _ = close_info(exc)
                    if code is not None:
                        err.close_code = code
                except Exception:
                    pass
                raise
            if granted:
                log.debug("leasehold: granted %s: %s", self.id, self.names)
                return
            if self.on_queued is not None and self.position != queued_before:
                yield Call(self.on_queued)

    def _holding_steps(self) -> Steps:
        """Read the server's events while the lease is held, until the
        connection closes; then record how the lease ended, wake the waiters
        and call ``on_lost`` if it ended early."""
        code: int | None = None
        reason: str | None = None
        try:
            while True:
                data = yield Receive(None)
                try:
                    event = decode_event(data)
                except LeaseholdError as exc:
                    log.warning("leasehold: %s", exc)
                    continue
                self._handle_held_event(event)
        except ConnectionClosed as exc:
            code, reason = close_info(exc)
        except Exception as exc:  # pragma: no cover - defensive
            log.exception("leasehold: watcher failed")
            reason = str(exc)
        ended_early = self._mark_ended(code, reason)
        yield ENDED
        if ended_early and self.on_lost is not None:
            try:
                yield Call(self.on_lost)
            except Exception:
                log.exception("leasehold: on_lost callback failed")

    # ------------------------------------------------ the decisions they make

    def _handle_waiting_event(self, event: Mapping[str, Any]) -> bool:
        """Handle one event before the grant. True when granted; raises on error."""
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
            message = str(event.get("message") or "")
            if code == "wait_timeout":
                # The server says how long and who held it; say what was asked, and at what wait.
                where = f", last at position {self.position} in the queue" if self.position else ""
                message = f"{message.rstrip('.')}; asked for {self.describe()} with wait={self.wait}{where}"
            raise error_for_code(code, message)
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

        Returns True when the lease ended early (``on_lost`` is due), False
        when it was released as asked or had ended already.
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

    # ------------------------------------------------ rules the drivers apply

    def _check_unused(self) -> None:
        """A lease object serves one acquire: its connection is the lease."""
        if self._ws is not None:
            raise RuntimeError("this lease was acquired already; make a new one")

    def _begin_release(self) -> bool:
        """Note that the holder is releasing the lease; False if it did so
        already. From now on the server's close is the release, not a loss."""
        with self._state_lock:
            if self._releasing:
                return False
            self._releasing = True
            return True

    def _raise_if_lost_on_exit(self, exc_type: type[BaseException] | None) -> None:
        """Leaving ``with``: raise :attr:`error` if the lease ended early and
        the block itself raised nothing (unless ``raise_if_lost=False``)."""
        if exc_type is None and self.raise_if_lost and self._error is not None:
            raise self._error


def close_info(exc: ConnectionClosed) -> tuple[int | None, str | None]:
    """(code, reason) the peer closed with, or (None, None) if it sent no close."""
    if exc.rcvd is None:
        return None, None
    return exc.rcvd.code, exc.rcvd.reason
