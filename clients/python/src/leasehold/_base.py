"""The sans-I/O core shared by :class:`~leasehold.Lease` and
:class:`~leasehold.AsyncLease`.

Every protocol decision lives here: the messages sent, what each server event
and close code means, the lease's state (waiting, granted, ended), which
exception a failure becomes, and the checks on the options. The conversation
with the server is written once, as generators ("steps") that yield a request
for each piece of I/O they need: :class:`Send`, :class:`Receive`,
:class:`Connect`, :class:`Sleep`, :class:`Call` and :data:`ENDED`. client.py
and aio.py run the steps, doing that I/O blocking or with asyncio, and hand
back each outcome: a result with ``send()``, a failure (``ConnectionClosed``,
a timeout, a refused connection, a callback's exception) with ``throw()``, so
that the steps handle it where they asked.

That includes resuming (PROTOCOL.md, "Surviving restarts and network blips"):
when the server restarts (close 1012), or the connection of a lease that
asked for a ``grace`` drops, the steps reconnect with backoff and send
``resume`` with the lease's token, while the lease keeps counting as held.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl as ssl_module
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Mapping, Sequence, Union

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import Frame

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
    DEFAULT_RESUME_WINDOW,
    DEFAULT_REVOKE_WAIT,
    Resource,
    Want,
    WaitSeconds,
    acquire_message,
    build_want,
    check_seconds,
    decode_event,
    default_holder,
    describe_want,
    lease_url,
    parse_resources,
    redact,
    resume_message,
)

log = logging.getLogger("leasehold")


class _HideResumeTokens(logging.Filter):
    """websockets logs every frame at DEBUG level; the frames that carry a
    resume token (``granted``, ``queued``, ``resume``) are logged without
    their contents."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, Frame) for a in record.args):
            record.args = tuple(_shown_frame(a) for a in record.args)
        return True


def _shown_frame(arg: Any) -> Any:
    if isinstance(arg, Frame) and (b'"resume"' in arg.data or b'"token"' in arg.data):
        return f"{arg.opcode.name} (leasehold message with a resume token, not shown) [{len(arg.data)} bytes]"
    return arg


#: The logger the client's WebSocket connections log to (unless
#: ``websocket_options`` names another): websockets' own messages, with
#: resume tokens hidden.
websocket_log = logging.getLogger("leasehold.websockets")
websocket_log.addFilter(_HideResumeTokens())

#: Extra seconds the client gives the server past ``wait`` before it gives up
#: waiting by itself (the server is meant to answer ``wait_timeout`` first).
WAIT_GRACE = 10.0

RELEASE_MESSAGE = '{"op": "release"}'

#: Backoff between attempts to resume: the first pause, doubling up to the
#: last, each one jittered (50-100 % of it) so that the clients of a restarted
#: server do not all knock at once.
RESUME_BACKOFF_FIRST = 0.1
RESUME_BACKOFF_MAX = 2.0
#: Shortest connect or answer timeout of an attempt near the window's end.
RESUME_MIN_TIMEOUT = 0.5


# ---------------------------------------------- what the steps ask of the I/O


@dataclass(frozen=True)
class Send:
    """Send one text message to the server."""

    # Kept out of repr: a resume message carries the lease's token.
    text: str = field(repr=False)


@dataclass(frozen=True)
class Receive:
    """Receive one message (``str`` or ``bytes``), waiting ``timeout``
    seconds at most (``None``: as long as it takes)."""

    timeout: float | None


@dataclass(frozen=True)
class Connect:
    """Open a new connection to the lease endpoint in place of the current
    one (which is closed first), waiting ``timeout`` seconds at most; a
    failure is thrown back as the exception the connect raised."""

    timeout: float


@dataclass(frozen=True)
class Sleep:
    """Pause ``seconds``, less if the holder releases the lease meanwhile."""

    seconds: float


@dataclass(frozen=True)
class Call:
    """Call a user callback with the lease; under asyncio, await what it
    returns if that is awaitable."""

    callback: Callable[[Any], Any]


class _Ended:
    """See :data:`ENDED`."""


#: The lease has ended: wake whoever waits for that (``wait_lost()``, ``release()``).
ENDED = _Ended()

Request = Union[Send, Receive, Connect, Sleep, Call, _Ended]

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
        1012: "the server is restarting",
        4001: "revoked by an admin",
        4002: "the lease was resumed on another connection",
        4400: "bad request",
        4404: "unsatisfiable",
        4408: "waited longer than `wait`",
        4410: "the server refused to resume the lease",
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


def _seconds(value: float) -> str:
    """``60s``, ``2.5s``: seconds as people write them."""
    return f"{value:g}s"


class _ResumeFailed(Exception):
    """Resuming gave up (refused, or the window ran out): the lease is lost."""

    def __init__(self, detail: str, close_code: int | None, close_reason: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.close_code = close_code
        self.close_reason = close_reason


class _TryAgain(Exception):
    """One resume attempt failed in a way worth another attempt."""


class LeaseBase:
    """What a lease knows, independent of how its I/O is done.

    Attributes:
        url: the lease endpoint this lease talks to.
        want: the request's ``want`` groups.
        holder: the holder text sent to the server.
        meta: the provenance sent to the server.
        wait: seconds to wait in the queue (``None``: forever).
        grace: seconds the server keeps the lease after its connection drops
            without a release, for the client to resume it (``None``: not asked).
        revoke_wait: seconds the server keeps a revoked lease's resources out
            of everyone's reach until this client closed (``None``/0: not asked).
        max_hold: the longest the lease may be held, in seconds (``None``: not asked).
        resume_window: seconds to keep trying to resume after a server restart.
        id: the lease id (``"L…"``) once the server has named it.
        position: the latest queue position (``None`` if it never queued).
        resources: the granted resources, in the order of the want groups.
        expires: when the server revokes the lease for its time limit
            (RFC 3339, from ``granted``), or ``None`` when no limit applies.
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
        grace: float | None = None,
        revoke_wait: float | None = DEFAULT_REVOKE_WAIT,
        max_hold: float | None = None,
        resume_window: float | None = DEFAULT_RESUME_WINDOW,
        on_lost: Callable[[Any], Any] | None = None,
        on_queued: Callable[[Any], Any] | None = None,
        open_timeout: float = 10.0,
        close_timeout: float = 5.0,
        raise_if_lost: bool = True,
        websocket_options: Mapping[str, Any] | None = None,
        ssl: ssl_module.SSLContext | None = None,
        ca_file: str | None = None,
    ) -> None:
        if wait is not None and wait < 0:
            raise ValueError("wait= must be >= 0 seconds, or None to wait forever")
        check_seconds("grace", grace, none_means=", or None for no grace")
        check_seconds("revoke_wait", revoke_wait, none_means=", or None (or 0) not to ask for one")
        check_seconds("max_hold", max_hold, positive=True, none_means=", or None for no limit")
        check_seconds("resume_window", resume_window, none_means=", or None (or 0) not to resume")
        self.want: list[dict[str, Any]] = build_want(
            want, type=type, count=count, labels=labels, name=name
        )
        self.url: str = lease_url(server)
        self.wait: WaitSeconds = wait
        self.holder: str = holder if holder is not None else default_holder()
        self.meta: dict[str, str] = dict(meta or {})
        self.grace: float | None = grace
        self.revoke_wait: float | None = revoke_wait
        self.max_hold: float | None = max_hold
        self.resume_window: float | None = resume_window
        self.on_lost = on_lost
        self.on_queued = on_queued
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.raise_if_lost = raise_if_lost
        self.websocket_options: dict[str, Any] = dict(websocket_options or {})
        self.websocket_options.setdefault("logger", websocket_log)
        if ssl is not None and ca_file is not None:
            raise ValueError("give ssl= or ca_file=, not both")
        if self.url.startswith("wss://") and "ssl" not in self.websocket_options:
            self.websocket_options["ssl"] = tls_context(ssl, ca_file)
        elif not self.url.startswith("wss://") and (ssl is not None or ca_file is not None):
            raise ValueError(f"ssl= and ca_file= are for wss:// (or https://) servers, not {self.url}")
        # A server started with --lease-token-file wants one of its tokens.
        token = os.environ.get("LEASEHOLD_LEASE_TOKEN", "").strip()
        if token:
            headers = dict(self.websocket_options.get("additional_headers") or {})
            headers.setdefault("Authorization", f"Bearer {token}")
            self.websocket_options["additional_headers"] = headers

        self.id: str | None = None
        self.position: int | None = None
        self.resources: list[Resource] = []
        self.expires: str | None = None
        # The resume token (PROTOCOL.md): whoever has it can take the lease
        # over, so it is never logged, shown in repr or put in a message.
        self._resume_token: str | None = None
        self._resuming = False
        self._release_started: float | None = None
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
    def resuming(self) -> bool:
        """True while the client reconnects to resume the lease (after a server
        restart, or a dropped connection within ``grace``). The lease still
        counts as held meanwhile: :attr:`active` stays true."""
        return self._resuming

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
        elif self._resuming:
            state = "resuming"
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
        the server's answer (or its silence) means otherwise. A waiter whose
        connection the server closed for a restart (or that dropped, with a
        ``grace``) resumes its place in the queue."""
        yield Send(acquire_message(
            self.want, holder=self.holder, meta=self.meta, wait=self.wait,
            grace=self.grace, revoke_wait=self.revoke_wait, max_hold=self.max_hold,
        ))
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
                code, reason = close_info(exc)
                window = self._resume_window_for(code)
                if window <= 0:
                    raise self._waiting_close_error(code, reason) from None
                started = time.monotonic()
                try:
                    data, _ = yield from self._resume_steps(code, reason, window, held=False)
                except _ResumeFailed as failed:
                    raise ConnectionLost(
                        f"{failed.detail}, before the request was granted",
                        close_code=failed.close_code,
                        close_reason=failed.close_reason,
                        lease_id=self.id,
                    ) from None
                if deadline is not None:  # the time spent away does not count
                    deadline += time.monotonic() - started
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
        connection closes for good; then record how the lease ended, wake the
        waiters and call ``on_lost`` if it ended early.

        A revocation ends the lease at once (waiters woken, ``on_lost``
        called) but leaves the connection open: the server keeps the
        resources out of everyone's reach until the holder closes it (it
        asked for ``revoke_wait``), which it does once it has stopped using
        them (``release()``, leaving ``with``). A restart of the server, or
        a drop within ``grace``, is resumed on a new connection.
        """
        code: int | None = None
        reason: str | None = None
        failed: _ResumeFailed | None = None
        while True:
            try:
                while True:
                    data = yield Receive(None)
                    try:
                        event = decode_event(data)
                    except LeaseholdError as exc:
                        log.warning("leasehold: %s", exc)
                        continue
                    if self._handle_held_event(event):
                        yield ENDED
                        yield from self._on_lost_steps()
            except ConnectionClosed as exc:
                code, reason = close_info(exc)
            except Exception as exc:  # pragma: no cover - defensive
                log.exception("leasehold: watcher failed")
                reason = str(exc)
                break
            window = self._resume_window_for(code)
            if window <= 0:
                break
            try:
                event, release_now = yield from self._resume_steps(code, reason, window, held=True)
            except _ResumeFailed as exc:
                failed = exc
                break
            self._apply_grant(decode_event(event))
            if release_now:
                # Released while the client was away: release it now.
                try:
                    yield Send(RELEASE_MESSAGE)
                except ConnectionClosed:
                    pass  # seen by the next Receive
        ended_early = self._mark_ended(code, reason, failed)
        yield ENDED
        if ended_early:
            yield from self._on_lost_steps()

    def _on_lost_steps(self) -> Steps:
        """Call ``on_lost``, logging what it raises."""
        if self.on_lost is None:
            return
        try:
            yield Call(self.on_lost)
        except Exception:
            log.exception("leasehold: on_lost callback failed")

    def _resume_steps(
        self, code: int | None, reason: str | None, window: float, *, held: bool
    ) -> Generator[Request, Any, tuple[str, bool]]:
        """Reconnect with backoff and resume the lease, for ``window`` seconds
        at most (less once the holder released it).

        Returns the server's answer (a ``granted`` event, or ``queued`` for a
        waiter) as received, and whether the holder released the lease
        meanwhile (then the caller releases it on the new connection).
        Raises :class:`_ResumeFailed` when resuming is refused or the window
        runs out.
        """
        assert self.id is not None and self._resume_token is not None
        lost_how = close_description(code, reason)
        started = time.monotonic()
        what = f" on {', '.join(self.names)}" if held and self.resources else " (its place in the queue)"
        log.warning(
            "leasehold: connection lost (%s); resuming lease %s%s, for up to %s",
            lost_how, self.id, what, _seconds(window),
        )
        with self._state_lock:
            self._resuming = True
        delay = RESUME_BACKOFF_FIRST
        last = lost_how
        attempts = 0
        try:
            while True:
                remaining = self._resume_deadline(started, window) - time.monotonic()
                if attempts:
                    if remaining <= 0:
                        break
                    pause = min(remaining, delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, RESUME_BACKOFF_MAX)
                    yield Sleep(pause)
                    remaining = self._resume_deadline(started, window) - time.monotonic()
                    if remaining <= 0:
                        break
                attempts += 1
                try:
                    yield Connect(min(self.open_timeout, max(remaining, RESUME_MIN_TIMEOUT)))
                except Exception as exc:
                    last = connect_error(self.url, exc).detail
                    log.debug("leasehold: resuming %s: %s", self.id, last)
                    continue
                try:
                    yield Send(resume_message(self.id, self._resume_token))
                    data = yield from self._resume_answer(
                        lost_how, max(remaining, RESUME_MIN_TIMEOUT), held=held
                    )
                except _TryAgain as exc:
                    last = str(exc)
                    log.debug("leasehold: resuming %s: %s", self.id, last)
                    continue
                except ConnectionClosed as exc:  # the Send failed
                    last = close_description(*close_info(exc))
                    continue
                with self._state_lock:
                    self._resuming = False
                    release_now = self._releasing
                log.warning(
                    "leasehold: resumed lease %s%s after %.1fs",
                    self.id, what, time.monotonic() - started,
                )
                return data, release_now
        finally:
            with self._state_lock:
                self._resuming = False
        if self._releasing:
            detail = f"{lost_how}; released before it could be resumed (last attempt: {last})"
        else:
            detail = f"{lost_how}, and it was not resumed within {_seconds(window)} (last attempt: {last})"
        raise _ResumeFailed(detail, code, reason)

    def _resume_answer(
        self, lost_how: str, timeout: float, *, held: bool
    ) -> Generator[Request, Any, str]:
        """Read the answer to a ``resume``: the event, as received, when it
        resumed; raises :class:`_TryAgain` or :class:`_ResumeFailed`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                data = yield Receive(max(0.0, deadline - time.monotonic()))
            except (TimeoutError, asyncio.TimeoutError):
                raise _TryAgain(f"no answer to the resume within {_seconds(timeout)}") from None
            except ConnectionClosed as exc:
                got, why = close_info(exc)
                if got == 4410:
                    raise _ResumeFailed(
                        f"{lost_how}; the server refused to resume the lease ({why or 'resume_refused'})",
                        4410, why,
                    ) from None
                if got in (4400, 4404):
                    raise _ResumeFailed(f"{lost_how}; resuming failed: {close_description(got, why)}",
                                        got, why) from None
                raise _TryAgain(close_description(got, why)) from None
            try:
                event = decode_event(data)
            except LeaseholdError as exc:
                raise _TryAgain(str(exc)) from None
            kind = event.get("event")
            if kind == "granted" or (kind == "queued" and not held):
                if event.get("lease") not in (None, self.id):
                    raise _ResumeFailed(
                        f"{lost_how}; the server answered the resume for another lease "
                        f"({event.get('lease')!r})", None,
                    )
                if kind == "granted":
                    try:
                        resources = parse_resources(event)
                    except LeaseholdError as exc:
                        raise _ResumeFailed(f"{lost_how}; the answer to the resume: {exc}", None) from None
                    if held and resources != self.resources:
                        log.warning(
                            "leasehold: lease %s was resumed with other resources or epochs: %s, was %s",
                            self.id, resources, self.resources,
                        )
                return data  # type: ignore[no-any-return]
            if kind == "error":
                error = str(event.get("code") or "protocol")
                message = str(event.get("message") or "")
                if error == "resume_refused":
                    raise _ResumeFailed(
                        f"{lost_how}; the server refused to resume the lease "
                        f"(resume_refused: {message or 'no reason given'})", 4410, message,
                    )
                raise _ResumeFailed(
                    f"{lost_how}; resuming failed ({error}: {message})",
                    error_for_code(error, message).close_code, message,
                )
            if kind in ("queued", "revoked"):
                raise _ResumeFailed(
                    f"{lost_how}; the server answered the resume with {redact(event)!r}", None
                )
            log.debug("leasehold: ignoring event while resuming %s: %r", self.id, redact(event))

    def _resume_window_for(self, code: int | None) -> float:
        """Seconds to try resuming after the connection closed with ``code``
        (``None``: dropped without a close frame); 0 when it is not to be
        resumed: the server does not keep the lease, or the lease has ended."""
        if self.id is None or not self._resume_token:
            return 0.0
        with self._state_lock:
            if self._ended or (self._releasing and not self._granted):
                return 0.0
        grace = float(self.grace or 0)
        if code == 1012:
            # The server keeps it for its resume grace, or longer for a
            # lease that asked for more grace.
            return max(float(self.resume_window or 0), grace)
        if code is None:
            # Dropped: the server freed it at once unless it asked for grace.
            return grace
        return 0.0

    def _resume_deadline(self, started: float, window: float) -> float:
        """When resuming gives up: the window's end, or sooner once the holder
        released the lease (then it tries only for ``close_timeout``)."""
        deadline = started + window
        if self._release_started is not None:
            deadline = min(deadline, self._release_started + self.close_timeout)
        return deadline

    # ------------------------------------------------ the decisions they make

    def _note_token(self, event: Mapping[str, Any]) -> None:
        token = event.get("resume")
        if isinstance(token, str) and token:
            self._resume_token = token

    def _apply_grant(self, event: Mapping[str, Any]) -> None:
        """Take in a ``granted`` event (also the answer to a resume)."""
        self.id = event.get("lease") or self.id
        self.resources = parse_resources(event)
        expires = event.get("expires")
        self.expires = expires if isinstance(expires, str) else None
        self._note_token(event)
        self._granted = True

    def _handle_waiting_event(self, event: Mapping[str, Any]) -> bool:
        """Handle one event before the grant. True when granted; raises on error."""
        kind = event.get("event")
        if kind == "queued":
            self.id = event.get("lease") or self.id
            self._note_token(event)
            position = event.get("position")
            if isinstance(position, int):
                self.position = position
            return False
        if kind == "granted":
            self._apply_grant(event)
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
        log.debug("leasehold: ignoring unknown event while waiting: %r", redact(event))
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

    def _handle_held_event(self, event: Mapping[str, Any]) -> bool:
        """Handle one event after the grant (from the watcher). True when it
        ended the lease (a revocation): then ``on_lost`` is due."""
        kind = event.get("event")
        if kind == "revoked":
            return self._mark_revoked(str(event.get("reason") or ""))
        if kind == "error":
            log.warning("leasehold: server error during lease %s: %s", self.id, redact(event))
        else:
            log.debug("leasehold: ignoring event during lease %s: %r", self.id, redact(event))
        return False

    def _mark_revoked(self, reason: str) -> bool:
        """Record a revocation: the lease has ended, though its connection
        stays open until the holder closes it. False if it had ended already,
        or its holder was releasing it (then the revocation changes nothing)."""
        with self._state_lock:
            if self._ended or self._releasing:
                return False
            self._ended = True
            self._revoke_reason = reason
            self._error = Revoked(reason, lease_id=self.id, resources=self.resources)
        log.warning("leasehold: %s", self._error)
        return True

    def _mark_ended(
        self, code: int | None, reason: str | None, failed: _ResumeFailed | None = None
    ) -> bool:
        """Record that the connection of a granted lease closed (for good:
        ``failed`` says why resuming it failed, if it was tried).

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
                if failed is not None:
                    log.warning(
                        "leasehold: lease %s released while the server was unreachable (%s); "
                        "the server frees it when its resume grace runs out", self.id, failed.detail,
                    )
                return False
            elif failed is not None:
                self._error = ConnectionLost(
                    failed.detail,
                    close_code=failed.close_code,
                    close_reason=failed.close_reason,
                    lease_id=self.id,
                    resources=self.resources,
                )
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

    def _begin_release(self) -> bool | None:
        """Note that the holder is releasing the lease: ``None`` if it did so
        already; else whether the caller should send ``release`` on the
        connection now (False while the client is resuming the lease: the
        steps release it once resumed). From now on the server's close is
        the release, not a loss."""
        with self._state_lock:
            if self._releasing:
                return None
            self._releasing = True
            self._release_started = time.monotonic()
            return not self._resuming

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


def tls_context(context: ssl_module.SSLContext | None, ca_file: str | None) -> ssl_module.SSLContext:
    """The TLS context for a wss:// server: ``context`` as given, else one that trusts
    ``ca_file`` (or ``LEASEHOLD_CA_FILE``), else the system's trust store. A client
    certificate for mutual TLS is loaded into a context passed as ``ssl=``
    (``context.load_cert_chain(cert, key)``)."""
    if context is not None:
        return context
    path = ca_file or os.environ.get("LEASEHOLD_CA_FILE", "").strip() or None
    if path is not None and not os.path.isfile(path):
        raise ValueError(f"CA file {path!r} does not exist (ca_file= or LEASEHOLD_CA_FILE)")
    return ssl_module.create_default_context(cafile=path)
