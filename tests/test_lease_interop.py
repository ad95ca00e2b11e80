"""Interop: the real `leasehold serve` binary with a third-party WebSocket client (`websockets`).

The binary is $LEASEHOLD_BIN, or <repo>/.build/debug/leasehold (build it with `swift build`).
"""

import contextlib
import json
import os
import pathlib
import queue
import re
import signal
import subprocess
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

REPO = pathlib.Path(__file__).resolve().parent.parent
DEADLINE = 10  # seconds: liveness only, never a speed assertion

INVENTORY = """\
resources:
  - name: switch-01
    type: switch
    labels: {speed: 100g}
    attributes: {mgmt: 10.0.0.21, ports: [1, 2]}
  - name: array-01
    type: array
"""


def binary():
    path = pathlib.Path(os.environ.get("LEASEHOLD_BIN", REPO / ".build" / "debug" / "leasehold"))
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"leasehold binary not found at {path}: run `swift build` first or set LEASEHOLD_BIN",
            pytrace=False,
        )
    return path


@pytest.fixture
def server(tmp_path):
    """Starts `leasehold serve` on a free port; yields its ws:// base URL."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    process = subprocess.Popen(
        [str(binary()), "serve", "--listen", "127.0.0.1:0", "--inventory", str(inventory), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        line = lines.get(timeout=DEADLINE)
    except queue.Empty:
        process.kill()
        pytest.fail(f"leasehold printed no listening line; stderr: {process.stderr.read()}", pytrace=False)
    match = re.fullmatch(r"leasehold listening on 127\.0\.0\.1:(\d+)\n", line)
    assert match, f"unexpected first line: {line!r}"
    yield f"ws://127.0.0.1:{match.group(1)}"
    process.terminate()
    try:
        assert process.wait(timeout=DEADLINE) == 0, "SIGTERM exits 0"
    finally:
        if process.poll() is None:
            process.kill()


def event(ws):
    message = ws.recv(timeout=DEADLINE)
    assert isinstance(message, str), "events are text messages"
    return json.loads(message)


@pytest.fixture
def clients():
    """Closes every client a test opened."""
    with contextlib.ExitStack() as stack:
        yield stack


def acquire(clients, url, want, **fields):
    ws = clients.enter_context(connect(f"{url}/v1/lease", open_timeout=DEADLINE))
    ws.send(json.dumps({"op": "acquire", "want": want, **fields}))
    return ws


def test_take_hold_and_release_a_lease_while_a_second_client_queues(server, clients):
    holder = acquire(clients, server, [{"name": "switch-01"}], holder="py/holder", meta={"job": "interop"})
    granted = event(holder)
    assert granted["event"] == "granted"
    assert granted["lease"].startswith("L")
    assert granted["resources"] == [
        {
            "name": "switch-01",
            "type": "switch",
            "labels": {"speed": "100g"},
            "attributes": {"mgmt": "10.0.0.21", "ports": [1, 2]},
            "epoch": 1,
        }
    ]

    waiter = acquire(clients, server, [{"type": "switch"}], holder="py/waiter")
    queued = event(waiter)
    assert queued == {"event": "queued", "lease": queued["lease"], "position": 1, "resume": queued["resume"]}
    assert queued["lease"] != granted["lease"]
    # Resume tokens: 128 random bits or more, one per lease.
    assert len(granted["resume"]) >= 32 and granted["resume"] != queued["resume"]

    holder.send(json.dumps({"op": "release"}))
    with pytest.raises(ConnectionClosed) as closed:
        holder.recv(timeout=DEADLINE)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000

    handed = event(waiter)
    while handed["event"] == "queued":  # a position update may come first
        handed = event(waiter)
    assert handed["event"] == "granted"
    assert handed["lease"] == queued["lease"]
    assert [r["name"] for r in handed["resources"]] == ["switch-01"]
    assert handed["resources"][0]["epoch"] == 2

    # Closing the socket (no release message) frees it too: a third client gets it at once.
    waiter.close()
    third = acquire(clients, server, [{"name": "switch-01"}], wait=5)
    assert event(third)["event"] == "granted"
    third.close()


def test_a_bad_request_is_an_error_event_then_close_4400(server, clients):
    ws = acquire(clients, server, [{"name": "switch-01", "type": "switch"}])
    error = event(ws)
    assert error["event"] == "error" and error["code"] == "bad_request" and error["message"]
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=DEADLINE)
    assert closed.value.rcvd.code == 4400


def test_wait_zero_on_a_busy_resource_is_wait_timeout_4408(server, clients):
    holder = acquire(clients, server, [{"name": "array-01"}])
    assert event(holder)["event"] == "granted"
    impatient = acquire(clients, server, [{"name": "array-01"}], wait=0)
    error = event(impatient)
    assert error["code"] == "wait_timeout"
    with pytest.raises(ConnectionClosed) as closed:
        impatient.recv(timeout=DEADLINE)
    assert closed.value.rcvd.code == 4408
    holder.close()


def test_sigterm_closes_leases_with_1001(tmp_path, clients):
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    process = subprocess.Popen(
        [str(binary()), "serve", "--listen", "127.0.0.1:0", "--inventory", str(inventory), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        port = re.search(r":(\d+)$", process.stdout.readline().strip()).group(1)
        ws = acquire(clients, f"ws://127.0.0.1:{port}", [{"name": "switch-01"}])
        assert event(ws)["event"] == "granted"
        process.terminate()
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=DEADLINE)
        assert closed.value.rcvd.code == 1001
        assert process.wait(timeout=DEADLINE) == 0
        assert time.monotonic() - started < DEADLINE
    finally:
        if process.poll() is None:
            process.kill()


def test_sighup_rereads_the_inventory_and_a_waiter_gets_the_new_resource(tmp_path, clients):
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    process = subprocess.Popen(
        [str(binary()), "serve", "--listen", "127.0.0.1:0", "--inventory", str(inventory), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        port = re.search(r":(\d+)$", process.stdout.readline().strip()).group(1)
        url = f"ws://127.0.0.1:{port}"
        holder = acquire(clients, url, [{"type": "array"}])
        assert event(holder)["event"] == "granted"
        waiter = acquire(clients, url, [{"type": "array"}])
        assert event(waiter)["event"] == "queued"
        inventory.write_text(INVENTORY + "  - name: array-02\n    type: array\n    attributes: {mgmt: 10.0.0.32}\n")
        process.send_signal(signal.SIGHUP)
        granted = event(waiter)
        while granted["event"] == "queued":
            granted = event(waiter)
        assert granted["event"] == "granted"
        assert granted["resources"][0]["name"] == "array-02"
        assert granted["resources"][0]["attributes"] == {"mgmt": "10.0.0.32"}
    finally:
        process.terminate()
        try:
            process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
