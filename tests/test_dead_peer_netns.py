"""A lease holder behind a link that goes dead loses its lease, for real.

The holder runs in its own network namespace, joined to this one by a veth pair; mid-lease the
test takes the namespace's end of the link down. Nothing tells the server: no FIN, no reset, its
pings and the kernel's retransmissions go nowhere. The server must give the resource to the next
waiter by itself (its dead-peer timer, or TCP_USER_TIMEOUT on the socket, whichever fires first).

Needs root and `ip netns` (iproute2); skipped with the reason where either is missing.
"""

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import urllib.request

import pytest
from websockets.sync.client import connect

from test_lease_interop import DEADLINE, binary, event

INVENTORY = """\
resources:
  - name: switch-01
    type: switch
"""

DEAD_AFTER = 3  # seconds, the server's --dead-after
# Liveness only: how long the test waits for the hand-off before calling it lost. The server
# should take about DEAD_AFTER; this is far more, so a loaded machine cannot fail the test.
HANDOFF_DEADLINE = DEAD_AFTER + 60

HOLDER = r"""
import json, sys, time
from websockets.sync.client import connect
ws = connect(sys.argv[1] + "/v1/lease", open_timeout=10)
ws.send(json.dumps({"op": "acquire", "want": [{"name": "switch-01"}], "holder": "behind-the-veth"}))
print(ws.recv(timeout=10), flush=True)
time.sleep(3600)  # holds until the test kills it; by then the link is long dead
"""


def ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


@pytest.fixture
def namespace():
    """A namespace `ns` with address 10.213.N.2, joined to 10.213.N.1 here; yields (ns, host, peer)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed")
    tag = os.getpid() % 10000
    ns, host_end, ns_end = f"lh-dead-{tag}", f"lhh{tag}", f"lhn{tag}"
    subnet = f"10.213.{tag % 250}"
    made = ip("netns", "add", ns, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        ip("link", "set", ns_end, "netns", ns)
        ip("addr", "add", f"{subnet}.1/30", "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("netns", "exec", ns, "ip", "addr", "add", f"{subnet}.2/30", "dev", ns_end)
        ip("netns", "exec", ns, "ip", "link", "set", ns_end, "up")
        ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, f"{subnet}.1", ns_end
    finally:
        ip("netns", "del", ns, check=False)  # takes the veth pair with it
        ip("link", "del", host_end, check=False)


def start_server(tmp_path, *listen):
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    command = [str(binary()), "serve", "--inventory", str(inventory), "--log-level", "warning",
               "--ping-interval", "1", "--dead-after", str(DEAD_AFTER)]
    for address in listen:
        command += ["--listen", address]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    ports = []
    for _ in listen:
        try:
            line = lines.get(timeout=DEADLINE)
        except queue.Empty:
            process.kill()
            pytest.fail(f"leasehold printed no listening line; stderr: {process.stderr.read()}", pytrace=False)
        match = re.fullmatch(r"leasehold listening on [0-9.]+:(\d+)\n", line)
        assert match, f"unexpected line: {line!r}"
        ports.append(int(match.group(1)))
    return process, ports


def test_a_holder_whose_link_is_cut_loses_its_lease_to_the_next_waiter(namespace, tmp_path):
    ns, host_address, ns_end = namespace
    server, (veth_port, local_port) = start_server(tmp_path, f"{host_address}:0", "127.0.0.1:0")
    holder = None
    try:
        holder = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", HOLDER, f"ws://{host_address}:{veth_port}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        granted = json.loads(holder.stdout.readline() or "{}")
        assert granted.get("event") == "granted", f"holder got {granted}; stderr: {holder.stderr.read() if holder.poll() is not None else ''}"

        with connect(f"ws://127.0.0.1:{local_port}/v1/lease", open_timeout=DEADLINE) as waiter:
            waiter.send(json.dumps({"op": "acquire", "want": [{"name": "switch-01"}], "holder": "next"}))
            assert event(waiter)["event"] == "queued"

            # The cut: the namespace's end goes down, so the host's end loses its carrier and
            # every packet to the holder is dropped without a word.
            ip("netns", "exec", ns, "ip", "link", "set", ns_end, "down")

            answer = json.loads(waiter.recv(timeout=HANDOFF_DEADLINE))
            while answer["event"] == "queued":
                answer = json.loads(waiter.recv(timeout=HANDOFF_DEADLINE))
            assert answer["event"] == "granted"
            assert [r["name"] for r in answer["resources"]] == ["switch-01"]
            assert answer["resources"][0]["epoch"] == granted["resources"][0]["epoch"] + 1

            # Read while the new holder still holds, so only the old lease's end is counted.
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{local_port}/metrics", timeout=DEADLINE).read().decode()
        ended = {reason: float(value) for reason, value in
                 re.findall(r'leasehold_releases_total\{reason="(\w+)"\} (\S+)', metrics)}
        # The server's own timer says dead_peer; TCP_USER_TIMEOUT failing the socket first says
        # disconnect. Either way the lease ended without the holder saying a word.
        assert ended.get("dead_peer", 0) + ended.get("disconnect", 0) == 1, metrics
        assert ended.get("release", 0) == 0
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        server.terminate()
        try:
            server.wait(timeout=DEADLINE)
        finally:
            if server.poll() is None:
                server.kill()
