"""Exceptions raised by the leasehold client.

Every exception derives from :class:`LeaseholdError`. The ones that answer a
request carry the protocol's error ``code`` (``"unsatisfiable"``,
``"wait_timeout"``, ...) and the WebSocket ``close_code`` the server closed
with (4404, 4408, ...), as PROTOCOL.md defines them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .model import Resource

__all__ = [
    "LeaseholdError",
    "ConnectionRefused",
    "HandshakeError",
    "RequestError",
    "BadRequest",
    "Unsatisfiable",
    "WaitTimeout",
    "ProtocolError",
    "LeaseEnded",
    "Revoked",
    "ConnectionLost",
    "error_for_code",
    "error_for_close",
]


class LeaseholdError(Exception):
    """Base class of every error this package raises."""


class ConnectionRefused(LeaseholdError):
    """The leasehold server could not be reached at all.

    Raised when the TCP connection is refused or times out, or the host name
    does not resolve. The message names the URL and says how to point the
    client at the right server.
    """

    def __init__(self, url: str, detail: str) -> None:
        self.url = url
        self.detail = detail
        super().__init__(
            f"cannot reach the leasehold server at {url}: {detail}. "
            "Check that the server is running there, or point the client at "
            "the right one (the `server=` argument, the LEASEHOLD_URL "
            "environment variable, or pytest's --leasehold-url)."
        )


class HandshakeError(ConnectionRefused):
    """Something answered at the URL but refused the WebSocket upgrade.

    ``status`` is the HTTP status it answered with (``None`` if the answer
    was not HTTP at all).
    """

    def __init__(self, url: str, detail: str, status: int | None = None) -> None:
        self.status = status
        LeaseholdError.__init__(
            self,
            f"the server at {url} refused the lease WebSocket: {detail}. "
            "Is that a leasehold server, and is the URL its root "
            "(for example ws://lab-host:7400)? Point the client at it with the "
            "`server=` argument, LEASEHOLD_URL, or pytest's --leasehold-url.",
        )
        self.url = url
        self.detail = detail


class RequestError(LeaseholdError):
    """The server turned the acquire request down.

    Attributes:
        code: the protocol's error code (``"bad_request"``, ...).
        close_code: the WebSocket close code that goes with it, or ``None``
            when the error was decided by the client itself.
        message: the server's human-readable explanation.
    """

    #: Protocol error code this class stands for.
    CODE: str = ""
    #: WebSocket close code the server closes with for this error.
    CLOSE_CODE: int | None = None
    #: What to do about it, said after the server's message.
    HINT: str = ""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        close_code: int | None = None,
    ) -> None:
        self.message = message
        self.code = code if code is not None else self.CODE
        self.close_code = close_code if close_code is not None else self.CLOSE_CODE
        text = f"{self.code}: {message}" if self.code else message
        if self.HINT:
            text = f"{text.rstrip('.')}. {self.HINT}"
        super().__init__(text)


class BadRequest(RequestError):
    """The request broke the protocol's rules (``bad_request``, close 4400)."""

    CODE = "bad_request"
    CLOSE_CODE = 4400
    HINT = ("Fix the request: the want groups (name=, or type= with count= and labels=), "
            "holder= and meta= as PROTOCOL.md describes them.")


class Unsatisfiable(RequestError):
    """The inventory can never satisfy the request (``unsatisfiable``, close 4404).

    An unknown name or type, more resources than the inventory has, or the
    same name twice.
    """

    CODE = "unsatisfiable"
    CLOSE_CODE = 4404
    HINT = ("Check the names, types and labels against the inventory "
            "(the server's status page, or `leasehold status`).")


class WaitTimeout(RequestError):
    """The request waited longer than ``wait`` (``wait_timeout``, close 4408).

    Also raised for ``wait=0`` when the resources are not free at once. The
    message says how long it waited, what it asked for and who held it.
    """

    CODE = "wait_timeout"
    CLOSE_CODE = 4408
    HINT = ("Wait longer with wait=SECONDS (pytest: --leasehold-wait), or wait=None "
            "to wait as long as it takes; the status page shows who holds what.")


class ProtocolError(RequestError):
    """The server reported a protocol fault (``protocol``, ``request_timeout``)
    or answered something this client does not understand."""

    CODE = "protocol"
    CLOSE_CODE = 1008
    HINT = "Is the URL a leasehold server of protocol version 1, and this client up to date?"


class LeaseEnded(LeaseholdError):
    """A granted lease ended before its holder released it.

    Attributes:
        lease_id: the lease's id (``"L…"``).
        resources: the resources the lease held.
    """

    def __init__(
        self,
        message: str,
        *,
        lease_id: str | None = None,
        resources: Sequence["Resource"] = (),
    ) -> None:
        self.lease_id = lease_id
        self.resources = tuple(resources)
        super().__init__(message)

    @property
    def resource_names(self) -> list[str]:
        """Names of the resources the lease held."""
        return [r.name for r in self.resources]


class Revoked(LeaseEnded):
    """An admin force-freed a resource of the lease (close 4001).

    ``reason`` is the admin's reason, as the server sent it.
    """

    close_code = 4001

    def __init__(
        self,
        reason: str,
        *,
        lease_id: str | None = None,
        resources: Sequence["Resource"] = (),
    ) -> None:
        self.reason = reason
        names = ", ".join(r.name for r in resources) or "its resources"
        super().__init__(
            f"lease {lease_id or '?'} on {names} was revoked by an admin: "
            f"{(reason or '(no reason given)').rstrip('.')}. "
            "Ask the lab's admins before taking it again.",
            lease_id=lease_id,
            resources=resources,
        )


class ConnectionLost(LeaseEnded):
    """The connection, and with it the lease, ended unexpectedly.

    The server went away, the network dropped, or the server closed the
    connection for a reason other than a release or a revocation.
    ``close_code``/``close_reason`` say what the server sent, if anything
    (``None`` when the connection dropped without a closing handshake).
    Raised during the wait as well, before anything was granted.
    """

    def __init__(
        self,
        detail: str,
        *,
        close_code: int | None = None,
        close_reason: str | None = None,
        lease_id: str | None = None,
        resources: Sequence["Resource"] = (),
    ) -> None:
        self.detail = detail
        self.close_code = close_code
        self.close_reason = close_reason
        if resources:
            names = ", ".join(r.name for r in resources)
            message = f"lease {lease_id or '?'} on {names} was lost: {detail}"
        else:
            message = f"connection to the leasehold server lost: {detail}"
        message = (f"{message.rstrip('.')}. Check that the server is up (its /healthz, or "
                   "`leasehold status`), then ask again.")
        super().__init__(message, lease_id=lease_id, resources=resources)


_BY_CODE: dict[str, type[RequestError]] = {
    "bad_request": BadRequest,
    "unsatisfiable": Unsatisfiable,
    "wait_timeout": WaitTimeout,
    "protocol": ProtocolError,
    "request_timeout": ProtocolError,
}

_BY_CLOSE: dict[int, type[RequestError]] = {
    4400: BadRequest,
    4404: Unsatisfiable,
    4408: WaitTimeout,
}


def error_for_code(
    code: str, message: str, close_code: int | None = None
) -> RequestError:
    """Build the exception for an ``error`` event's ``code``."""
    cls = _BY_CODE.get(code, ProtocolError)
    if close_code is None and cls is ProtocolError:
        close_code = 1008
    return cls(message, code=code, close_code=close_code)


def error_for_close(code: int, reason: str) -> RequestError | None:
    """Build the exception for a close code that carries a request error
    (4400, 4404, 4408) when no ``error`` event came before it; else ``None``."""
    cls = _BY_CLOSE.get(code)
    if cls is None:
        return None
    return cls(reason or f"the server closed the connection with {code}")
