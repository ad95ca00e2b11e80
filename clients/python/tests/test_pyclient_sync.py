"""The blocking client against the real server."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import re
import time

import pytest

import leasehold
from leasehold.model import build_want, lease_url


def test_lease_and_release(server):
    with leasehold.lease(
        want=[{"type": "array", "labels": {"proto": "fc"}}],
        server=server.url,
        wait=10,
        holder="tests/lease-and-release",
        meta={"test": "test_lease_and_release"},
    ) as lease:
        assert lease.id and lease.id.startswith("L")
        assert lease.active and lease.granted
        assert len(lease.resources) == 1
        res = lease.resources[0]
        assert res.name in ("array-01", "array-02")
        assert res.type == "array"
        assert res.labels["proto"] == "fc"
        assert res.attributes["mgmt"] == {"array-01": "10.0.0.11", "array-02": "10.0.0.12"}[res.name]
        assert res.epoch >= 1
        assert server.state_of(res.name) == "held"
        name, epoch = res.name, res.epoch
    assert lease.released and not lease.active
    assert not lease.lost and not lease.revoked and lease.error is None
    server.wait_state(name, "free")
    # Granted again: the fencing epoch grows.
    with leasehold.lease(name=name, server=server.url, wait=0) as again:
        assert again.resources[0].name == name
        assert again.resources[0].epoch > epoch
        assert again.id != lease.id


def test_shorthand_count_and_want_order(server):
    with leasehold.lease(type="array", count=2, labels={"proto": "fc"}, server=server.url, wait=5) as lease:
        assert sorted(lease.names) == ["array-01", "array-02"]
    want = [{"name": "switch-01"}, {"type": "array", "labels": {"proto": "iscsi"}}]
    with leasehold.lease(want=want, server=server.url, wait=5) as lease:
        assert lease.names == ["switch-01", "array-03"]
        assert [r.type for r in lease.resources] == ["switch", "array"]


def test_queueing_between_two_threads_never_overlaps(server):
    intervals: list[tuple[str, float, float]] = []
    positions: list[tuple[str, int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(tag: str) -> None:
        try:
            start.wait()
            for _ in range(3):
                with leasehold.lease(
                    type="array",
                    labels={"proto": "iscsi"},
                    server=server.url,
                    wait=20,
                    holder=f"thread-{tag}",
                    on_queued=lambda l: positions.append((tag, l.position)),
                ) as lease:
                    assert lease.names == ["array-03"]
                    t0 = time.monotonic()
                    time.sleep(0.15)
                    intervals.append((tag, t0, time.monotonic()))
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(tag,)) for tag in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(intervals) == 6
    assert {tag for tag, _, _ in intervals} == {"a", "b"}
    ordered = sorted(intervals, key=lambda i: i[1])
    for (_, _, end), (_, start_next, _) in zip(ordered, ordered[1:]):
        assert start_next >= end, f"leases overlapped: {ordered}"
    # Somebody had to wait, and was told its position.
    assert positions and all(pos == 1 for _, pos in positions)


def test_unsatisfiable(server):
    with pytest.raises(leasehold.Unsatisfiable) as info:
        leasehold.lease(type="tape-library", server=server.url, wait=5).acquire()
    assert info.value.code == "unsatisfiable" and info.value.close_code == 4404
    assert str(info.value).endswith("(the server's status page, or `leasehold status`).")
    with pytest.raises(leasehold.Unsatisfiable):
        leasehold.lease(type="array", count=4, server=server.url).acquire()
    with pytest.raises(leasehold.Unsatisfiable):
        leasehold.lease(name="array-99", server=server.url).acquire()
    with pytest.raises(leasehold.Unsatisfiable):
        leasehold.lease(want=[{"name": "array-01"}, {"name": "array-01"}], server=server.url).acquire()
    assert isinstance(info.value, leasehold.RequestError)
    assert isinstance(info.value, leasehold.LeaseholdError)


def test_bad_request(server):
    with pytest.raises(leasehold.BadRequest) as info:
        leasehold.lease(type="array", count=0, server=server.url).acquire()
    assert info.value.code == "bad_request" and info.value.close_code == 4400
    assert "Fix the request" in str(info.value)
    with pytest.raises(leasehold.BadRequest):
        leasehold.lease(want=[], server=server.url).acquire()
    with pytest.raises(leasehold.BadRequest):
        leasehold.lease(want=[{"name": "array-01", "type": "array"}], server=server.url).acquire()
    with pytest.raises(leasehold.BadRequest):
        leasehold.lease(type="array", holder="h" * 201, server=server.url).acquire()


def test_wait_timeout(server):
    with leasehold.lease(name="array-03", server=server.url, wait=5):
        t0 = time.monotonic()
        with pytest.raises(leasehold.WaitTimeout) as info:
            leasehold.lease(name="array-03", server=server.url, wait=0).acquire()
        assert info.value.code == "wait_timeout" and info.value.close_code == 4408
        # How long, what for, held by whom, and the option that sets the wait.
        text = str(info.value)
        assert "waited 0s" in text and "asked for array-03 with wait=0" in text, text
        assert re.search(r"held by lease L\w+ of .+ \(array-03\)", text), text
        assert "--leasehold-wait" in text and "wait=None" in text, text
        assert time.monotonic() - t0 < 3

        positions: list[int] = []
        t0 = time.monotonic()
        with pytest.raises(leasehold.WaitTimeout):
            leasehold.lease(
                type="array", labels={"proto": "iscsi"}, server=server.url, wait=0.6,
                on_queued=lambda l: positions.append(l.position),
            ).acquire()
        elapsed = time.monotonic() - t0
        assert 0.5 <= elapsed < 5, elapsed
        assert positions == [1]
    # The waiter that timed out left the queue: the resource is free once released.
    server.wait_state("array-03", "free")


def test_revoked_while_held(server):
    lost: list[leasehold.Lease] = []
    ended = threading.Event()

    def on_lost(lease):
        lost.append(lease)
        ended.set()

    lease = leasehold.lease(name="array-01", server=server.url, wait=5, on_lost=on_lost)
    with pytest.raises(leasehold.Revoked) as info:
        with lease:
            assert server.free("array-01", reason="firmware upgrade, ticket 42") == 200
            assert ended.wait(5), "on_lost was not called"
            assert lease.revoked and lease.lost and not lease.active
            assert lease.revoke_reason == "firmware upgrade, ticket 42"
    # Leaving the block raised the revocation, naming resource and reason.
    err = info.value
    assert err is lease.error
    assert err.reason == "firmware upgrade, ticket 42"
    assert err.resource_names == ["array-01"]
    assert "array-01" in str(err) and "firmware upgrade, ticket 42" in str(err)
    assert lost == [lease]
    with pytest.raises(leasehold.Revoked):
        lease.check()
    # The resource went back to the pool.
    with leasehold.lease(name="array-01", server=server.url, wait=5) as again:
        assert again.names == ["array-01"]


def test_revoked_without_raising_on_exit(server):
    with leasehold.lease(name="switch-01", server=server.url, raise_if_lost=False) as lease:
        assert server.free("switch-01", reason="cable swap") == 200
        assert lease.wait_lost(5)
    assert lease.revoked and lease.revoke_reason == "cable swap"


def test_connection_lost_when_server_stops(server):
    fired = threading.Event()
    lease = leasehold.lease(type="switch", server=server.url, on_lost=lambda l: fired.set()).acquire()
    server.stop()
    assert fired.wait(10)
    assert lease.lost and not lease.revoked
    assert isinstance(lease.error, leasehold.ConnectionLost)
    assert lease.error.close_code == 1001
    assert "switch-01" in str(lease.error)
    assert str(lease.error).endswith("Check that the server is up (its /healthz, or `leasehold status`), then ask again.")
    lease.release()  # harmless after the end
    assert not lease.released


def test_crashed_holder_loses_nothing(server):
    """A process that dies holding a lease gives it back: the connection is the lease."""
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import os, sys, leasehold
            l = leasehold.lease(name="array-02", server={server.url!r}, wait=5).acquire()
            print("held", flush=True)
            sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        assert server.state_of("array-02") == "held"
        child.kill()
        child.wait()
        with leasehold.lease(name="array-02", server=server.url, wait=10) as lease:
            assert lease.names == ["array-02"]
    finally:
        if child.poll() is None:
            child.kill()


def test_connection_refused_says_what_to_do(server):
    url = server.url
    server.stop()
    with pytest.raises(leasehold.ConnectionRefused) as info:
        leasehold.lease(type="array", server=url, open_timeout=3).acquire()
    text = str(info.value)
    assert url in text and "LEASEHOLD_URL" in text and "--leasehold-url" in text
    assert isinstance(info.value, leasehold.LeaseholdError)


def test_handshake_error_for_a_wrong_path(server):
    with pytest.raises(leasehold.HandshakeError) as info:
        leasehold.lease(type="array", server=server.url + "/not-leasehold").acquire()
    assert info.value.status is not None and 400 <= info.value.status < 500
    assert isinstance(info.value, leasehold.ConnectionRefused)
    assert "leasehold server" in str(info.value)


def test_server_from_environment(server, monkeypatch):
    monkeypatch.setenv("LEASEHOLD_URL", server.url)
    with leasehold.lease(type="switch") as lease:
        assert lease.names == ["switch-01"]
        assert lease.url == server.url + "/v1/lease"


def test_url_forms():
    assert lease_url("ws://h:7400") == "ws://h:7400/v1/lease"
    assert lease_url("ws://h:7400/") == "ws://h:7400/v1/lease"
    assert lease_url("h:7400") == "ws://h:7400/v1/lease"
    assert lease_url("http://h:7400") == "ws://h:7400/v1/lease"
    assert lease_url("https://h") == "wss://h/v1/lease"
    assert lease_url("ws://h:7400/v1/lease") == "ws://h:7400/v1/lease"
    with pytest.raises(ValueError):
        lease_url("ftp://h")


def test_want_arguments():
    assert build_want(type="array") == [{"type": "array"}]
    assert build_want(type="array", count=2, labels={"proto": "fc"}) == [
        {"type": "array", "count": 2, "labels": {"proto": "fc"}}
    ]
    assert build_want(name="switch-03") == [{"name": "switch-03"}]
    assert build_want([{"name": "a"}, {"type": "b"}]) == [{"name": "a"}, {"type": "b"}]
    with pytest.raises(TypeError):
        build_want([{"name": "a"}], type="b")
    with pytest.raises(TypeError):
        build_want()
    with pytest.raises(ValueError):
        leasehold.lease(type="array", wait=-1)


def test_a_lease_token_comes_from_the_environment(server_factory, tmp_path, monkeypatch):
    tokens = tmp_path / "lease-tokens"
    tokens.write_text("team-a team-a-secret-token-01\n")
    server = server_factory(None, "--lease-token-file", str(tokens))

    monkeypatch.delenv("LEASEHOLD_LEASE_TOKEN", raising=False)
    with pytest.raises(leasehold.HandshakeError, match="LEASEHOLD_LEASE_TOKEN") as info:
        leasehold.lease(name="array-01", server=server.url, wait=5).acquire()
    assert info.value.status == 401

    monkeypatch.setenv("LEASEHOLD_LEASE_TOKEN", "team-a-secret-token-01")
    with leasehold.lease(name="array-01", server=server.url, holder="nightly", wait=5) as lease:
        holders = [entry["holder"] for entry in server.status()["leases"]]
        assert holders == ["team-a/nightly"]
        assert lease.resources[0].name == "array-01"
