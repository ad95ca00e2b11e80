"""The asyncio client against the real server."""

from __future__ import annotations

import asyncio
import time

import pytest

import leasehold


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_alease_and_release(server):
    async def main():
        async with leasehold.alease(
            want=[{"type": "array", "labels": {"proto": "fc"}}], server=server.url, wait=5,
            holder="tests/async",
        ) as lease:
            assert isinstance(lease, leasehold.AsyncLease)
            assert lease.id.startswith("L") and lease.active
            res = lease.resources[0]
            assert res.name in ("array-01", "array-02") and res.attributes["mgmt"].startswith("10.0.0.")
            assert server.state_of(res.name) == "held"
        assert lease.released and not lease.lost
        return res.name

    name = run(main())
    server.wait_state(name, "free")


def test_async_queueing_never_overlaps(server):
    intervals: list[tuple[float, float]] = []
    positions: list[int] = []

    async def on_queued(lease):  # a coroutine callback is awaited
        positions.append(lease.position)

    async def user():
        async with leasehold.alease(name="switch-01", server=server.url, wait=10, on_queued=on_queued) as lease:
            assert lease.names == ["switch-01"]
            t0 = time.monotonic()
            await asyncio.sleep(0.2)
            intervals.append((t0, time.monotonic()))

    async def main():
        await asyncio.gather(user(), user(), user())

    run(main())
    assert len(intervals) == 3
    intervals.sort()
    for (_, end), (start, _) in zip(intervals, intervals[1:]):
        assert start >= end, intervals
    assert positions and set(positions) <= {1, 2}


def test_async_errors(server):
    async def main():
        with pytest.raises(leasehold.Unsatisfiable) as info:
            await leasehold.alease(type="tape-library", server=server.url).acquire()
        assert info.value.close_code == 4404
        with pytest.raises(leasehold.BadRequest):
            await leasehold.alease(type="array", count=-1, server=server.url).acquire()
        async with leasehold.alease(name="array-03", server=server.url):
            t0 = time.monotonic()
            with pytest.raises(leasehold.WaitTimeout) as info:
                await leasehold.alease(name="array-03", server=server.url, wait=0.5).acquire()
            assert info.value.code == "wait_timeout"
            assert 0.4 <= time.monotonic() - t0 < 5

    run(main())


def test_async_refused(server):
    url = server.url
    server.stop()

    async def main():
        with pytest.raises(leasehold.ConnectionRefused, match="LEASEHOLD_URL"):
            await leasehold.alease(type="array", server=url, open_timeout=3).acquire()

    run(main())


def test_async_revoked(server):
    seen: list[str] = []

    async def on_lost(lease):
        seen.append(lease.revoke_reason)

    async def main():
        lease = leasehold.alease(type="switch", server=server.url, on_lost=on_lost)
        with pytest.raises(leasehold.Revoked, match="switch-01.*rack move"):
            async with lease:
                status = await asyncio.get_running_loop().run_in_executor(
                    None, server.free, "switch-01", "rack move"
                )
                assert status == 200
                assert await lease.wait_lost(5)
                assert lease.revoked and lease.lost
        return lease

    lease = run(main())
    assert seen == ["rack move"]
    assert lease.error.reason == "rack move"
