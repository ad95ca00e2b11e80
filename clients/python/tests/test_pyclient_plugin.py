"""The pytest plugin, run as an inner pytest (pytester) against the real server."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

import leasehold



def run_inner(pytester: pytest.Pytester, server, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        f"--leasehold-url={server.url}", "-p", "no:cacheprovider", *args, timeout=60
    )


def free_when_started(server, started: Path, name: str, reason: str) -> threading.Thread:
    """In the background: once ``started`` exists, force-free ``name``."""
    outcome: dict[str, object] = {}

    def admin() -> None:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        outcome["status"] = server.free(name, reason=reason)

    thread = threading.Thread(target=admin, daemon=True)
    thread.outcome = outcome  # type: ignore[attr-defined]
    thread.start()
    return thread


def test_plugin_is_registered(pytester):
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--leasehold-url=URL*", "*--leasehold-wait=SECONDS*"])
    result = pytester.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.lease(*"])


def test_marker_gives_the_test_its_resources(pytester, server):
    pytester.makepyfile(
        test_marked="""
        import pytest, leasehold

        @pytest.mark.lease(type="array", labels={"proto": "fc"})
        def test_fc(leased):
            res = leased.resources[0]
            assert res.labels["proto"] == "fc" and res.type == "array"
            assert res.attributes["mgmt"] in ("10.0.0.11", "10.0.0.12")
            assert leased.active and leased.id.startswith("L")

        @pytest.mark.lease(name="array-03")
        def test_held_even_without_asking_for_leased(pytestconfig):
            url = pytestconfig.getoption("--leasehold-url")
            with pytest.raises(leasehold.WaitTimeout):
                leasehold.lease(name="array-03", server=url, wait=0).acquire()

        @pytest.mark.lease(want=[{"name": "switch-01"},
                                 {"type": "array", "count": 2, "labels": {"proto": "fc"}}],
                           wait=5)
        def test_groups_in_want_order(leased):
            assert leased.names[0] == "switch-01"
            assert sorted(leased.names[1:]) == ["array-01", "array-02"]

        def test_leased_needs_the_marker(leased):
            pass

        @pytest.mark.lease(type="tape-library")
        def test_unsatisfiable_errors():
            pass
        """
    )
    result = run_inner(pytester, server, "-rA")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_leased_needs_the_marker*",
            "the `leased` fixture needs a @pytest.mark.lease(*",
            "*ERROR at setup of test_unsatisfiable_errors*",
            "E * leasehold.errors.Unsatisfiable: unsatisfiable: *tape-library*",
        ]
    )
    for name in ("array-01", "array-02", "array-03", "switch-01"):
        server.wait_state(name, "free")


def test_lease_factory_at_function_module_and_session_scope(pytester, server):
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def switch(lease):
            return lease(name="switch-01")
        """
    )
    pytester.makepyfile(
        test_a="""
        import pytest, leasehold

        SEEN = {}

        @pytest.fixture(scope="module")
        def iscsi(lease):
            held = lease(type="array", labels={"proto": "iscsi"})
            yield held
            assert held.active  # still ours during the fixture's own teardown

        def test_one(iscsi, switch, lease):
            SEEN["module"] = iscsi.id
            SEEN["function"] = lease(name="array-01")
            assert SEEN["function"].active and switch.active

        def test_two(iscsi, switch, pytestconfig):
            assert iscsi.id == SEEN["module"]          # kept for the module
            assert SEEN["function"].released           # released after test_one
            url = pytestconfig.getoption("--leasehold-url")
            with leasehold.lease(name="array-01", server=url, wait=0):
                pass
        """,
        test_b="""
        import leasehold

        def test_module_lease_released(switch, pytestconfig):
            url = pytestconfig.getoption("--leasehold-url")
            with leasehold.lease(name="array-03", server=url, wait=0):
                pass
            with leasehold.lease(name="switch-01", server=url, wait=0.2) as other:
                raise AssertionError("the session lease should still hold switch-01")
        """,
    )
    result = run_inner(pytester, server, "-p", "no:randomly")
    # test_b's switch-01 attempt must time out (session lease), failing with WaitTimeout.
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_module_lease_released*WaitTimeout*"])
    server.wait_state("switch-01", "free")  # released when the session ended


def test_revocation_interrupts_and_fails_the_test_with_the_reason(pytester, server):
    started = pytester.path / "started"
    pytester.makepyfile(
        test_rev=f"""
        import pathlib, time, pytest

        @pytest.fixture(scope="module")
        def array(lease):
            return lease(name="array-01")

        def test_interrupted(array):
            pathlib.Path({str(started)!r}).write_text(array.id)
            time.sleep(30)  # blocked: the revocation must end it, not the sleep

        def test_later_user_fails_too(array):
            pass

        def test_unrelated_passes():
            pass
        """,
        # A later module's own `array` fixture has nothing to do with the lost lease.
        test_rev2="""
        import pytest

        @pytest.fixture(scope="module")
        def array(lease):
            return lease(name="array-01", wait=10)

        def test_fresh_lease_in_the_next_module(array):
            assert array.active and array.names == ["array-01"]
        """,
    )
    admin = free_when_started(server, started, "array-01", "disk shelf replaced (CHG-77)")
    t0 = time.monotonic()
    result = run_inner(pytester, server, "-p", "no:randomly")
    elapsed = time.monotonic() - t0
    admin.join(5)
    assert admin.outcome["status"] == 200  # type: ignore[attr-defined]
    assert elapsed < 20, f"the revoked test was not interrupted ({elapsed:.1f}s)"
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "test_rev.py FF.*",
            "test_rev2.py .*",
            "*_ test_interrupted _*",
            ">*time.sleep(30)*",
            "E * leasehold.errors.Revoked: lease L* on array-01 was revoked by an admin: "
            "disk shelf replaced (CHG-77) during this test. Ask the lab's admins before taking it again.",
            "*_ test_later_user_fails_too _*",
            "E * leasehold.errors.Revoked: lease L* on array-01 was revoked by an admin: "
            "disk shelf replaced (CHG-77) (it ended during test_rev.py::test_interrupted). Ask the lab's admins before taking it again.",
            "FAILED test_rev.py::test_interrupted - leasehold.errors.Revoked*",
            "FAILED test_rev.py::test_later_user_fails_too - leasehold.errors.Revoked*",
        ]
    )


def test_revocation_fails_a_test_that_returns_normally(pytester, server):
    started = pytester.path / "started"
    pytester.makepyfile(
        test_rev=f"""
        import pathlib, time, pytest

        @pytest.mark.lease(type="switch")
        def test_finishes_anyway(leased):
            pathlib.Path({str(started)!r}).write_text(leased.id)
            deadline = time.monotonic() + 10
            while not leased.lost and time.monotonic() < deadline:
                time.sleep(0.02)
            assert leased.revoked  # and then it returns as if all was well
        """
    )
    admin = free_when_started(server, started, "switch-01", "moved to rack 7")
    result = run_inner(pytester, server, "--leasehold-no-interrupt")
    admin.join(5)
    assert admin.outcome["status"] == 200  # type: ignore[attr-defined]
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_finishes_anyway _*",
            "E * leasehold.errors.Revoked: lease L* on switch-01 was revoked by an admin: "
            "moved to rack 7 during this test. Ask the lab's admins before taking it again.",
        ]
    )


def test_queue_position_is_reported_while_waiting(pytester, server):
    pytester.makepyfile(
        test_wait="""
        import pytest

        @pytest.mark.lease(name="array-03")
        def test_waits(leased):
            assert leased.names == ["array-03"]
        """
    )
    holder = leasehold.lease(name="array-03", server=server.url).acquire()
    timer = threading.Timer(2.0, holder.release)
    timer.start()
    try:
        result = run_inner(pytester, server)
    finally:
        timer.cancel()
        holder.release()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "leasehold: *test_waits waiting for array-03: position 1 in the queue (lease L*)",
            "leasehold: array-03 granted to *test_waits after *s in the queue (lease L*)",
        ]
    )


def test_server_unreachable_is_an_error_that_says_what_to_do(pytester, server):
    url = server.url
    server.stop()
    pytester.makepyfile(
        test_x="""
        import pytest

        @pytest.mark.lease(type="array")
        def test_needs_array(leased):
            pass
        """
    )
    result = pytester.runpytest_subprocess(f"--leasehold-url={url}", timeout=60)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ConnectionRefused: cannot reach the leasehold server at*--leasehold-url*"])


def test_xdist_workers_hold_their_own_leases(pytester, server):
    log = pytester.path / "intervals.jsonl"
    pytester.makepyfile(
        test_par=f"""
        import json, os, time, pytest

        def record(leased):
            t0 = time.monotonic()
            time.sleep(0.3)
            with open({str(log)!r}, "a") as f:
                f.write(json.dumps({{"worker": os.environ["PYTEST_XDIST_WORKER"],
                                     "lease": leased.id, "epoch": leased.resources[0].epoch,
                                     "start": t0, "end": time.monotonic()}}) + "\\n")

        @pytest.mark.parametrize("i", range(4))
        @pytest.mark.lease(name="array-03")
        def test_contended(leased, i):
            record(leased)
        """
    )
    result = run_inner(pytester, server, "-n", "2")
    result.assert_outcomes(passed=4)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 4
    assert {r["worker"] for r in rows} == {"gw0", "gw1"}
    assert len({r["lease"] for r in rows}) == 4
    assert sorted(r["epoch"] for r in rows) == sorted({r["epoch"] for r in rows})
    rows.sort(key=lambda r: r["start"])
    for a, b in zip(rows, rows[1:]):
        assert b["start"] >= a["end"], rows


def test_two_lines_in_a_conftest_are_enough(pytester, server, monkeypatch):
    """The package's promise: install it, point it at the server in a conftest.py."""
    monkeypatch.delenv("LEASEHOLD_URL", raising=False)
    pytester.makeconftest(
        # Optional (the entry point loads the plugin), and must not load it twice.
        'pytest_plugins = ["leasehold.pytest_plugin"]\n'
    )
    lab = pytester.mkpydir("lab")
    (lab / "conftest.py").write_text(
        f"import os\nos.environ.setdefault('LEASEHOLD_URL', {server.url!r})\n"
    )
    (lab / "test_lab.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.lease(type='array', labels={'proto': 'iscsi'})\n"
        "def test_array(leased):\n"
        "    assert leased.resources[0].attributes['mgmt'] == '10.0.0.13'\n\n"
        "def test_factory(lease):\n"
        "    assert lease(type='switch').names == ['switch-01']\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=2)
