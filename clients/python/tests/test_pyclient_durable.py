"""Durable leases, client side, against the in-process fake server: resuming
after a restart (1012) or a drop within `grace`, refusals, the resume window,
revocations that wait for the holder to close, and the new acquire options
(PROTOCOL.md: "Surviving restarts and network blips", "Revocation waits for
the holder to stop", "Lease time limits"). Both clients, same cases."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any, Callable

import pytest

import leasehold
import leasehold._base
from fake_server import HANG_GUARD, TOKEN, FakeConnection, granted, queued
from leasehold.model import acquire_message

RESTART = 1012


# --------------------------------------------- both clients, one test body


class SyncClient:
    """Drives a :class:`leasehold.Lease`."""

    def lease(self, **options: Any) -> Any:
        return leasehold.lease(**options)

    def acquire(self, lease: Any) -> Any:
        return lease.acquire()

    def release(self, lease: Any) -> None:
        lease.release()

    def leave_with(self, lease: Any) -> None:
        """What leaving ``with lease:`` does (raises the lease's error if lost)."""
        lease.__exit__(None, None, None)

    def wait_lost(self, lease: Any, timeout: float = HANG_GUARD) -> bool:
        return bool(lease.wait_lost(timeout))

    def close(self) -> None:
        pass


class AsyncClient(SyncClient):
    """Drives a :class:`leasehold.AsyncLease` on an event loop of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = HANG_GUARD) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def lease(self, **options: Any) -> Any:
        return leasehold.alease(**options)

    def acquire(self, lease: Any) -> Any:
        return self.run(lease.acquire())

    def release(self, lease: Any) -> None:
        self.run(lease.release())

    def leave_with(self, lease: Any) -> None:
        self.run(lease.__aexit__(None, None, None))

    def wait_lost(self, lease: Any, timeout: float = HANG_GUARD) -> bool:
        return bool(self.run(lease.wait_lost(timeout), timeout + 10))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(params=["sync", "async"])
def client(request: pytest.FixtureRequest) -> Any:
    made = SyncClient() if request.param == "sync" else AsyncClient()
    yield made
    made.close()


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = HANG_GUARD) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g}s for {what}")
        time.sleep(0.005)
    return value


def resume_of(lease_id: str = "L1", token: str = TOKEN) -> dict[str, str]:
    return {"op": "resume", "lease": lease_id, "token": token}


# ------------------------------------------------------- the acquire options


def test_the_acquire_message_carries_the_new_options_only_when_set():
    base = {"op": "acquire", "want": [{"name": "a"}], "holder": "h", "wait": None}
    msg = json.loads(acquire_message([{"name": "a"}], holder="h", meta=None, wait=None))
    assert msg == base
    msg = json.loads(acquire_message([{"name": "a"}], holder="h", meta=None, wait=None,
                                     grace=12.5, revoke_wait=30, max_hold=3600))
    assert msg == {**base, "grace": 12.5, "revoke_wait": 30, "max_hold": 3600}
    for no_wait in (None, 0):
        msg = json.loads(acquire_message([{"name": "a"}], holder="h", meta=None, wait=None,
                                         revoke_wait=no_wait))
        assert "revoke_wait" not in msg
    # grace=0 is said as asked (the server reads it as no grace).
    msg = json.loads(acquire_message([{"name": "a"}], holder="h", meta=None, wait=None, grace=0))
    assert msg["grace"] == 0


@pytest.mark.parametrize("make", [leasehold.lease, leasehold.alease], ids=["sync", "async"])
def test_the_new_options_are_checked_locally(make):
    for option in ("grace", "revoke_wait", "resume_window", "max_hold"):
        with pytest.raises(ValueError, match=f"^{option}= must be >= 0 seconds|^{option}= must be > 0"):
            make(type="array", **{option: -1})
        with pytest.raises(ValueError, match=f"^{option}= must be a finite number"):
            make(type="array", **{option: float("nan")})
        with pytest.raises(TypeError, match=f"^{option}= must be a number of seconds"):
            make(type="array", **{option: "10"})
    with pytest.raises(ValueError, match="max_hold= must be > 0 seconds"):
        make(type="array", max_hold=0)
    lease = make(type="array")
    assert (lease.grace, lease.revoke_wait, lease.max_hold, lease.resume_window) == (None, 30, None, 60)


def test_acquire_sends_the_options_and_the_lease_shows_expires(client, fake_server):
    async def script(conn: FakeConnection) -> None:
        await conn.recv()
        await conn.send(granted(expires="2026-11-25T20:04:45Z"))
        await conn.serve_until_closed()

    server = fake_server(script)
    lease = client.lease(name="array-01", server=server.url, grace=20, revoke_wait=None, max_hold=7200)
    client.acquire(lease)
    assert lease.expires == "2026-11-25T20:04:45Z"
    client.release(lease)
    sent = server.conn(0).messages
    assert sent[0]["grace"] == 20 and sent[0]["max_hold"] == 7200 and "revoke_wait" not in sent[0]
    assert sent[1] == {"op": "release"}
    assert lease.released and not lease.lost


# ------------------------------------------------------------------ resume


@pytest.mark.parametrize(
    "code, grace, resume_window, expected",
    [
        (1012, None, 60, 60),     # restart: the resume window
        (1012, 120, 60, 120),     # ... or the lease's longer grace (the server keeps it that long)
        (1012, None, 0, 0),       # not resuming at all
        (1012, None, None, 0),
        (None, None, 60, 0),      # dropped, no grace: the server freed it at once
        (None, 30, 60, 30),       # dropped within grace
        (1001, 30, 60, 0),        # a server without state: nothing kept
        (1000, 30, 60, 0),
        (4001, 30, 60, 0),
        (4002, 30, 60, 0),        # resumed elsewhere
        (1011, 30, 60, 0),
    ],
)
def test_which_closes_are_resumed_and_for_how_long(code, grace, resume_window, expected):
    lease = leasehold._base.LeaseBase(name="array-01", grace=grace, resume_window=resume_window)
    lease.id = "L1"
    assert lease._resume_window_for(code) == 0  # no token: nothing to resume with
    lease._resume_token = TOKEN
    lease._granted = True
    assert lease._resume_window_for(code) == expected
    lease._mark_revoked("r")
    assert lease._resume_window_for(code) == 0  # a revoked lease is never resumed


def test_a_restart_is_resumed_and_the_lease_stays_held(client, fake_server, caplog):
    restart, answer = threading.Event(), threading.Event()

    async def before(conn: FakeConnection) -> None:
        await conn.recv()
        await conn.send(granted())
        await conn.until(restart)
        conn.server.refuse = 2  # the "restarting" server refuses two handshakes
        await conn.close(RESTART, "restart")

    async def after(conn: FakeConnection) -> None:
        await conn.recv()
        await conn.until(answer)
        await conn.send(granted())
        await conn.serve_until_closed()

    caplog.set_level(logging.DEBUG)  # websockets' frame logs too
    server = fake_server(before, after)
    lost: list[Any] = []
    lease = client.lease(name="array-01", server=server.url, on_lost=lost.append)
    client.acquire(lease)
    assert lease.id == "L1" and lease.names == ["array-01"] and lease.resources[0].epoch == 17
    restart.set()

    # The resume is the new connection's first message, exactly this.
    first = server.first_message(1)
    assert first == resume_of()
    assert server.conn(1).received[0] == json.dumps(resume_of())
    assert server.refused == 2
    # Waiting for the answer, the lease still counts as held.
    assert lease.resuming and lease.active and not lease.lost and lease.error is None
    assert not client.wait_lost(lease, 0.01)
    assert "resuming" in repr(lease) and TOKEN not in repr(lease) and TOKEN not in str(lease)
    answer.set()
    wait_until(lambda: not lease.resuming, "the resume to finish")
    assert lease.active and not lease.lost and lease.id == "L1"
    assert [(r.name, r.epoch) for r in lease.resources] == [("array-01", 17)]

    client.release(lease)
    assert server.conn(1).messages[1:] == [{"op": "release"}]
    assert lease.released and not lease.lost and lost == []
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.name == "leasehold"]
    assert warnings[0].startswith(
        "leasehold: connection lost (the server is restarting (close code 1012: restart)); "
        "resuming lease L1 on array-01, for up to 60s"), warnings
    assert warnings[1].startswith("leasehold: resumed lease L1 on array-01 after "), warnings
    # Never logged, not even in websockets' debug log of every frame.
    frames = [r.getMessage() for r in caplog.records if r.name == "leasehold.websockets"]
    assert sum("with a resume token, not shown" in f for f in frames) == 3, frames  # 2 granted, 1 resume
    assert any('{"op": "release"}' in f for f in frames), frames
    client_log = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("leasehold"))
    assert TOKEN[:12] not in client_log and TOKEN[-12:] not in client_log


def test_a_server_that_stays_down_a_while_is_retried_with_backoff(client, fake_server):
    restarted = threading.Event()

    async def before(conn: FakeConnection) -> None:
        await conn.recv()
        await conn.send(granted())
        await conn.recv()  # the test's cue: never comes; the server "goes away"

    async def after(conn: FakeConnection) -> None:
        assert await conn.recv() == resume_of()
        await conn.send(granted())
        await conn.serve_until_closed()

    server = fake_server(before, after)
    lease = client.lease(name="array-01", server=server.url, resume_window=30)
    client.acquire(lease)
    # A restart: close with 1012, then nothing listens for a while.
    server.stop_listening()
    asyncio.run_coroutine_threadsafe(server.conns[0].close(RESTART), server.loop).result(HANG_GUARD)
    wait_until(lambda: lease.resuming, "the client to start resuming")
    time.sleep(0.5)  # several refused connects (backoff from 0.1s): the lease holds on
    assert lease.active and not lease.lost and len(server.conns) == 1
    server.listen()
    restarted.set()
    server.conn(1)
    wait_until(lambda: not lease.resuming, "the resume")
    assert lease.active and not lease.lost
    client.release(lease)
    assert lease.released


def test_a_refused_resume_loses_the_lease(client, fake_server):
    async def before(conn: FakeConnection) -> None:
        await conn.recv()
        await conn.send(granted())
        await conn.close(RESTART)

    async def refuse(conn: FakeConnection) -> None:
        assert await conn.recv() == resume_of()
        await conn.send({"event": "error", "code": "resume_refused", "message": "no such lease"})
        await conn.close(4410, "resume refused")

    server = fake_server(before, refuse)
    lost: list[Any] = []
    lease = client.lease(name="array-01", server=server.url, on_lost=lost.append)
    client.acquire(lease)
    assert client.wait_lost(lease)
    wait_until(lambda: lost, "on_lost")
    err = lease.error
    assert isinstance(err, leasehold.ConnectionLost) and not lease.revoked and not lease.active
    assert err.close_code == 4410
    assert "refused to resume the lease (resume_refused: no such lease)" in str(err)
    assert "array-01" in str(err) and TOKEN not in str(err)
    with pytest.raises(leasehold.ConnectionLost):
        client.leave_with(lease)
    assert lost == [lease]


def test_a_4410_close_without_the_error_event_is_a_refusal_too(client, fake_server):
    async def before(conn: FakeConnection) -> None:
        await conn.recv()
        await conn.send(granted())
        await conn.close(RESTART)

    async def refuse(conn: FakeConnection) -> None:
        await conn.recv()
        await conn.close(4410, "unknown lease")

    server = fake_server(before, refuse)
    lease = client.lease(name="array-01", server=server.url)
    client.acquire(lease)
    assert client.wait_lost(lease)
    assert lease.error.close_code == 4410 and "unknown lease" in str(lease.error)


def test_the_resume_window_runs_out(client, fake_server):
    async def before(conn: FakeConnection) -> None:
        await conn.recv()
        await conn.send(granted())
        conn.server.refuse = -1  # from now on every handshake gets 503
        await conn.close(RESTART)

    server = fake_server(before)
    lease = client.lease(name="array-01", server=server.url, resume_window=1)
    client.acquire(lease)
    t0 = time.monotonic()
    assert client.wait_lost(lease)
    assert time.monotonic() - t0 >= 0.9
    err = lease.error
    assert isinstance(err, leasehold.ConnectionLost) and err.close_code == RESTART
    assert "not resumed within 1s" in str(err) and "HTTP 503" in str(err), str(err)
    assert server.refused >= 2  # retried, with backoff


def test_no_resume_window_means_a_restart_ends_the_lease(client, fake_server):
    async def before(conn: FakeConnection) -> None:
        await conn.recv()
        await conn.send(granted())
        await conn.close(RESTART)

    server = fake_server(before)
    lease = client.lease(name="array-01", server=server.url, resume_window=0)
    client.acquire(lease)
    assert client.wait_lost(lease)
    assert lease.error.close_code == RESTART
    client.release(lease)  # joins the watcher: no attempt can come after this
    assert len(server.conns) == 1


def test_an_abrupt_drop_within_grace_is_resumed(client, fake_server):
    async def before(conn: FakeConnection) -> None:
        assert (await conn.recv())["grace"] == 30
        await conn.send(granted())
        conn.abort()

    async def after(conn: FakeConnection) -> None:
        assert await conn.recv() == resume_of()
        await conn.send(granted())
        await conn.serve_until_closed()

    server = fake_server(before, after)
    lease = client.lease(name="array-01", server=server.url, grace=30)
    client.acquire(lease)
    server.first_message(1)
    wait_until(lambda: not lease.resuming and len(server.conn(1).received) == 1, "the resume")
    assert lease.active and not lease.lost
    client.release(lease)
    assert lease.released and server.conn(1).messages[-1] == {"op": "release"}


def test_an_abrupt_drop_without_grace_ends_the_lease_without_a_resume(client, fake_server):
    async def before(conn: FakeConnection) -> None:
        assert "grace" not in await conn.recv()
        await conn.send(granted())
        conn.abort()

    server = fake_server(before)
    lease = client.lease(name="array-01", server=server.url)
    client.acquire(lease)
    assert client.wait_lost(lease)
    assert isinstance(lease.error, leasehold.ConnectionLost) and lease.error.close_code is None
    client.release(lease)
    assert len(server.conns) == 1 and not lease.released


def test_resumed_elsewhere_4002_is_a_lost_lease(client, fake_server):
    async def before(conn: FakeConnection) -> None:
        await conn.recv()
        await conn.send(granted())
        await conn.close(4002, "resumed on another connection")

    server = fake_server(before)
    lease = client.lease(name="array-01", server=server.url, grace=30)
    client.acquire(lease)
    assert client.wait_lost(lease)
    assert lease.error.close_code == 4002
    assert "the lease was resumed on another connection" in str(lease.error)
    client.release(lease)
    assert len(server.conns) == 1


def test_a_waiter_resumes_its_place_in_the_queue(client, fake_server):
    async def before(conn: FakeConnection) -> None:
        await conn.recv()
        await conn.send(queued(2, token=TOKEN))
        await conn.close(RESTART)

    async def after(conn: FakeConnection) -> None:
        assert await conn.recv() == resume_of()
        await conn.send(queued(1))
        await conn.send(granted())
        await conn.serve_until_closed()

    server = fake_server(before, after)
    positions: list[int] = []
    lease = client.lease(name="array-01", server=server.url, wait=30,
                         on_queued=lambda l: positions.append(l.position))
    client.acquire(lease)
    assert lease.active and lease.id == "L1" and positions == [2, 1]
    client.release(lease)
    assert lease.released


def test_a_waiter_without_a_token_is_not_resumed(client, fake_server):
    async def before(conn: FakeConnection) -> None:
        await conn.recv()
        await conn.send(queued(1))  # an older server: no token
        await conn.close(RESTART)

    server = fake_server(before)
    with pytest.raises(leasehold.ConnectionLost, match="before the request was granted"):
        client.acquire(client.lease(name="array-01", server=server.url))
    assert len(server.conns) == 1


def test_released_while_resuming_releases_on_the_new_connection(client, fake_server):
    async def before(conn: FakeConnection) -> None:
        await conn.recv()
        await conn.send(granted())
        conn.server.refuse = -1
        await conn.close(RESTART)

    async def after(conn: FakeConnection) -> None:
        assert await conn.recv() == resume_of()
        await conn.send(granted())
        await conn.serve_until_closed()

    server = fake_server(before, after)
    lease = client.lease(name="array-01", server=server.url, close_timeout=30)
    client.acquire(lease)
    wait_until(lambda: server.refused >= 1, "a refused resume attempt")
    releasing = threading.Thread(target=client.release, args=(lease,))
    releasing.start()
    wait_until(lambda: lease._releasing, "release() to start")
    server.refuse = 0  # the server is back
    releasing.join(HANG_GUARD)
    assert not releasing.is_alive()
    assert server.conn(1).messages == [resume_of(), {"op": "release"}]
    assert lease.released and not lease.lost


def test_released_while_the_server_stays_down_returns_soon(client, fake_server, caplog):
    async def before(conn: FakeConnection) -> None:
        await conn.recv()
        await conn.send(granted())
        conn.server.refuse = -1
        await conn.close(RESTART)

    server = fake_server(before)
    lease = client.lease(name="array-01", server=server.url, close_timeout=1)
    client.acquire(lease)
    wait_until(lambda: server.refused >= 1, "a refused resume attempt")
    t0 = time.monotonic()
    client.release(lease)
    assert time.monotonic() - t0 < 10
    assert lease.released and not lease.lost
    assert "released while the server was unreachable" in caplog.text


# --------------------------------------------------------------- revocation


def test_a_revocation_is_lost_at_once_and_the_client_closes_when_the_holder_is_done(client, fake_server):
    async def script(conn: FakeConnection) -> None:
        assert (await conn.recv())["revoke_wait"] == 30
        await conn.send(granted())
        await conn.send({"event": "revoked", "lease": "L1", "reason": "disk shelf replaced"})
        # revoke_wait: the connection stays open until the client closes it.
        await conn.serve_until_closed()

    server = fake_server(script)
    lost = threading.Event()
    lease = client.lease(name="array-01", server=server.url, on_lost=lambda l: lost.set())
    client.acquire(lease)
    assert client.wait_lost(lease) and lost.wait(HANG_GUARD)
    assert lease.revoked and lease.revoke_reason == "disk shelf replaced" and not lease.active
    # The holder has not stopped yet: the connection is still open.
    conn = server.conn(0)
    assert not conn.closed.is_set()
    with pytest.raises(leasehold.Revoked, match="disk shelf replaced"):
        client.leave_with(lease)  # the holder stopped: now it closes
    assert conn.closed.wait(HANG_GUARD)
    assert conn.client_closed_first and conn.client_close is not None and conn.client_close.code == 1000
    assert [m["op"] for m in conn.messages] == ["acquire"]  # closed, no release op
    assert server.log.index("conn 0 sent revoked") < server.log.index("conn 0 closed by the client with 1000")


def test_a_revoked_lease_that_is_never_closed_ends_with_the_servers_4001(client, fake_server):
    async def script(conn: FakeConnection) -> None:
        await conn.recv()
        await conn.send(granted())
        await conn.send({"event": "revoked", "lease": "L1", "reason": "max_hold: held for 60 seconds"})
        await conn.close(4001, "revoked")  # revoke_wait ran out

    server = fake_server(script)
    calls: list[Any] = []
    lease = client.lease(name="array-01", server=server.url, on_lost=calls.append)
    client.acquire(lease)
    assert client.wait_lost(lease)
    assert server.conn(0).closed.wait(HANG_GUARD)
    client.release(lease)
    assert lease.revoked and lease.revoke_reason == "max_hold: held for 60 seconds"
    assert calls == [lease]  # once, at the revocation


def test_releasing_from_on_lost_closes_the_revoked_lease(client, fake_server):
    async def script(conn: FakeConnection) -> None:
        await conn.recv()
        await conn.send(granted())
        await conn.send({"event": "revoked", "lease": "L1", "reason": "now"})
        await conn.serve_until_closed()

    server = fake_server(script)
    if isinstance(client, AsyncClient):
        async def on_lost(lease: Any) -> None:
            await lease.release()
    else:
        def on_lost(lease: Any) -> None:
            lease.release()
    lease = client.lease(name="array-01", server=server.url, on_lost=on_lost)
    client.acquire(lease)
    conn = server.conn(0)
    assert conn.closed.wait(HANG_GUARD)
    assert conn.client_closed_first and conn.client_close.code == 1000
    assert lease.revoked


# ------------------------------------------------------------ pytest plugin


def run_inner(pytester: pytest.Pytester, url: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        f"--leasehold-url={url}", "-p", "no:cacheprovider", "-p", "no:randomly", *args,
        timeout=HANG_GUARD * 2,
    )


async def until_file(path: Any) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.01)


def test_a_test_runs_on_across_a_server_restart(pytester, fake_server):
    started, resumed = pytester.path / "started", pytester.path / "resumed"

    async def before(conn: FakeConnection) -> None:
        await conn.recv()
        await conn.send(granted())
        await until_file(started)
        await conn.close(RESTART, "deploy")

    async def after(conn: FakeConnection) -> None:
        assert await conn.recv() == resume_of()
        await conn.send(granted())
        resumed.write_text("yes")
        await conn.serve_until_closed()

    server = fake_server(before, after)
    pytester.makepyfile(
        test_restart=f"""
        import pathlib, time, pytest

        @pytest.mark.lease(name="array-01")
        def test_runs_across_a_restart(leased):
            pathlib.Path({str(started)!r}).write_text(leased.id)
            deadline = time.monotonic() + 60
            while not pathlib.Path({str(resumed)!r}).exists() or leased.resuming:
                assert leased.active and not leased.lost, leased.error
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert leased.active and leased.id == "L1" and leased.resources[0].epoch == 17
        """
    )
    result = run_inner(pytester, server.url, "-rP")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "*WARNING*leasehold: connection lost (the server is restarting (close code 1012: deploy)); "
        "resuming lease L1 on array-01, for up to 60s",
        "*WARNING*leasehold: resumed lease L1 on array-01 after *s",
    ])
    assert TOKEN not in result.stdout.str()
    assert server.conn(1).closed.wait(HANG_GUARD)
    assert server.conn(1).messages == [resume_of(), {"op": "release"}]


def test_the_plugin_closes_a_revoked_lease_once_its_test_stopped(pytester, fake_server):
    started, closed = pytester.path / "started", pytester.path / "closed"

    async def script(conn: FakeConnection) -> None:
        assert (await conn.recv())["revoke_wait"] == 45
        await conn.send(granted())
        await until_file(started)
        await conn.send({"event": "revoked", "lease": "L1", "reason": "disk shelf replaced"})
        await conn.serve_until_closed()
        code = conn.client_close.code if conn.client_close else None
        closed.write_text(f"{code} {'client' if conn.client_closed_first else 'server'}")

    server = fake_server(script)
    pytester.makepyfile(
        test_revoked=f"""
        import pathlib, time, pytest

        @pytest.fixture(scope="module")
        def array(lease):
            return lease(name="array-01")

        def test_interrupted(array):
            pathlib.Path({str(started)!r}).write_text(array.id)
            time.sleep(30)  # the revocation ends it

        def test_next_test_runs_after_the_close():
            # The module's lease is still the module's, but its connection
            # was closed when the interrupted test stopped.
            deadline = time.monotonic() + 30
            while not pathlib.Path({str(closed)!r}).exists():
                assert time.monotonic() < deadline, "the revoked lease's connection is still open"
                time.sleep(0.01)
        """
    )
    t0 = time.monotonic()
    result = run_inner(pytester, server.url, "--leasehold-revoke-wait=45")
    assert time.monotonic() - t0 < 25, "the revoked test was not interrupted"
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([
        "E * leasehold.errors.Revoked: lease L1 on array-01 was revoked by an admin: "
        "disk shelf replaced during this test. Ask the lab's admins before taking it again.",
    ])
    assert closed.read_text() == "1000 client"


def test_the_plugin_options_come_from_the_command_line_environment_and_ini(pytester, fake_server, monkeypatch):
    async def script(conn: FakeConnection) -> None:
        await conn.recv()
        await conn.send(granted())
        await conn.serve_until_closed()

    server = fake_server(*[script] * 4)
    seen = pytester.path / "seen.json"
    pytester.makepyfile(
        test_options=f"""
        import json, pytest

        def test_plain(lease):
            held = lease(name="array-01")
            with open({str(seen)!r}, "a") as f:
                f.write(json.dumps([held.grace, held.revoke_wait, held.resume_window, held.max_hold]) + "\\n")
        """
    )
    for var in ("LEASEHOLD_GRACE", "LEASEHOLD_REVOKE_WAIT", "LEASEHOLD_RESUME_WINDOW"):
        monkeypatch.delenv(var, raising=False)
    run_inner(pytester, server.url).assert_outcomes(passed=1)  # the defaults
    pytester.makeini("[pytest]\nleasehold_grace = 7\nleasehold_revoke_wait = 45\n"
                     "leasehold_resume_window = 90\n")
    run_inner(pytester, server.url).assert_outcomes(passed=1)
    monkeypatch.setenv("LEASEHOLD_GRACE", "3")
    run_inner(pytester, server.url).assert_outcomes(passed=1)
    run_inner(pytester, server.url, "--leasehold-grace=12", "--leasehold-revoke-wait=0",
              "--leasehold-resume-window=0").assert_outcomes(passed=1)
    rows = [json.loads(line) for line in seen.read_text().splitlines()]
    assert rows == [[None, 30, 60, None], [7, 45, 90, None], [3, 45, 90, None], [12, 0, 0, None]]
    acquires = [server.conn(i).messages[0] for i in range(4)]
    assert [(a.get("grace"), a.get("revoke_wait")) for a in acquires] == [
        (None, 30), (7, 45), (3, 45), (12, None)]

    monkeypatch.setenv("LEASEHOLD_REVOKE_WAIT", "soon")
    result = run_inner(pytester, server.url)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*LEASEHOLD_REVOKE_WAIT must be a number of seconds, got 'soon'*"])
    monkeypatch.setenv("LEASEHOLD_REVOKE_WAIT", "-1")
    result = run_inner(pytester, server.url)
    result.stderr.fnmatch_lines(["*LEASEHOLD_REVOKE_WAIT must be a number of seconds >= 0, got -1.0*"])


def test_the_marker_and_the_factory_take_the_options(pytester, fake_server):
    async def script(conn: FakeConnection) -> None:
        await conn.recv()
        await conn.send(granted(expires="2026-11-25T20:04:45Z"))
        await conn.serve_until_closed()

    server = fake_server(script, script)
    pytester.makepyfile(
        test_marker="""
        import pytest

        @pytest.mark.lease(name="array-01", grace=5, revoke_wait=None, max_hold=600)
        def test_marked(leased):
            assert leased.expires == "2026-11-25T20:04:45Z"

        def test_factory(lease):
            held = lease(name="array-01", grace=0, max_hold=60, resume_window=10)
            assert held.resume_window == 10
        """
    )
    run_inner(pytester, server.url).assert_outcomes(passed=2)
    first, second = server.conn(0).messages[0], server.conn(1).messages[0]
    assert (first["grace"], first["max_hold"], "revoke_wait" in first) == (5, 600, False)
    assert (second["grace"], second["max_hold"], second["revoke_wait"]) == (0, 60, 30)
