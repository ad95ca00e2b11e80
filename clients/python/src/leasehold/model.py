"""Wire-level pieces shared by the blocking and the async client.

Nothing here does I/O: building the acquire request, decoding the server's
events, and turning a server URL into the lease endpoint's URL.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union
from urllib.parse import urlsplit, urlunsplit

from .errors import ProtocolError

__all__ = [
    "DEFAULT_URL",
    "Resource",
    "Want",
    "build_want",
    "acquire_message",
    "resume_message",
    "check_seconds",
    "DEFAULT_REVOKE_WAIT",
    "DEFAULT_RESUME_WINDOW",
    "lease_url",
    "default_holder",
    "ci_identity",
    "decode_event",
    "parse_resources",
    "redact",
    "describe_want",
]

#: Server URL used when neither ``server=`` nor ``LEASEHOLD_URL`` says otherwise.
DEFAULT_URL = "ws://127.0.0.1:7400"

#: One group of an acquire request, as PROTOCOL.md spells it:
#: ``{"type": "array", "count": 2, "labels": {"proto": "fc"}}`` or ``{"name": "switch-03"}``.
Want = Mapping[str, Any]

#: Callback type: called with the lease object.
Callback = Callable[[Any], Any]

#: What ``wait=`` accepts: seconds (may be fractional), or ``None`` for "forever".
WaitSeconds = Union[int, float, None]

#: Seconds ``revoke_wait`` asks for unless the caller says otherwise: after an
#: admin revokes the lease, the server keeps its resources out of everyone's
#: reach until the client closed the connection (it does so once the holder
#: stopped: leaving ``with``, ``release()``, or the pytest plugin ending the
#: test), or this many seconds passed. The server caps it (default 60).
DEFAULT_REVOKE_WAIT = 30

#: Seconds the client keeps trying to resume a lease after the server closed
#: its connection for a restart (close code 1012); the server keeps a
#: restarted lease for its resume grace, 60 seconds unless configured.
DEFAULT_RESUME_WINDOW = 60


@dataclass(frozen=True)
class Resource:
    """One granted resource.

    Attributes:
        name: unique name in the inventory (``"array-01"``).
        type: its type (``"array"``).
        labels: the inventory's labels, matched by requests.
        attributes: the inventory's free-form details the test needs to reach
            the device (management address, ports, credentials reference).
        epoch: fencing token; grows with every grant of this resource.
    """

    name: str
    type: str
    labels: Mapping[str, str] = field(default_factory=dict)
    attributes: Mapping[str, Any] = field(default_factory=dict)
    epoch: int = 0

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "Resource":
        """Build a resource from the ``granted`` event's JSON object."""
        try:
            name = data["name"]
        except (KeyError, TypeError):
            raise ProtocolError(f"granted resource without a name: {data!r}") from None
        return cls(
            name=str(name),
            type=str(data.get("type") or ""),
            labels=dict(data.get("labels") or {}),
            attributes=dict(data.get("attributes") or {}),
            epoch=int(data.get("epoch") or 0),
        )


def build_want(
    want: Sequence[Want] | Want | None = None,
    *,
    type: str | None = None,
    count: int | None = None,
    labels: Mapping[str, str] | None = None,
    name: str | None = None,
) -> list[dict[str, Any]]:
    """Turn the API's arguments into the request's ``want`` list.

    Either ``want`` (a list of groups, passed through as given) or the
    shorthand: ``type`` with optional ``count`` and ``labels``, or ``name``.
    Checking the groups' contents is left to the server, which answers
    :class:`~leasehold.BadRequest` with its reason.
    """
    shorthand = type is not None or name is not None or count is not None or labels is not None
    if want is not None:
        if shorthand:
            raise TypeError("pass either want=[...] or type=/count=/labels=/name=, not both")
        if isinstance(want, Mapping):
            # One group given on its own: accept it as a list of one.
            return [dict(want)]
        if isinstance(want, (str, bytes)):
            raise TypeError("want= must be a list of groups such as [{'type': 'array'}]")
        return [dict(g) for g in want]
    if name is not None:
        if type is not None or count is not None or labels is not None:
            raise TypeError("name= names one resource; it does not go with type=, count= or labels=")
        return [{"name": name}]
    if type is None:
        raise TypeError("say what to lease: want=[...], type=... or name=...")
    group: dict[str, Any] = {"type": type}
    if count is not None:
        group["count"] = count
    if labels:
        group["labels"] = dict(labels)
    return [group]


def acquire_message(
    want: Sequence[Want],
    *,
    holder: str | None,
    meta: Mapping[str, str] | None,
    wait: WaitSeconds,
    grace: float | None = None,
    revoke_wait: float | None = None,
    max_hold: float | None = None,
) -> str:
    """Encode the ``acquire`` message (one JSON text message).

    ``grace``, ``max_hold`` and a non-zero ``revoke_wait`` are sent when
    given; ``None`` leaves them out (the server's version-1 behaviour).
    """
    msg: dict[str, Any] = {"op": "acquire", "want": [dict(g) for g in want]}
    if holder is not None:
        msg["holder"] = holder
    if meta:
        msg["meta"] = dict(meta)
    # Absent means "wait as long as it takes"; send null explicitly so the
    # intent is visible in the server's logs.
    msg["wait"] = wait
    if grace is not None:
        msg["grace"] = grace
    if revoke_wait:
        msg["revoke_wait"] = revoke_wait
    if max_hold is not None:
        msg["max_hold"] = max_hold
    return json.dumps(msg)


def resume_message(lease_id: str, token: str) -> str:
    """Encode the ``resume`` message: the first message of a connection that
    takes over a kept lease (PROTOCOL.md, "Surviving restarts")."""
    return json.dumps({"op": "resume", "lease": lease_id, "token": token})


def check_seconds(name: str, value: Any, *, positive: bool = False, none_means: str = "") -> None:
    """Check a seconds option: ``None``, or a finite number >= 0 (> 0 when
    ``positive``). Raises ValueError (TypeError for a non-number) naming it."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}= must be a number of seconds{none_means}, got {value!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name}= must be a finite number of seconds, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name}= must be > 0 seconds{none_means}, got {value!r}")
    if value < 0:
        raise ValueError(f"{name}= must be >= 0 seconds{none_means}, got {value!r}")


def lease_url(server: str | None) -> str:
    """The lease endpoint's URL for a server URL.

    ``server`` may be ``ws://host:port``, ``wss://…``, ``http(s)://…`` (mapped
    to ``ws(s)``), a bare ``host:port``, or already end in ``/v1/lease``.
    ``None`` means ``LEASEHOLD_URL`` or :data:`DEFAULT_URL`.
    """
    raw = server or os.environ.get("LEASEHOLD_URL") or DEFAULT_URL
    raw = raw.strip()
    if "://" not in raw:
        raw = "ws://" + raw
    parts = urlsplit(raw)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("ws", "wss"):
        raise ValueError(f"leasehold server URL must be ws://, wss://, http:// or https://, got {server!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/v1/lease"):
        path = path + "/v1/lease"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def ci_identity(environ: Mapping[str, str] | None = None) -> tuple[dict[str, str], str] | None:
    """Provenance and a job name from the usual CI variables, or None outside CI.

    Returns ``(meta, job)``: ``meta`` has ``job`` (the job's URL), ``commit``,
    ``ci`` (``gitlab``, ``github``, ``jenkins``, ``buildkite``, ``circleci``,
    ``travis``, ``azure``) and ``pipeline`` when known; ``job`` names the job
    for the holder, e.g. ``gitlab/lab/tests/nightly#1234``. The same rules as
    ``leasehold hold``.
    """
    env = os.environ if environ is None else environ

    def value(name: str) -> str | None:
        text = (env.get(name) or "").strip()
        return text or None

    def joined(*parts: str | None) -> str | None:
        present = [p for p in parts if p]
        return "/".join(present) if present else None

    def numbered(name: str | None, number: str | None) -> str | None:
        if name is None:
            return f"#{number}" if number else None
        return f"{name}#{number}" if number else name

    url = commit = pipeline = job = None
    if value("GITLAB_CI") or value("CI_JOB_URL"):
        system = "gitlab"
        url, commit, pipeline = value("CI_JOB_URL"), value("CI_COMMIT_SHA"), value("CI_PIPELINE_URL")
        job = numbered(joined(value("CI_PROJECT_PATH"), value("CI_JOB_NAME")), value("CI_JOB_ID"))
    elif value("GITHUB_ACTIONS") or value("GITHUB_RUN_ID"):
        system = "github"
        server, repository, run = value("GITHUB_SERVER_URL"), value("GITHUB_REPOSITORY"), value("GITHUB_RUN_ID")
        if server and repository and run:
            url = f"{server}/{repository}/actions/runs/{run}"
            attempt = value("GITHUB_RUN_ATTEMPT")
            if attempt and attempt != "1":
                url += f"/attempts/{attempt}"
        commit = value("GITHUB_SHA")
        job = numbered(joined(value("GITHUB_REPOSITORY"), value("GITHUB_WORKFLOW"), value("GITHUB_JOB")),
                       value("GITHUB_RUN_NUMBER"))
    elif value("BUILDKITE") or value("BUILDKITE_BUILD_URL"):
        system = "buildkite"
        base = value("BUILDKITE_BUILD_URL")
        if base:
            url = f"{base}#{value('BUILDKITE_JOB_ID')}" if value("BUILDKITE_JOB_ID") else base
        commit = value("BUILDKITE_COMMIT")
        job = numbered(joined(value("BUILDKITE_PIPELINE_SLUG"), value("BUILDKITE_LABEL")), value("BUILDKITE_BUILD_NUMBER"))
    elif value("CIRCLECI") or value("CIRCLE_BUILD_URL"):
        system = "circleci"
        url, commit = value("CIRCLE_BUILD_URL"), value("CIRCLE_SHA1")
        job = numbered(joined(value("CIRCLE_PROJECT_REPONAME"), value("CIRCLE_JOB")), value("CIRCLE_BUILD_NUM"))
    elif value("TRAVIS") or value("TRAVIS_JOB_WEB_URL"):
        system = "travis"
        url, commit = value("TRAVIS_JOB_WEB_URL") or value("TRAVIS_BUILD_WEB_URL"), value("TRAVIS_COMMIT")
        job = numbered(joined(value("TRAVIS_REPO_SLUG"), value("TRAVIS_JOB_NAME")), value("TRAVIS_JOB_NUMBER"))
    elif value("TF_BUILD") or value("BUILD_BUILDID"):
        system = "azure"
        collection, project, build = value("SYSTEM_COLLECTIONURI"), value("SYSTEM_TEAMPROJECT"), value("BUILD_BUILDID")
        if collection and project and build:
            url = f"{collection}{'' if collection.endswith('/') else '/'}{project}/_build/results?buildId={build}"
        commit = value("BUILD_SOURCEVERSION")
        job = numbered(joined(value("BUILD_DEFINITIONNAME"), value("AGENT_JOBNAME")), value("BUILD_BUILDNUMBER"))
    elif value("BUILD_URL") or value("JENKINS_URL"):
        system = "jenkins"
        url = value("BUILD_URL")
        job = numbered(value("JOB_NAME"), value("BUILD_NUMBER"))
    elif value("CI") and (value("CI_COMMIT_SHA") or value("GIT_COMMIT")):
        system = "ci"
    else:
        return None
    commit = commit or value("GIT_COMMIT") or value("CI_COMMIT_SHA")
    meta: dict[str, str] = {}
    if url:
        meta["job"] = url[:500]
    if commit:
        meta["commit"] = commit[:500]
    meta["ci"] = system
    if pipeline:
        meta["pipeline"] = pipeline[:500]
    return meta, f"{system}/{job or url or 'job'}"


def default_holder() -> str:
    """``user@host pid N`` (in CI: the job, ``gitlab/group/project/job#1234 pid N``):
    who holds the lease, as the status page shows it.

    ``LEASEHOLD_HOLDER`` overrides it.
    """
    env = os.environ.get("LEASEHOLD_HOLDER")
    if env:
        return env[:200]
    ci = ci_identity()
    if ci is not None:
        return f"{ci[1]} pid {os.getpid()}"[:200]
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"[:200]
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"[:200]


def decode_event(data: str | bytes) -> dict[str, Any]:
    """Decode one server event; :class:`ProtocolError` when it is not one."""
    if isinstance(data, bytes):
        raise ProtocolError("the server sent a binary message; leasehold events are text")
    try:
        event = json.loads(data)
    except ValueError:
        raise ProtocolError(f"the server sent a message that is not JSON: {data[:200]!r}") from None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        raise ProtocolError(f"the server sent a message that is not an event: {data[:200]!r}")
    return event


def parse_resources(event: Mapping[str, Any]) -> list[Resource]:
    """The resources of a ``granted`` event, in the order of the want groups."""
    raw = event.get("resources")
    if not isinstance(raw, list):
        raise ProtocolError(f"granted event without a resource list: {redact(event)!r}")
    return [Resource.from_wire(r) for r in raw]


def redact(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``event`` fit for logs and messages: the resume token, which
    lets whoever has it take the lease over, is blanked."""
    shown = dict(event)
    if "resume" in shown:
        shown["resume"] = "<redacted>"
    return shown


def describe_want(want: Sequence[Want]) -> str:
    """A short human description of a want list: ``2× array (proto=fc), switch-03``."""
    parts = []
    for g in want:
        if "name" in g:
            parts.append(str(g["name"]))
            continue
        text = str(g.get("type", "?"))
        count = g.get("count", 1)
        if count != 1:
            text = f"{count}× {text}"
        labels = g.get("labels") or {}
        if labels:
            text += " (" + ", ".join(f"{k}={v}" for k, v in labels.items()) + ")"
        parts.append(text)
    return ", ".join(parts)
