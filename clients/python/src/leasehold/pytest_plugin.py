"""pytest plugin: lab hardware for tests, through leasehold.

Registered through the ``pytest11`` entry point, so installing the package is
enough. It adds:

* ``--leasehold-url`` (else ``LEASEHOLD_URL``, else the ``leasehold_url`` ini
  value, else ``ws://127.0.0.1:7400``), ``--leasehold-wait``,
  ``--leasehold-holder`` and ``--leasehold-no-interrupt``; and, each also an
  environment variable and an ini value, ``--leasehold-grace``,
  ``--leasehold-revoke-wait`` and ``--leasehold-resume-window``.
* the ``lease`` fixture: a factory, ``lease(type="array", labels={...})``,
  usable from tests and from fixtures of any scope. Each lease it hands out is
  acquired at once and released when whatever took it ends: the test, or the
  fixture (function, class, module, package or session scoped) that called it.
* the ``@pytest.mark.lease(...)`` marker (same arguments as the factory) and
  the ``leased`` fixture, which holds the marker's lease for that test.

If a lease that a running test depends on is revoked (or its connection is
lost), the test fails with the resources' names and the admin's reason: it is
interrupted at once (a signal to the main thread, so even a test blocked in a
``sleep`` or a socket read stops), and checked again when it returns. Once
that test has stopped, the plugin closes the revoked lease's connection: the
server kept the resources from everyone else until then (``revoke_wait``).
Tests that use a lease that ended earlier fail before they run.
A server restart (close 1012), or a drop within ``grace``, does not end a
lease: the client resumes it and the running test runs on.
While a lease waits in the queue, its position is written to the terminal.
Under pytest-xdist every worker holds its own leases; nothing is shared.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generator, Mapping, Sequence

import pytest

from .client import Lease
from .errors import ConnectionLost, LeaseEnded, LeaseholdError, Revoked
from .model import (
    DEFAULT_RESUME_WINDOW,
    DEFAULT_REVOKE_WAIT,
    DEFAULT_URL,
    Want,
    WaitSeconds,
    ci_identity,
    default_holder,
)

if TYPE_CHECKING:  # pragma: no cover
    from _pytest.fixtures import FixtureDef, SubRequest

__all__ = ["LeaseFactory"]

_UNSET: Any = object()
_STATE_NAME = "leasehold-state"
# The signal sent to the main thread to interrupt a test whose lease ended.
_INTERRUPT_SIGNAL: int = int(getattr(signal, "SIGUSR1", 0))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("leasehold", "lab hardware leases (leasehold)")
    group.addoption(
        "--leasehold-url",
        default=None,
        metavar="URL",
        help="leasehold server URL (default: $LEASEHOLD_URL, the leasehold_url "
        f"ini value, or {DEFAULT_URL})",
    )
    group.addoption(
        "--leasehold-ca-file",
        default=None,
        metavar="FILE",
        help="for a wss:// server: PEM file of the CA certificates to trust "
        "(default: $LEASEHOLD_CA_FILE, else the system's trust store)",
    )
    group.addoption(
        "--leasehold-wait",
        default=None,
        type=float,
        metavar="SECONDS",
        help="how long a lease may wait in the queue before the test errors "
        "(default: $LEASEHOLD_WAIT, else wait as long as it takes)",
    )
    group.addoption(
        "--leasehold-holder",
        default=None,
        metavar="TEXT",
        help="holder shown on the status page (default: $LEASEHOLD_HOLDER, else "
        "'pytest user@host')",
    )
    group.addoption(
        "--leasehold-grace",
        default=None,
        type=float,
        metavar="SECONDS",
        help="ask the server to keep a lease this long when its connection drops "
        "without a release (a network blip), so that the client resumes it "
        "(default: $LEASEHOLD_GRACE, the leasehold_grace ini value, else none: a "
        "drop ends the lease)",
    )
    group.addoption(
        "--leasehold-revoke-wait",
        default=None,
        type=float,
        metavar="SECONDS",
        help="after an admin revokes a lease, the server keeps its resources from "
        "everyone else until the interrupted test has stopped, for this long at "
        "most; 0: free them at once (default: $LEASEHOLD_REVOKE_WAIT, the "
        f"leasehold_revoke_wait ini value, else {DEFAULT_REVOKE_WAIT:g})",
    )
    group.addoption(
        "--leasehold-resume-window",
        default=None,
        type=float,
        metavar="SECONDS",
        help="how long to keep trying to resume the leases after the server "
        "restarted (the test runs on meanwhile); 0: do not (default: "
        "$LEASEHOLD_RESUME_WINDOW, the leasehold_resume_window ini value, else "
        f"{DEFAULT_RESUME_WINDOW:g}, the server's default resume grace)",
    )
    group.addoption(
        "--leasehold-no-interrupt",
        action="store_true",
        default=False,
        help="do not interrupt a running test when its lease is revoked; fail "
        "it when it returns instead",
    )
    parser.addini("leasehold_url", "leasehold server URL", default=None)
    parser.addini("leasehold_grace", "seconds of grace a lease asks for (--leasehold-grace)", default=None)
    parser.addini(
        "leasehold_revoke_wait", "seconds of revoke_wait a lease asks for (--leasehold-revoke-wait)",
        default=None,
    )
    parser.addini(
        "leasehold_resume_window", "seconds to try resuming after a server restart "
        "(--leasehold-resume-window)", default=None,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "lease(want=None, *, type=None, count=1, labels=None, name=None, wait=None, "
        "holder=None, meta=None, grace=None, revoke_wait=None, max_hold=None): lease lab "
        "resources from leasehold for this test; "
        "the `leased` fixture gives the Lease (resources, attributes).",
    )
    config.pluginmanager.register(LeaseholdState(config), _STATE_NAME)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.pluginmanager.get_plugin(_STATE_NAME)
    if state is not None:
        state.close()
        config.pluginmanager.unregister(state, _STATE_NAME)


@dataclass
class _Record:
    """A lease handed out by the plugin and who it belongs to."""

    lease: Lease
    #: "item" (taken in a test body), "fixture", or "session" (outside tests).
    kind: str
    #: the fixture that took it (kind "fixture").
    argname: str | None
    #: the fixture's scope (kind "fixture").
    scope: str
    #: nodeid of the test (kind "item", or a function-scoped fixture), or of
    #: the fixture's scope node.
    nodeid: str
    #: nodeid of the test running when the lease ended, if any.
    ended_during: str | None = None
    #: True once its owner (test or fixture) was torn down.
    finished: bool = False

    def finish(self) -> None:
        """The owner's teardown: release, and stop counting for later tests."""
        self.finished = True
        self.lease.release()

    def used_by(self, item: pytest.Item) -> bool:
        """Whether ``item`` depends on this lease."""
        if self.kind == "item" or (self.kind == "fixture" and self.scope == "function"):
            return self.nodeid == item.nodeid
        if self.kind == "fixture":
            return self.argname in getattr(item, "fixturenames", ())
        return False


class LeaseFactory:
    """The ``lease`` fixture: call it to take a lease for the current scope.

    ::

        def test_fc(lease):
            arrays = lease(type="array", count=2, labels={"proto": "fc"})
            mgmt = arrays.resources[0].attributes["mgmt"]

        @pytest.fixture(scope="module")
        def switch(lease):
            return lease(type="switch").resources[0]

    Returns an acquired :class:`~leasehold.Lease`, released when the test or
    the fixture that called the factory ends (``with`` on it releases it
    earlier). Raises :class:`~leasehold.Unsatisfiable`,
    :class:`~leasehold.WaitTimeout`, :class:`~leasehold.ConnectionRefused`,
    ... as :func:`leasehold.lease` does.
    """

    def __init__(self, state: "LeaseholdState") -> None:
        self._state = state

    @property
    def url(self) -> str:
        """The server URL the plugin uses."""
        return self._state.url

    def __call__(
        self,
        want: Sequence[Want] | Want | None = None,
        *,
        type: str | None = None,
        count: int | None = None,
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
        wait: WaitSeconds = _UNSET,
        holder: str | None = None,
        meta: Mapping[str, str] | None = None,
        grace: float | None = _UNSET,
        revoke_wait: float | None = _UNSET,
        max_hold: float | None = None,
        resume_window: float | None = _UNSET,
        server: str | None = None,
        on_lost: Callable[[Lease], Any] | None = None,
    ) -> Lease:
        __tracebackhide__ = True
        return self._state.take(
            want,
            type=type,
            count=count,
            labels=labels,
            name=name,
            wait=wait,
            holder=holder,
            meta=meta,
            grace=grace,
            revoke_wait=revoke_wait,
            max_hold=max_hold,
            resume_window=resume_window,
            server=server,
            on_lost=on_lost,
        )


class LeaseholdState:
    """Per-session state of the plugin (one per pytest process and config)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        opt = config.getoption
        wait = opt("--leasehold-wait")
        if wait is None and os.environ.get("LEASEHOLD_WAIT"):
            try:
                wait = float(os.environ["LEASEHOLD_WAIT"])
            except ValueError:
                raise pytest.UsageError(
                    f"LEASEHOLD_WAIT must be a number of seconds, got {os.environ['LEASEHOLD_WAIT']!r}"
                ) from None
        self.wait: WaitSeconds = wait
        self.grace: float | None = self._seconds_setting(
            "--leasehold-grace", "LEASEHOLD_GRACE", "leasehold_grace", None)
        self.revoke_wait: float | None = self._seconds_setting(
            "--leasehold-revoke-wait", "LEASEHOLD_REVOKE_WAIT", "leasehold_revoke_wait",
            DEFAULT_REVOKE_WAIT)
        self.resume_window: float | None = self._seconds_setting(
            "--leasehold-resume-window", "LEASEHOLD_RESUME_WINDOW", "leasehold_resume_window",
            DEFAULT_RESUME_WINDOW)
        # An xdist worker has `workerinput`; PYTEST_XDIST_WORKER alone is not
        # proof (a pytest started from inside a worker inherits it).
        workerinput = getattr(config, "workerinput", None)
        self.worker: str | None = workerinput.get("workerid") if workerinput else None
        ci = ci_identity()
        self.ci_meta: dict[str, str] = ci[0] if ci else {}
        holder = opt("--leasehold-holder") or os.environ.get("LEASEHOLD_HOLDER")
        if not holder:
            holder = "pytest " + default_holder().split(" pid ")[0]
            if self.worker:
                holder += f" [{self.worker}]"
        self.holder: str = holder[:200]

        self._records: list[_Record] = []
        self._records_lock = threading.Lock()
        self._fixture_stack: list[tuple[FixtureDef[Any], SubRequest]] = []
        self._item: pytest.Item | None = None
        self._call_item: pytest.Item | None = None
        self._pending: _Record | None = None
        self._session_finalizers: list[Callable[[], object]] = []

        self._main_ident = threading.main_thread().ident
        self._prev_handler: Any = None
        self._interrupt = False
        if (
            not opt("--leasehold-no-interrupt")
            and _INTERRUPT_SIGNAL
            and hasattr(signal, "pthread_kill")
            and threading.current_thread() is threading.main_thread()
        ):
            self._prev_handler = signal.signal(_INTERRUPT_SIGNAL, self._on_signal)
            self._interrupt = True

    def _seconds_setting(
        self, option: str, env: str, ini: str, default: float | None
    ) -> float | None:
        """A seconds setting: the command line option, else the environment
        variable, else the ini value, else ``default``."""
        value = self.config.getoption(option)
        source = option
        if value is None:
            raw = os.environ.get(env, "").strip()
            source = env
            if not raw:
                raw = str(self.config.getini(ini) or "").strip()
                source = f"the {ini} ini value"
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise pytest.UsageError(f"{source} must be a number of seconds, got {raw!r}") from None
        if not (0 <= value < float("inf")):
            raise pytest.UsageError(f"{source} must be a number of seconds >= 0, got {value!r}")
        return float(value)

    @property
    def url(self) -> str:
        """``--leasehold-url``, else ``LEASEHOLD_URL``, else the ``leasehold_url``
        ini value, else the default. Read at each use, so a conftest.py may set
        the environment variable."""
        url = (
            self.config.getoption("--leasehold-url")
            or os.environ.get("LEASEHOLD_URL")
            or self.config.getini("leasehold_url")
            or DEFAULT_URL
        )
        return str(url)

    # -------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Release what is left and restore the signal handler."""
        for fin in reversed(self._session_finalizers):
            fin()
        self._session_finalizers.clear()
        with self._records_lock:
            records = list(self._records)
            self._records.clear()
        for rec in records:
            rec.lease.release()
        if self._interrupt:
            if signal.getsignal(_INTERRUPT_SIGNAL) == self._on_signal:
                prev = self._prev_handler
                signal.signal(_INTERRUPT_SIGNAL, signal.SIG_DFL if prev is None else prev)
            self._interrupt = False

    def pytest_report_header(self, config: pytest.Config) -> str:
        return f"leasehold: {self.url}"

    # ------------------------------------------------- who takes the lease

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: "FixtureDef[Any]", request: "SubRequest"
    ) -> Generator[None, Any, Any]:
        __tracebackhide__ = True
        self._fixture_stack.append((fixturedef, request))
        try:
            return (yield)
        finally:
            self._fixture_stack.pop()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, Any, Any]:
        self._item = item
        try:
            return (yield)
        finally:
            self._item = None
            self._close_revoked()
            self._prune()

    # ------------------------------------------------------- the test's call

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        __tracebackhide__ = True
        try:
            ended = self._ended_for(item)
            if ended is not None:
                raise self._failure(ended, item, before=True)
            self._call_item = item
            try:
                result = yield
            except (KeyboardInterrupt, SystemExit):
                raise
            except LeaseEnded:
                # Raised by the interrupt (or by lease.check() in the test):
                # the message names the resources and the reason already.
                raise
            except BaseException as exc:
                ended = self._ended_for(item)
                if ended is not None:
                    raise self._failure(ended, item) from exc
                raise
            finally:
                self._call_item = None
                self._pending = None
            ended = self._ended_for(item)
            if ended is not None:
                raise self._failure(ended, item)
            return result
        finally:
            # The test has stopped: let the server hand its revoked leases on.
            self._close_revoked(item)

    def _close_revoked(self, item: pytest.Item | None = None) -> None:
        """Close the connections of leases that ended early (used by ``item``,
        or all): a revoked lease's connection stays open, and its resources
        out of everyone's reach, until its holder has stopped using them."""
        with self._records_lock:
            records = list(self._records)
        for rec in records:
            if rec.lease.lost and (item is None or rec.used_by(item)):
                rec.lease.release()

    def _ended_for(self, item: pytest.Item) -> _Record | None:
        with self._records_lock:
            records = list(self._records)
        for rec in records:
            if rec.lease.lost and not rec.finished and rec.used_by(item):
                return rec
        return None

    def _failure(self, rec: _Record, item: pytest.Item, before: bool = False) -> LeaseEnded:
        """A fresh exception for ``item``: the lease's resources and reason."""
        err = rec.lease.error
        assert err is not None
        if before:
            when = f" (it ended during {rec.ended_during})" if rec.ended_during else " (before this test)"
        else:
            when = " during this test"
        if isinstance(err, Revoked):
            return Revoked(
                f"{err.reason}{when}" if err.reason else f"(no reason given){when}",
                lease_id=err.lease_id,
                resources=err.resources,
            )
        assert isinstance(err, ConnectionLost)
        return ConnectionLost(
            f"{err.detail}{when}",
            close_code=err.close_code,
            close_reason=err.close_reason,
            lease_id=err.lease_id,
            resources=err.resources,
        )

    def _on_lost(self, rec: _Record) -> None:
        """Called from the lease's background thread when it ends early."""
        call_item = self._call_item
        if call_item is None:
            call_item = self._item
        rec.ended_during = call_item.nodeid if call_item is not None else None
        item = self._call_item
        if not self._interrupt or item is None or not rec.used_by(item):
            return
        if signal.getsignal(_INTERRUPT_SIGNAL) != self._on_signal:
            return  # someone else's handler now: the end-of-call check will do
        self._pending = rec
        assert self._main_ident is not None
        signal.pthread_kill(self._main_ident, _INTERRUPT_SIGNAL)

    def _on_signal(self, signum: int, frame: Any) -> None:
        __tracebackhide__ = True
        rec = self._pending
        item = self._call_item
        if rec is not None and item is not None:
            self._pending = None
            raise self._failure(rec, item)
        prev = self._prev_handler
        if callable(prev):
            prev(signum, frame)

    # ------------------------------------------------------------ leasing

    def take(
        self,
        want: Sequence[Want] | Want | None = None,
        *,
        wait: WaitSeconds = _UNSET,
        holder: str | None = None,
        meta: Mapping[str, str] | None = None,
        grace: float | None = _UNSET,
        revoke_wait: float | None = _UNSET,
        max_hold: float | None = None,
        resume_window: float | None = _UNSET,
        server: str | None = None,
        on_lost: Callable[[Lease], Any] | None = None,
        **shorthand: Any,
    ) -> Lease:
        """Take a lease for whatever is running now (test or fixture)."""
        __tracebackhide__ = True
        if self._fixture_stack:
            fixturedef, request = self._fixture_stack[-1]
            kind, argname, scope = "fixture", fixturedef.argname, fixturedef.scope
            nodeid = request.node.nodeid
            add_finalizer: Callable[[Callable[[], object]], None] = fixturedef.addfinalizer
        elif self._item is not None:
            kind, argname, scope, nodeid = "item", None, "function", self._item.nodeid
            add_finalizer = self._item.addfinalizer
        else:
            kind, argname, scope, nodeid = "session", None, "session", ""
            add_finalizer = self._session_finalizers.append
        test_id = self._item.nodeid if self._item is not None else nodeid
        full_meta: dict[str, str] = {"test": test_id[:500]} if test_id else {}
        if argname:
            full_meta["fixture"] = f"{argname} ({scope})"[:500]
        if self.worker:
            full_meta["xdist_worker"] = self.worker
        full_meta.update(meta or {})
        # Provenance from the CI's variables, where the test and the user left room (16 at most).
        for key, value in self.ci_meta.items():
            if key not in full_meta and len(full_meta) < 16:
                full_meta[key] = value

        record: _Record | None = None

        def lost(lease: Lease) -> None:
            if record is not None:
                self._on_lost(record)
            if on_lost is not None:
                on_lost(lease)

        lease = Lease(
            want,
            server=server or self.url,
            ca_file=self.config.getoption("--leasehold-ca-file") if (server or self.url).startswith(("wss:", "https:")) else None,
            wait=self.wait if wait is _UNSET else wait,
            holder=holder or self.holder,
            meta=full_meta,
            grace=self.grace if grace is _UNSET else grace,
            revoke_wait=self.revoke_wait if revoke_wait is _UNSET else revoke_wait,
            max_hold=max_hold,
            resume_window=self.resume_window if resume_window is _UNSET else resume_window,
            on_lost=lost,
            on_queued=lambda l: self._report_queued(l, test_id or nodeid),
            raise_if_lost=False,
            **shorthand,
        )
        record = _Record(lease=lease, kind=kind, argname=argname, scope=scope, nodeid=nodeid)
        started = time.monotonic()
        try:
            lease.acquire()
        except LeaseholdError as exc:
            # The message says it all; the client's frames would only hide it.
            raise exc.with_traceback(None) from None
        with self._records_lock:
            self._records.append(record)
        add_finalizer(record.finish)
        if lease.position is not None:
            self._write(
                f"leasehold: {', '.join(lease.names)} granted to {test_id or nodeid} "
                f"after {time.monotonic() - started:.1f}s in the queue (lease {lease.id})"
            )
        if lease.lost:  # ended between the grant and now
            self._on_lost(record)
        return lease

    def _prune(self) -> None:
        """Forget leases whose owners ended (a lost lease whose fixture lives
        on is kept: later tests that use it must fail too)."""
        with self._records_lock:
            self._records[:] = [r for r in self._records if not r.finished]

    # ----------------------------------------------------------- reporting

    def _report_queued(self, lease: Lease, who: str) -> None:
        self._write(
            f"leasehold: {who} waiting for {lease.describe()}: "
            f"position {lease.position} in the queue (lease {lease.id})"
        )

    def _write(self, text: str) -> None:
        """Write a line to the terminal now, past output capturing."""
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        ctx = capman.global_and_fixture_disabled() if capman is not None else nullcontext()
        with ctx:
            if self.worker or reporter is None:
                # xdist workers: the controller shows a worker's stderr.
                prefix = f"[{self.worker}] " if self.worker else ""
                sys.stderr.write(prefix + text + "\n")
                sys.stderr.flush()
            else:
                reporter.write_line(text)


# ------------------------------------------------------------------ fixtures


def _state(config: pytest.Config) -> LeaseholdState:
    state = config.pluginmanager.get_plugin(_STATE_NAME)
    assert state is not None, "the leasehold plugin was not configured"
    return state  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def lease(pytestconfig: pytest.Config) -> LeaseFactory:
    """Factory: ``lease(type="array", count=1, labels={...})`` -> acquired Lease.

    The lease is released when the test, or the fixture that called the
    factory, ends; so a module-scoped fixture holds it for the module, a
    session-scoped one for the session.
    """
    return LeaseFactory(_state(pytestconfig))


@pytest.fixture
def leased(request: pytest.FixtureRequest, lease: LeaseFactory) -> Lease:
    """The lease that the test's ``@pytest.mark.lease(...)`` asks for."""
    __tracebackhide__ = True
    marker = request.node.get_closest_marker("lease")
    if marker is None:
        pytest.fail(
            "the `leased` fixture needs a @pytest.mark.lease(type=..., ...) marker "
            "on the test (or use the `lease` factory fixture)",
            pytrace=False,
        )
    args = list(marker.args)
    if len(args) > 1:
        pytest.fail("@pytest.mark.lease takes at most one positional argument (want)", pytrace=False)
    return lease(*args, **marker.kwargs)


@pytest.fixture(autouse=True)
def _leasehold_marker(request: pytest.FixtureRequest) -> None:
    """Take the marker's lease even for tests that do not ask for ``leased``."""
    __tracebackhide__ = True
    if request.node.get_closest_marker("lease") is not None:
        request.getfixturevalue("leased")
