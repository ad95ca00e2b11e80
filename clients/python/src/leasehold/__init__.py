"""leasehold: take a lease on shared lab hardware from a leasehold server.

The connection is the lease: resources are held while the WebSocket stays
open and are released when it closes, whatever the reason.

Blocking::

    import leasehold

    with leasehold.lease(type="array", labels={"proto": "fc"}, wait=600) as lease:
        print(lease.id, lease.resources[0].name, lease.resources[0].attributes["mgmt"])

Asyncio::

    async with leasehold.alease(type="switch") as lease:
        ...

pytest: the ``lease`` fixture factory, the ``leased`` fixture and the
``@pytest.mark.lease(...)`` marker come with the package (see README).
"""

import logging

from .aio import AsyncLease, alease
from .client import Lease, lease
from .errors import (
    BadRequest,
    ConnectionLost,
    ConnectionRefused,
    HandshakeError,
    LeaseEnded,
    LeaseholdError,
    ProtocolError,
    RequestError,
    Revoked,
    Unsatisfiable,
    WaitTimeout,
)
from .model import DEFAULT_URL, Resource

__version__ = "0.1.0"

# A library logs, the application decides where to: nothing printed by default.
logging.getLogger("leasehold").addHandler(logging.NullHandler())

__all__ = [
    "lease",
    "alease",
    "Lease",
    "AsyncLease",
    "Resource",
    "DEFAULT_URL",
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
]
