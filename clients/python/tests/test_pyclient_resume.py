"""Durable leases end to end, against the real server: a lease (and a pytest
test using it) held across a SIGTERM + restart of a server that keeps state,
across a crash with `grace`, revocations that wait for the holder to close
(`revoke_wait`), and `max_hold`."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pytest

import leasehold

HANG_GUARD = 60.0


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = HANG_GUARD) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g}s for {what}")
        time.sleep(0.02)
    return value


def lease_entry(server: Any, lease_id: str) -> dict[str, Any] | None:
    for entry in server.status()["leases"]:
        if entry["id"] == lease_id:
            return entry  # type: ignore[no-any-return]
    return None


def resumed_on(server: Any, lease: Any) -> bool:
    """The server shows ``lease`` granted (no longer orphaned) and the client
    has taken in the answer to its resume."""
    entry = lease_entry(server, lease.id)
    return entry is not None and entry["state"] == "granted" and not lease.resuming


def resource_entry(server: Any, name: str) -> dict[str, Any]:
    return next(r for r in server.status()["resources"] if r["name"] == name)


def stateful(server_factory: Callable[..., Any], tmp_path: Path) -> Any:
    """A server that keeps its leases across restarts."""
    return server_factory(None, "--state-dir", str(tmp_path / "state"))


def sigterm(server: Any) -> None:
    server.stop()


def kill_9(server: Any) -> None:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(HANG_GUARD)


def restart(server_factory: Callable[..., Any], server: Any, tmp_path: Path,
            stop: Callable[[Any], None] = sigterm) -> Any:
    """Stop ``server`` (SIGTERM by default) and start it again: same state,
    inventory and port."""
    stop(server)
    return server_factory(None, "--state-dir", str(tmp_path / "state"), workdir=server.workdir,
                          listen=f"127.0.0.1:{server.port}")


# ------------------------------------------------------------------ restart


def test_a_lease_is_held_across_a_sigterm_and_restart(server_factory, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="leasehold")
    server = stateful(server_factory, tmp_path)
    lost: list[Any] = []
    lease = leasehold.lease(want=[{"name": "array-01"}, {"type": "switch"}], server=server.url,
                            holder="tests/restart", wait=10, on_lost=lost.append).acquire()
    before = [(r.name, r.epoch) for r in lease.resources]
    lease_id = lease.id
    assert lease_entry(server, lease_id)["state"] == "granted"

    server.stop()  # SIGTERM: a server with a state dir closes with 1012 and keeps the lease
    wait_until(lambda: lease.resuming, "the client to start resuming")
    # Nothing listens now: the client keeps trying, and the lease counts as held.
    assert lease.active and not lease.lost and lease.error is None

    again = restart(server_factory, server, tmp_path, stop=lambda s: None)
    wait_until(lambda: resumed_on(again, lease), "the resume")
    assert lease.active and not lease.lost and lost == [], lease.error
    assert lease.id == lease_id
    assert [(r.name, r.epoch) for r in lease.resources] == before
    entry = wait_until(lambda: lease_entry(again, lease_id), "the resumed lease in the snapshot")
    assert entry["state"] == "granted" and entry["holder"] == "tests/restart"
    assert sorted(entry["resources"]) == ["array-01", "switch-01"]
    # Still the holder's: nobody else gets it.
    with pytest.raises(leasehold.WaitTimeout):
        leasehold.lease(name="array-01", server=again.url, wait=0).acquire()

    warnings = [r.getMessage() for r in caplog.records]
    assert any(w.startswith("leasehold: connection lost (the server is restarting (close code 1012")
               and f"resuming lease {lease_id} on array-01, switch-01" in w for w in warnings), warnings
    assert any(w.startswith(f"leasehold: resumed lease {lease_id}") for w in warnings), warnings

    lease.release()
    assert lease.released and not lease.lost
    again.wait_state("array-01", "free", timeout=10)
    # Granted anew after the restart: the epoch goes on growing.
    with leasehold.lease(name="array-01", server=again.url, wait=5) as fresh:
        assert fresh.resources[0].epoch > before[0][1]


def test_the_async_client_resumes_across_a_restart(server_factory, tmp_path):
    server = stateful(server_factory, tmp_path)
    holder: dict[str, Any] = {}

    async def main() -> None:
        async with leasehold.alease(name="switch-01", server=server.url, wait=10) as lease:
            holder["before"] = (lease.id, lease.resources[0].epoch)
            loop = asyncio.get_running_loop()
            holder["server"] = await loop.run_in_executor(
                None, lambda: restart(server_factory, server, tmp_path))
            deadline = time.monotonic() + HANG_GUARD
            while not await loop.run_in_executor(None, resumed_on, holder["server"], lease):
                assert lease.active and not lease.lost, lease.error
                assert time.monotonic() < deadline, "not resumed"
                await asyncio.sleep(0.02)
            assert lease.active and not lease.lost
            holder["after"] = (lease.id, lease.resources[0].epoch)
            entry = await loop.run_in_executor(None, lease_entry, holder["server"], lease.id)
            assert entry is not None and entry["state"] == "granted"
        assert lease.released and not lease.lost

    asyncio.run(asyncio.wait_for(main(), HANG_GUARD * 2))
    assert holder["after"] == holder["before"]
    holder["server"].wait_state("switch-01", "free", timeout=10)


def test_a_waiter_keeps_its_place_across_a_restart(server_factory, tmp_path):
    server = stateful(server_factory, tmp_path)
    first = leasehold.lease(name="array-03", server=server.url).acquire()
    positions: list[int] = []
    outcome: dict[str, Any] = {}

    def wait_for_it() -> None:
        try:
            outcome["lease"] = leasehold.lease(name="array-03", server=server.url, wait=120,
                                               on_queued=lambda l: positions.append(l.position)).acquire()
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    wait_until(lambda: positions, "the waiter to be queued")
    again = restart(server_factory, server, tmp_path)
    wait_until(lambda: resumed_on(again, first), "the holder to resume")
    wait_until(lambda: again.status()["queue"], "the waiter back in the queue")
    first.release()
    waiter.join(HANG_GUARD)
    assert "error" not in outcome, outcome.get("error")
    second = outcome["lease"]
    assert second.active and second.names == ["array-03"]
    assert second.resources[0].epoch > first.resources[0].epoch
    second.release()


def test_a_crash_is_survived_by_a_lease_with_grace(server_factory, tmp_path):
    server = stateful(server_factory, tmp_path)
    lease = leasehold.lease(name="array-02", server=server.url, grace=60).acquire()
    epoch = lease.resources[0].epoch
    again = restart(server_factory, server, tmp_path, stop=kill_9)  # no close frame: a drop
    wait_until(lambda: resumed_on(again, lease), "the resume")
    assert lease.active and not lease.lost and lease.resources[0].epoch == epoch
    lease.release()
    again.wait_state("array-02", "free", timeout=10)


def test_a_refused_resume_after_a_restart_loses_the_lease(server_factory, tmp_path):
    server = stateful(server_factory, tmp_path)
    lost = threading.Event()
    lease = leasehold.lease(name="array-01", server=server.url, on_lost=lambda l: lost.set()).acquire()
    lease._resume_token = "not-the-token"  # as if another lease's: the server must refuse it
    restart(server_factory, server, tmp_path)
    assert lost.wait(HANG_GUARD) and lease.wait_lost(HANG_GUARD)
    err = lease.error
    assert isinstance(err, leasehold.ConnectionLost) and err.close_code == 4410, err
    assert "the server refused to resume the lease (resume_refused: " in str(err)
    lease.release()


def test_a_lease_resumed_on_another_connection_is_lost_here(server):
    from websockets.sync.client import connect

    lease = leasehold.lease(name="array-02", server=server.url, grace=30).acquire()
    with connect(lease.url, open_timeout=10) as other:
        other.send(json.dumps({"op": "resume", "lease": lease.id, "token": lease._resume_token}))
        answer = json.loads(other.recv(timeout=HANG_GUARD))
        assert answer["event"] == "granted" and answer["lease"] == lease.id
        assert lease.wait_lost(HANG_GUARD)
        assert isinstance(lease.error, leasehold.ConnectionLost) and lease.error.close_code == 4002
        assert "the lease was resumed on another connection" in str(lease.error)
        # Not resumed back (that would take it from the other connection).
        assert lease_entry(server, lease.id)["state"] == "granted"
        other.send(json.dumps({"op": "release"}))
    server.wait_state("array-02", "free", timeout=10)
    lease.release()


def test_without_a_state_dir_a_stop_still_ends_the_lease(server):
    lease = leasehold.lease(name="switch-01", server=server.url).acquire()
    server.stop()
    assert lease.wait_lost(HANG_GUARD)
    assert isinstance(lease.error, leasehold.ConnectionLost) and lease.error.close_code == 1001


def test_a_pytest_test_runs_on_across_a_server_restart(pytester, server_factory, tmp_path):
    server = stateful(server_factory, tmp_path)
    started, resumed = pytester.path / "started.json", pytester.path / "resumed"
    restarted: dict[str, Any] = {}

    def operator() -> None:
        """Restart the server while the test runs; say so once its lease is back."""
        try:
            wait_until(started.exists, "the inner test to start")
            lease_id = json.loads(started.read_text())["id"]
            again = restart(server_factory, server, tmp_path)
            restarted["server"] = again
            wait_until(lambda: (lease_entry(again, lease_id) or {}).get("state") == "granted",
                       "the inner test's lease to be resumed")
            resumed.write_text("yes")
        except BaseException as exc:  # reported by the test
            restarted["error"] = exc

    pytester.makepyfile(
        test_restart=f"""
        import json, pathlib, time, pytest

        @pytest.mark.lease(name="array-01")
        def test_keeps_running(leased):
            before = (leased.id, leased.resources[0].epoch)
            pathlib.Path({str(started)!r}).write_text(json.dumps({{"id": leased.id}}))
            deadline = time.monotonic() + 90
            while not pathlib.Path({str(resumed)!r}).exists() or leased.resuming:
                assert leased.active and not leased.lost, leased.error
                assert time.monotonic() < deadline, "no restart happened"
                time.sleep(0.02)
            assert (leased.id, leased.resources[0].epoch) == before
            assert leased.active
        """
    )
    thread = threading.Thread(target=operator, daemon=True)
    thread.start()
    result = pytester.runpytest_subprocess(
        f"--leasehold-url={server.url}", "-p", "no:cacheprovider", "-rP", timeout=HANG_GUARD * 2)
    thread.join(HANG_GUARD)
    assert "error" not in restarted, restarted.get("error")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "*WARNING*leasehold: connection lost (the server is restarting (close code 1012*resuming lease L*",
        "*WARNING*leasehold: resumed lease L*",
    ])
    restarted["server"].wait_state("array-01", "free", timeout=10)


# --------------------------------------------------------------- revocation


def test_a_revoked_lease_keeps_its_resources_until_the_holder_closed(server):
    lost = threading.Event()
    holder = leasehold.lease(name="array-01", server=server.url, revoke_wait=30,
                             on_lost=lambda l: lost.set()).acquire()
    assert server.free("array-01", reason="disk shelf replaced") == 200
    assert lost.wait(HANG_GUARD)
    assert holder.revoked and holder.revoke_reason == "disk shelf replaced" and not holder.active
    # The holder has not closed yet: nobody else gets the resource.
    assert lease_entry(server, holder.id)["state"] == "revoking"
    assert resource_entry(server, "array-01")["state"] == "held"
    with pytest.raises(leasehold.WaitTimeout):
        leasehold.lease(name="array-01", server=server.url, wait=0).acquire()
    # A second free without `now` changes nothing.
    assert 200 <= server.free("array-01", reason="again") < 300
    assert lease_entry(server, holder.id)["state"] == "revoking"

    got: dict[str, Any] = {}
    queued = threading.Event()

    def next_holder() -> None:
        try:
            got["lease"] = leasehold.lease(name="array-01", server=server.url, wait=HANG_GUARD,
                                           on_queued=lambda l: queued.set()).acquire()
        except BaseException as exc:  # reported below
            got["error"] = exc

    waiter = threading.Thread(target=next_holder)
    waiter.start()
    assert queued.wait(HANG_GUARD)
    assert "lease" not in got
    t0 = time.monotonic()
    holder.release()  # the holder has stopped: it closes, the server hands the resource on
    waiter.join(HANG_GUARD)
    assert "error" not in got, got.get("error")
    assert got["lease"].names == ["array-01"]
    assert time.monotonic() - t0 < 20  # not after revoke_wait's 30 s
    assert holder.revoked and not holder.released
    got["lease"].release()


def test_a_revoked_holder_that_never_closes_is_closed_after_revoke_wait(server):
    holder = leasehold.lease(name="switch-01", server=server.url, revoke_wait=1).acquire()
    assert server.free("switch-01", reason="cable swap") == 200
    assert holder.wait_lost(HANG_GUARD) and holder.revoked
    # The server gives up waiting after 1 s and frees it (closing with 4001).
    server.wait_state("switch-01", "free", timeout=HANG_GUARD)
    with leasehold.lease(name="switch-01", server=server.url, wait=5) as other:
        assert other.names == ["switch-01"]
    assert holder.revoke_reason == "cable swap"
    holder.release()


def test_a_free_now_frees_at_once_whatever_revoke_wait(server):
    holder = leasehold.lease(name="array-02", server=server.url, revoke_wait=30).acquire()
    assert server.free("array-02", reason="emergency", now=True) == 200
    assert holder.wait_lost(HANG_GUARD) and holder.revoked and holder.revoke_reason == "emergency"
    with leasehold.lease(name="array-02", server=server.url, wait=10) as other:
        assert other.names == ["array-02"]
    holder.release()


def test_the_plugin_hands_a_revoked_resource_on_once_the_test_stopped(pytester, server):
    started = pytester.path / "started"
    pytester.makepyfile(
        test_rev=f"""
        import pathlib, time, pytest

        @pytest.fixture(scope="module")
        def array(lease):
            return lease(name="array-01")

        def test_interrupted(array):
            pathlib.Path({str(started)!r}).write_text(array.id)
            time.sleep(30)

        def test_resource_is_free_for_others_now(pytestconfig):
            import leasehold
            url = pytestconfig.getoption("--leasehold-url")
            with leasehold.lease(name="array-01", server=url, wait=10) as other:
                assert other.names == ["array-01"]
        """
    )
    outcome: dict[str, Any] = {}

    def admin() -> None:
        wait_until(started.exists, "the inner test to start")
        outcome["status"] = server.free("array-01", reason="swap")

    thread = threading.Thread(target=admin, daemon=True)
    thread.start()
    t0 = time.monotonic()
    result = pytester.runpytest_subprocess(
        f"--leasehold-url={server.url}", "--leasehold-revoke-wait=50", "-p", "no:cacheprovider",
        "-p", "no:randomly", timeout=HANG_GUARD * 2)
    thread.join(HANG_GUARD)
    assert outcome.get("status") == 200
    # Interrupted, and the next test got the resource well before revoke_wait ran out.
    assert time.monotonic() - t0 < 40
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["E * leasehold.errors.Revoked: lease L* on array-01 was revoked by an admin: swap*"])


# ------------------------------------------------------------------ max_hold


def test_max_hold_sets_expires_and_revokes_the_lease(server):
    with leasehold.lease(name="array-03", server=server.url, max_hold=1, revoke_wait=None,
                         raise_if_lost=False) as lease:
        assert lease.expires is not None
        expires = datetime.fromisoformat(lease.expires.replace("Z", "+00:00"))
        assert expires.tzinfo is not None
        assert lease.wait_lost(HANG_GUARD)
        assert lease.revoked
        # "S being the lease's limit as a JSON number"
        assert re.fullmatch(r"max_hold: held for 1(\.0)? seconds", lease.revoke_reason), lease.revoke_reason
    server.wait_state("array-03", "free", timeout=10)
