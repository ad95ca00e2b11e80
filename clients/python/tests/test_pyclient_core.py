"""The sans-I/O core (leasehold._base) on its own, and both drivers over a
scripted connection: the cases a real server does not readily produce
(silence past `wait`, closes without an error event, failing callbacks)."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import queue
import threading
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

import leasehold
import leasehold._base
import leasehold.aio
import leasehold.client
from leasehold._base import (
    ENDED,
    RELEASE_MESSAGE,
    WAIT_GRACE,
    Call,
    LeaseBase,
    Receive,
    Send,
    next_request,
)
from leasehold.pytest_plugin import LeaseFactory

GRANTED = {
    "event": "granted",
    "lease": "L1",
    "resources": [{"name": "array-01", "type": "array", "labels": {"proto": "fc"},
                   "attributes": {"mgmt": "10.0.0.11"}, "epoch": 7}],
}


def closed(code: int | None, reason: str = "") -> ConnectionClosed:
    """What websockets raises when the server closed with ``code`` (None: no close frame)."""
    return ConnectionClosed(None if code is None else Close(code, reason), None)


def text(event: dict[str, Any]) -> str:
    return json.dumps(event)


def granted_lease(**options: Any) -> tuple[LeaseBase, Any]:
    """A lease taken through its waiting steps, and its holding steps, started."""
    lease = LeaseBase(name="array-01", **options)
    waiting = lease._waiting_steps()
    assert isinstance(next_request(waiting, None, None), Send)
    assert isinstance(next_request(waiting, None, None), Receive)
    assert next_request(waiting, text(GRANTED), None) is None
    holding = lease._holding_steps()
    assert next_request(holding, None, None) == Receive(None)
    return lease, holding


# ------------------------------------------------------------- waiting


def test_waiting_asks_reports_queue_moves_and_ends_at_the_grant():
    moves: list[Any] = []
    lease = LeaseBase(type="array", labels={"proto": "fc"}, wait=5, holder="ci/1",
                      meta={"job": "j"}, on_queued=moves.append)
    steps = lease._waiting_steps()
    ask = next_request(steps, None, None)
    assert isinstance(ask, Send)
    assert json.loads(ask.text) == {"op": "acquire", "want": [{"type": "array", "labels": {"proto": "fc"}}],
                                    "holder": "ci/1", "meta": {"job": "j"}, "wait": 5,
                                    "revoke_wait": 30}  # the client's default
    first = next_request(steps, None, None)
    assert isinstance(first, Receive) and 5 + WAIT_GRACE - 1 < first.timeout <= 5 + WAIT_GRACE
    queued = {"event": "queued", "lease": "L1", "position": 2}
    assert next_request(steps, text(queued), None) == Call(lease.on_queued)
    assert lease.id == "L1" and lease.position == 2 and not lease.granted
    assert isinstance(next_request(steps, None, None), Receive)
    # The same position again: on_queued is not called.
    assert isinstance(next_request(steps, text(queued), None), Receive)
    assert isinstance(next_request(steps, text({"event": "hello"}), None), Receive)
    assert next_request(steps, text(GRANTED), None) is None
    assert lease.granted and lease.active and lease.names == ["array-01"]
    assert lease.resources[0].epoch == 7 and lease.resources[0].attributes["mgmt"] == "10.0.0.11"


def test_waiting_forever_has_no_timeout():
    steps = LeaseBase(name="array-01")._waiting_steps()
    assert json.loads(next_request(steps, None, None).text)["wait"] is None
    assert next_request(steps, None, None) == Receive(None)


def test_an_error_event_keeps_the_close_code_the_server_used():
    lease = LeaseBase(name="array-01", close_timeout=2.5)
    steps = lease._waiting_steps()
    next_request(steps, None, None)
    next_request(steps, None, None)
    error = {"event": "error", "code": "resume_refused", "message": "no such lease"}
    assert next_request(steps, text(error), None) == Receive(2.5)
    with pytest.raises(leasehold.ProtocolError) as info:
        next_request(steps, None, closed(4410))
    assert info.value.code == "resume_refused" and info.value.close_code == 4410


def test_an_error_event_without_a_close_keeps_the_default_close_code():
    steps = LeaseBase(name="array-01")._waiting_steps()
    next_request(steps, None, None)
    next_request(steps, None, None)
    next_request(steps, text({"event": "error", "code": "unsatisfiable", "message": "no"}), None)
    with pytest.raises(leasehold.Unsatisfiable) as info:
        next_request(steps, None, TimeoutError())
    assert info.value.close_code == 4404


@pytest.mark.parametrize(
    "code, reason, error, close_code",
    [
        (4400, "bad", leasehold.BadRequest, 4400),
        (4404, "", leasehold.Unsatisfiable, 4404),
        (4408, "", leasehold.WaitTimeout, 4408),
        (1008, "no acquire in time", leasehold.ProtocolError, 1008),
        (1001, "", leasehold.ConnectionLost, 1001),
        (None, "", leasehold.ConnectionLost, None),
    ],
)
def test_a_close_before_the_grant(code, reason, error, close_code):
    steps = LeaseBase(name="array-01")._waiting_steps()
    next_request(steps, None, None)
    next_request(steps, None, None)
    with pytest.raises(error) as info:
        next_request(steps, None, closed(code, reason))
    assert info.value.close_code == close_code
    assert info.value.__suppress_context__


@pytest.mark.parametrize("silence", [TimeoutError, asyncio.TimeoutError])
def test_silence_past_wait_gives_up(silence):
    steps = LeaseBase(name="array-01", wait=0.5)._waiting_steps()
    next_request(steps, None, None)
    next_request(steps, None, None)
    with pytest.raises(leasehold.WaitTimeout, match="did not say so") as info:
        next_request(steps, None, silence())
    assert info.value.close_code is None  # decided by the client, not closed by the server


def test_nonsense_or_a_revocation_before_the_grant():
    steps = LeaseBase(name="array-01")._waiting_steps()
    next_request(steps, None, None)
    next_request(steps, None, None)
    assert next_request(steps, "not json", None) == Receive(5.0)
    with pytest.raises(leasehold.ProtocolError, match="not JSON"):
        next_request(steps, None, closed(1000))
    steps = LeaseBase(name="array-01")._waiting_steps()
    next_request(steps, None, None)
    next_request(steps, None, None)
    with pytest.raises(leasehold.ConnectionLost, match="revoked before the grant: gone"):
        next_request(steps, text({"event": "revoked", "lease": "L1", "reason": "gone"}), None)


def test_a_failing_on_queued_stops_the_wait():
    def on_queued(lease):
        raise KeyboardInterrupt

    lease = LeaseBase(name="array-01", on_queued=on_queued)
    steps = lease._waiting_steps()
    next_request(steps, None, None)
    next_request(steps, None, None)
    call = next_request(steps, text({"event": "queued", "lease": "L1", "position": 1}), None)
    assert call == Call(on_queued)
    with pytest.raises(KeyboardInterrupt):
        next_request(steps, None, KeyboardInterrupt())


# ------------------------------------------------------------- holding


def test_a_revocation_ends_the_lease_at_once_and_the_connection_stays_until_closed():
    lost: list[Any] = []
    lease, steps = granted_lease(on_lost=lost.append)
    revoked = {"event": "revoked", "lease": "L1", "reason": "disk shelf replaced"}
    # Lost at once (waiters woken, on_lost called), before any close: the
    # server keeps the connection open for revoke_wait.
    assert next_request(steps, text(revoked), None) is ENDED
    assert lease.revoked and lease.lost and not lease.active
    assert lease.revoke_reason == "disk shelf replaced"
    assert lease.error.resource_names == ["array-01"]
    assert next_request(steps, None, None) == Call(lease.on_lost)
    # ... and the steps go on reading until the connection closes.
    assert next_request(steps, None, None) == Receive(None)
    assert next_request(steps, b"binary", None) == Receive(None)  # skipped
    # The holder closes (1000), or the server does after revoke_wait (4001):
    # either way still revoked, and on_lost is not called again.
    assert next_request(steps, None, closed(4001, "revoked")) is ENDED
    assert lease.revoked and lease.revoke_reason == "disk shelf replaced"
    assert next_request(steps, None, None) is None


def test_a_revoked_lease_is_not_resumed():
    lease, steps = granted_lease(grace=30)
    lease._resume_token = "secret"
    next_request(steps, text({"event": "revoked", "lease": "L1", "reason": "r"}), None)
    next_request(steps, None, None)  # no on_lost: straight back to reading
    assert next_request(steps, None, closed(1012)) is ENDED
    assert next_request(steps, None, None) is None
    assert lease.revoked


def test_a_4001_close_without_the_event_is_revoked_with_the_close_reason():
    lease, steps = granted_lease()
    assert next_request(steps, None, closed(4001, "freed")) is ENDED
    assert lease.revoke_reason == "freed"
    assert next_request(steps, None, None) is None  # no on_lost given


def test_a_close_after_the_release_is_the_release():
    lost: list[Any] = []
    lease, steps = granted_lease(on_lost=lost.append)
    assert lease._begin_release() and not lease._begin_release()
    # Revoked after its holder let go: nothing is lost.
    next_request(steps, text({"event": "revoked", "lease": "L1", "reason": "late"}), None)
    assert next_request(steps, None, closed(1000)) is ENDED
    assert lease.released and not lease.lost and not lease.active
    assert next_request(steps, None, None) is None


@pytest.mark.parametrize("code", [1001, None])
def test_a_lost_connection_is_connection_lost(code):
    lease, steps = granted_lease(on_lost=lambda l: None)
    assert next_request(steps, None, closed(code)) is ENDED
    assert isinstance(lease.error, leasehold.ConnectionLost) and lease.error.close_code == code
    assert "array-01" in str(lease.error)
    assert isinstance(next_request(steps, None, None), Call)


def test_a_failing_on_lost_is_logged_not_raised(caplog):
    lease, steps = granted_lease(on_lost=lambda l: None)
    next_request(steps, None, closed(1001))
    next_request(steps, None, None)
    with caplog.at_level(logging.ERROR, logger="leasehold"):
        assert next_request(steps, None, ValueError("callback broke")) is None
    assert "on_lost callback failed" in caplog.text


# ----------------------------------------------------------- the rules


def test_leaving_with_raises_only_an_early_end_and_only_when_asked():
    lease, steps = granted_lease()
    next_request(steps, None, closed(1001))
    with pytest.raises(leasehold.ConnectionLost):
        lease._raise_if_lost_on_exit(None)
    lease._raise_if_lost_on_exit(ValueError)  # the block's own error wins
    quiet, steps = granted_lease(raise_if_lost=False)
    next_request(steps, None, closed(1001))
    quiet._raise_if_lost_on_exit(None)


def test_one_acquire_per_lease_object():
    lease = LeaseBase(name="array-01")
    lease._check_unused()
    lease._ws = object()
    with pytest.raises(RuntimeError, match="acquired already"):
        lease._check_unused()


def test_options_are_checked_once_for_both_clients():
    for make in (leasehold.lease, leasehold.alease):
        with pytest.raises(ValueError, match="wait="):
            make(type="array", wait=-1)
        with pytest.raises(TypeError):
            make([{"name": "a"}], type="b")


def parameters(function: Any, skip: int = 0) -> list[tuple[str, Any, Any]]:
    params = list(inspect.signature(function).parameters.values())[skip:]
    return [(p.name, p.kind, p.default) for p in params]


def test_the_spelled_out_signatures_agree():
    """lease(), alease() and the constructor each spell out the options (the
    public signatures stay explicit); they must not drift apart."""
    constructor = parameters(LeaseBase.__init__, skip=1)
    assert parameters(leasehold.lease) == constructor
    assert parameters(leasehold.alease) == constructor
    # The pytest factory takes a subset, with the plugin's own defaults for
    # the options it has settings for.
    shared = {name: (kind, default) for name, kind, default in constructor}
    plugin_defaults = {"wait", "grace", "revoke_wait", "resume_window"}
    factory = parameters(LeaseFactory.__call__, skip=1)
    assert plugin_defaults | {"max_hold"} <= {name for name, _, _ in factory}
    for name, kind, default in factory:
        assert shared[name][0] == kind, name
        assert name in plugin_defaults or shared[name][1] == default, name


# ------------------------------------------ both drivers, scripted server


class ScriptedServer:
    """The server's side of one connection: answers the acquire with
    ``answers``, closes with 1000 on a release, or with ``close_with``."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = [text(a) for a in answers]
        self.sent: list[str] = []
        self.inbox: queue.Queue[str | ConnectionClosed] = queue.Queue()

    def on_send(self, message: str) -> None:
        self.sent.append(message)
        if json.loads(message)["op"] == "acquire":
            for answer in self.answers:
                self.inbox.put(answer)
        elif message == RELEASE_MESSAGE:
            self.inbox.put(closed(1000))

    def close_with(self, code: int, reason: str = "") -> None:
        self.inbox.put(closed(code, reason))


class SyncConnection:
    def __init__(self, server: ScriptedServer) -> None:
        self.server = server

    def send(self, message: str) -> None:
        self.server.on_send(message)

    def recv(self, timeout: float | None = None) -> str:
        try:
            item = self.server.inbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None
        if isinstance(item, ConnectionClosed):
            self.server.inbox.put(item)  # closed stays closed
            raise item
        return item

    def close(self) -> None:
        self.server.close_with(1000)


class AsyncConnection(SyncConnection):
    async def send(self, message: str) -> None:  # type: ignore[override]
        self.server.on_send(message)

    async def recv(self) -> str:  # type: ignore[override]
        while True:
            try:
                return SyncConnection.recv(self, timeout=0)
            except TimeoutError:
                await asyncio.sleep(0.005)

    async def close(self) -> None:  # type: ignore[override]
        self.server.close_with(1000)


def run_sync(server: ScriptedServer, monkeypatch: pytest.MonkeyPatch, script: Any, **options: Any) -> Any:
    monkeypatch.setattr(leasehold.client, "connect", lambda url, **kw: SyncConnection(server))
    return script(leasehold.lease(name="array-01", **options))


def run_async(server: ScriptedServer, monkeypatch: pytest.MonkeyPatch, script: Any, **options: Any) -> Any:
    async def connect(url: str, **kw: Any) -> AsyncConnection:
        return AsyncConnection(server)

    monkeypatch.setattr(leasehold.aio, "connect", connect)

    async def main() -> Any:
        result = script(leasehold.alease(name="array-01", **options))
        return await result if inspect.isawaitable(result) else result

    return asyncio.run(asyncio.wait_for(main(), 10))


QUEUED_THEN_GRANTED = [{"event": "queued", "lease": "L1", "position": 3}, GRANTED]


@pytest.mark.parametrize("run", [run_sync, run_async], ids=["sync", "async"])
def test_both_clients_queue_hold_and_release_alike(run, monkeypatch):
    server = ScriptedServer(QUEUED_THEN_GRANTED)
    positions: list[int] = []

    def script(lease):
        if isinstance(lease, leasehold.AsyncLease):
            async def go():
                async with lease:
                    assert lease.active
                return lease
            return go()
        with lease:
            assert lease.active
        return lease

    lease = run(server, monkeypatch, script, on_queued=lambda l: positions.append(l.position))
    assert positions == [3]
    assert lease.names == ["array-01"] and lease.released and not lease.lost
    assert [json.loads(m)["op"] for m in server.sent] == ["acquire", "release"]


@pytest.mark.parametrize("run", [run_sync, run_async], ids=["sync", "async"])
def test_both_clients_report_a_revocation_alike(run, monkeypatch):
    server = ScriptedServer([GRANTED, {"event": "revoked", "lease": "L1", "reason": "rack move"}])
    lost: list[str] = []
    done = threading.Event()

    def on_lost(lease):
        lost.append(lease.revoke_reason)
        done.set()

    def script(lease):
        if isinstance(lease, leasehold.AsyncLease):
            async def go():
                await lease.acquire()
                server.close_with(4001, "revoked")
                assert await lease.wait_lost(5)
                await asyncio.sleep(0)  # let on_lost run
                with pytest.raises(leasehold.Revoked, match="rack move"):
                    async with lease:
                        pass
                return lease
            return go()
        lease.acquire()
        server.close_with(4001, "revoked")
        assert lease.wait_lost(5) and done.wait(5)
        with pytest.raises(leasehold.Revoked, match="rack move"):
            with lease:
                pass
        return lease

    lease = run(server, monkeypatch, script, on_lost=on_lost)
    assert lost == ["rack move"] and lease.revoked


@pytest.mark.parametrize("run", [run_sync, run_async], ids=["sync", "async"])
def test_both_clients_give_up_alike_when_the_server_says_nothing(run, monkeypatch):
    server = ScriptedServer([])
    monkeypatch.setattr(leasehold._base, "WAIT_GRACE", 0.05)

    def script(lease):
        return lease.acquire()

    with pytest.raises(leasehold.WaitTimeout, match="did not say so"):
        run(server, monkeypatch, script, wait=0.05)
