"""Adversarial stress tests against the real `leasehold serve` binary (PROTOCOL.md version 1).

Seeded (LEASEHOLD_STRESS_SEED, default 1234), bounded in count and time, 127.0.0.1 only.

1. test_churn_safety_and_liveness: ~100 concurrent clients acquire / hold / release / close / reset /
   misbehave while an admin frees, disables, enables and reloads (sometimes an invalid file). Checked:
   no resource with two holders at once (client-side intervals ordered by epoch, and every sampled
   status document), epochs unique and growing per name, every grant matches its request, every
   client sees the documented terminal event and close code, the fairness invariants in every
   sampled snapshot, and afterwards: every waiter granted, nothing leaked (status, metrics).
2. test_hostile_transport: slowloris, oversized heads/bodies, half-open sockets, non-reading
   watchers of big snapshots, 2,000 connections opened and dropped, malformed frames; /healthz must
   answer within 1 s throughout and the connection count must come back.

Run: LEASEHOLD_BIN=$PWD/.build/debug/leasehold .venv/bin/python -m pytest -q tests/test_stress.py
"""

import asyncio
import contextlib
import itertools
import json
import os
import pathlib
import queue
import random
import re
import socket
import struct
import subprocess
import threading
import time

import pytest
from websockets.asyncio.client import connect
from websockets.sync.client import connect as sync_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

REPO = pathlib.Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("LEASEHOLD_STRESS_SEED", "1234"))
# Set (seconds) for soaks (scripts/soak): the server runs with this --dead-after (pinging at a
# third of it), and some holders go silent as a crashed or frozen process would.
DEAD_AFTER = float(os.environ["LEASEHOLD_STRESS_DEAD_AFTER"]) if os.environ.get("LEASEHOLD_STRESS_DEAD_AFTER") else None
TOKEN = "stress-admin-token"
REQUEST_TIMEOUT = 2.0
CLOSE_CODES = {"bad_request": 4400, "unsatisfiable": 4404, "wait_timeout": 4408,
               "request_timeout": 1008, "protocol": 1008}


# ---------------------------------------------------------------------------------------------
# Server process

def binary():
    path = pathlib.Path(os.environ.get("LEASEHOLD_BIN", REPO / ".build" / "debug" / "leasehold"))
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"leasehold binary not found at {path}: build it or set LEASEHOLD_BIN", pytrace=False)
    return path


class Server:
    def __init__(self, tmp_path, inventory_text, extra_args=()):
        self.inventory = tmp_path / "inventory.yaml"
        self.inventory.write_text(inventory_text)
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        self.stderr_path = tmp_path / "server.stderr"
        self.stderr = open(self.stderr_path, "w")
        self.process = subprocess.Popen(
            [str(binary()), "serve", "--listen", "127.0.0.1:0", "--inventory", str(self.inventory),
             "--admin-token-file", str(token_file), "--ping-interval", "1", "--dead-after", "3",
             "--request-timeout", str(REQUEST_TIMEOUT), "--log-level", "warning", *extra_args],
            stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.process.stdout], daemon=True).start()
        try:
            line = lines.get(timeout=15)
        except queue.Empty:
            self.process.kill()
            pytest.fail(f"no listening line; stderr: {self.stderr_text()}", pytrace=False)
        match = re.fullmatch(r"leasehold listening on 127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        self.port = int(match.group(1))
        self.ws = f"ws://127.0.0.1:{self.port}"

    def stderr_text(self):
        self.stderr.flush()
        return self.stderr_path.read_text()[-4000:]

    def assert_alive(self):
        assert self.process.poll() is None, f"server died with {self.process.returncode}: {self.stderr_text()}"

    def rss_kib(self):
        for line in pathlib.Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stderr.close()


# ---------------------------------------------------------------------------------------------
# HTTP over raw sockets (blocking and asyncio)

def http_request_bytes(method, path, body=b"", token=None):
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    return (head + "\r\n").encode() + body


def parse_response(data):
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else None
    return status, body


def http(port, method, path, body=b"", token=None, timeout=5.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(http_request_bytes(method, path, body, token))
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return parse_response(b"".join(chunks))


async def ahttp(port, method, path, body=b"", token=None, timeout=5.0):
    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(http_request_bytes(method, path, body, token))
            return parse_response(await reader.read())
        finally:
            writer.close()
    return await asyncio.wait_for(go(), timeout)


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"metric {name} missing")


def wait_for_connections(server, expected, timeout=8.0):
    """Polls /metrics until leasehold_connections (the request's own connection included) is
    `expected` + 1."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        status, body = http(server.port, "GET", "/metrics")
        assert status == 200
        value = metric(body.decode(), "leasehold_connections")
        if value == expected + 1:
            return
        time.sleep(0.1)
    raise AssertionError(f"leasehold_connections stays at {value}, expected {expected + 1}")


# ---------------------------------------------------------------------------------------------
# Inventory model: stable resources never change; extras are absent, or present in variant 0 or 1

STABLE = (
    [(f"array-0{i}", "array", {"proto": "fc" if i % 2 else "iscsi", "model": "af40" if i <= 3 else "af80"})
     for i in range(1, 7)]
    + [(f"switch-0{i}", "switch", {"speed": "100g" if i <= 3 else "25g", "vendor": "a" if i % 2 else "b"})
       for i in range(1, 6)]
    + [(f"host-0{i}", "host", {"os": "linux" if i <= 3 else "win", "gpu": "yes" if i % 2 else "no"})
       for i in range(1, 6)]
)
EXTRAS = {
    "array-07": [("array", {"proto": "fc", "model": "af80"}), ("array", {"proto": "iscsi", "model": "af40"})],
    "array-08": [("array", {"proto": "fc", "model": "af40"}), ("array", {"proto": "fc", "model": "af80"})],
    "switch-06": [("switch", {"speed": "100g", "vendor": "b"}), ("switch", {"speed": "25g", "vendor": "a"})],
    "host-06": [("host", {"os": "linux", "gpu": "yes"}), ("host", {"os": "win", "gpu": "no"})],
}
EXTRA_NAMES = list(EXTRAS)
ALL_NAMES = [n for n, _, _ in STABLE[:6]] + ["array-07", "array-08"] + [n for n, _, _ in STABLE[6:11]] + [
    "switch-06"] + [n for n, _, _ in STABLE[11:]] + ["host-06"]
FULL_VARIANT = (0, 0, 0, 0)  # every extra present in variant 0


def variant_resources(variant):
    """variant: tuple per extra, None = absent, 0/1 = label variant. Inventory order is ALL_NAMES."""
    table = {n: (t, labels) for n, t, labels in STABLE}
    for name, choice in zip(EXTRA_NAMES, variant):
        if choice is not None:
            table[name] = EXTRAS[name][choice]
    return [(n, *table[n]) for n in ALL_NAMES if n in table]


def inventory_yaml(variant, generation):
    lines = ["resources:"]
    for name, rtype, labels in variant_resources(variant):
        label_text = ", ".join(f"{k}: \"{v}\"" for k, v in labels.items())
        lines += [f"  - name: {name}", f"    type: {rtype}", f"    labels: {{{label_text}}}",
                  f"    attributes: {{id: {name}, gen: {generation}, mgmt: \"10.0.0.{generation % 250}\"}}"]
    return "\n".join(lines) + "\n"


INVALID_INVENTORIES = [
    "resources:\n  - name: a\n    type: x\n  - name: a\n    type: x\n",     # duplicate name
    "resources: [\n",                                                  # not YAML
    "resources: 5\n",                                                  # not a list
    "things:\n  - name: a\n    type: x\n",                             # unknown key
    "resources:\n  - name: a\n",                                       # no type
    "resources:\n  - name: a\n    type: x\n    labels: {k: [1]}\n",      # label not a string
]

ALL_VARIANTS = list(itertools.product(*[(None, 0, 1)] * len(EXTRA_NAMES)))
KNOWN_DEFS = {}  # name -> list of (type, labels) it may ever have
for _v in ALL_VARIANTS:
    for _n, _t, _l in variant_resources(_v):
        if (_t, _l) not in KNOWN_DEFS.setdefault(_n, []):
            KNOWN_DEFS[_n].append((_t, _l))


def group_matches(group, name, rtype, labels):
    if "name" in group:
        return group["name"] == name
    return group["type"] == rtype and all(labels.get(k) == v for k, v in group.get("labels", {}).items())


def max_matching(groups, resources, fixed=None):
    """Size of the largest assignment of `resources` [(name, type, labels)] to group slots."""
    slots = [gi for gi, g in enumerate(groups) for _ in range(g.get("count", 1) if "type" in g else 1)]
    owner = {}  # slot -> resource index

    def augment(ri, seen):
        name, rtype, labels = resources[ri]
        for si, gi in enumerate(slots):
            if si in seen or not group_matches(groups[gi], name, rtype, labels):
                continue
            seen.add(si)
            if si not in owner or augment(owner[si], seen):
                owner[si] = ri
                return True
        return False

    return sum(1 for ri in range(len(resources)) if augment(ri, set()))


def total_slots(groups):
    return sum(g.get("count", 1) if "type" in g else 1 for g in groups)


def satisfiable(groups, resources):
    names = [g["name"] for g in groups if "name" in g]
    if len(names) != len(set(names)):
        return False
    return max_matching(groups, resources) == total_slots(groups)


_CLASS_CACHE = {}


def classify(groups):
    """'stable' (satisfiable by every inventory variant), 'ghost' (by none) or 'maybe'."""
    key = json.dumps(groups, sort_keys=True)
    if key not in _CLASS_CACHE:
        if satisfiable(groups, variant_resources((None,) * 4)):
            _CLASS_CACHE[key] = "stable"
        elif any(satisfiable(groups, variant_resources(v)) for v in ALL_VARIANTS):
            _CLASS_CACHE[key] = "maybe"
        else:
            _CLASS_CACHE[key] = "ghost"
    return _CLASS_CACHE[key]


LABEL_CHOICES = {
    "array": [{}, {"proto": "fc"}, {"proto": "iscsi"}, {"model": "af40"}, {"proto": "fc", "model": "af80"}],
    "switch": [{}, {"speed": "100g"}, {"speed": "25g"}, {"vendor": "a"}, {"speed": "25g", "vendor": "b"}],
    "host": [{}, {"os": "linux"}, {"gpu": "yes"}, {"os": "win", "gpu": "no"}],
}


def random_want(rng):
    groups = []
    for _ in range(rng.choice([1, 1, 1, 1, 2, 2, 3])):
        if rng.random() < 0.35:
            group = {"name": rng.choice(ALL_NAMES)}
            if any(g.get("name") == group["name"] for g in groups):
                continue
        else:
            rtype = rng.choice(list(LABEL_CHOICES))
            group = {"type": rtype}
            labels = rng.choice(LABEL_CHOICES[rtype])
            if labels:
                group["labels"] = labels
            count = rng.choice([1, 1, 1, 1, 2, 2, 3])
            if count != 1 or rng.random() < 0.5:
                group["count"] = count
        groups.append(group)
    return groups


GHOST_WANTS = [
    [{"name": "ghost-01"}],
    [{"type": "router"}],
    [{"type": "array", "count": 9}],
    [{"type": "array", "labels": {"proto": "nvme"}}],
    [{"name": "array-01"}, {"name": "array-01"}],
    [{"type": "host", "labels": {"os": "linux"}, "count": 5}],
    [{"name": "switch-01"}, {"type": "switch", "labels": {"speed": "100g"}, "count": 4}],
]

BAD_MESSAGES = [
    "{not json",
    json.dumps({"want": [{"name": "array-01"}]}),
    json.dumps({"op": "grab", "want": [{"name": "array-01"}]}),
    json.dumps({"op": "acquire", "want": []}),
    json.dumps({"op": "acquire", "want": [{"type": "array"}] * 17}),
    json.dumps({"op": "acquire", "want": [{"name": "array-01", "type": "array"}]}),
    json.dumps({"op": "acquire", "want": [{"name": "array-01", "count": 1}]}),
    json.dumps({"op": "acquire", "want": [{"type": "array", "colour": "red"}]}),
    json.dumps({"op": "acquire", "want": [{"type": "array", "labels": {"proto": 1}}]}),
    json.dumps({"op": "acquire", "want": [{"type": "array", "count": 0}]}),
    json.dumps({"op": "acquire", "want": [{"type": "array", "count": -2}]}),
    json.dumps({"op": "acquire", "want": [{"type": "array", "count": "2"}]}),
    json.dumps({"op": "acquire", "want": [{"type": "array", "count": 1.5}]}),
    json.dumps({"op": "acquire", "want": [{"type": "array"}], "wait": -1}),
    json.dumps({"op": "acquire", "want": [{"type": "array"}], "holder": "h" * 201}),
    json.dumps({"op": "acquire", "want": [{"type": "array"}], "meta": {f"k{i}": "v" for i in range(17)}}),
    json.dumps({"op": "acquire", "want": [{"type": "array"}], "meta": {"k": "v" * 501}}),
    json.dumps({"op": "acquire", "want": [{"type": "array"}], "meta": {"k" * 65: "v"}}),
    json.dumps({"op": "acquire", "want": [{"type": "array"}], "meta": {"k": 1}}),
    json.dumps({"op": "release"}),
    json.dumps([1, 2, 3]),
]


# ---------------------------------------------------------------------------------------------
# Churn

class Problems:
    def __init__(self):
        self.items = []

    def add(self, text):
        if len(self.items) < 200:
            self.items.append(text)


class Closed(Exception):
    def __init__(self, code):
        self.code = code


async def recv_event(ws, timeout):
    try:
        message = await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as closed:
        raise Closed(closed.rcvd.code if closed.rcvd else None)
    assert isinstance(message, str), f"binary message from the server: {message!r}"
    return json.loads(message)


def reset(ws):
    sock = ws.transport.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()


class Churn:
    def __init__(self, server, rng, duration):
        self.server = server
        self.rng = rng
        self.duration = duration
        self.problems = Problems()
        self.grants = []          # dicts: lease, names->epoch, granted_at, stopped_at, revoked, cid
        self.stop = False
        self.all_clear_at = None  # when the admin stopped and restored everything
        self.samples = 0
        self.watch_snapshots = 0
        self.outcomes = {}
        self.generation = 0
        self.sample_state = {}    # stream -> name -> (lease, epoch) last seen held
        self.max_epoch = {}       # stream -> name -> highest epoch seen
        self.lease_epochs = {}    # (lease, name) -> epoch as granted
        self.pending_liveness = set()
        self.check_seconds = 0.0
        self.state_counts = {}

    def count(self, outcome):
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    # -- one client connection ----------------------------------------------------------------

    async def client(self, cid):
        rng = random.Random(self.rng.random())
        iteration = 0
        while not self.stop:
            iteration += 1
            kind = rng.choices(["good", "ghost", "bad", "binary_first", "idle"], [80, 12, 8, 3, 1])[0]
            try:
                await asyncio.wait_for(getattr(self, "run_" + kind)(cid, iteration, rng), 30)
            except (asyncio.TimeoutError, TimeoutError):
                self.problems.add(f"client {cid}.{iteration} ({kind}) got no terminal answer in 30 s")
            except (OSError, InvalidHandshake) as error:
                self.problems.add(f"client {cid}.{iteration} ({kind}) failed to connect: {error!r}")
            await asyncio.sleep(rng.random() * 0.05)

    async def expect_failure(self, ws, label, code, timeout=5.0):
        """The next event is `error` with `code`, then the server closes with its close code."""
        try:
            event = await recv_event(ws, timeout)
        except Closed as closed:
            self.problems.add(f"{label}: closed {closed.code} without the error event {code}")
            return
        if event.get("event") != "error" or event.get("code") != code or not event.get("message"):
            self.problems.add(f"{label}: expected error {code}, got {event}")
            return
        try:
            extra = await recv_event(ws, timeout)
            self.problems.add(f"{label}: event after the error: {extra}")
        except Closed as closed:
            if closed.code != CLOSE_CODES[code]:
                self.problems.add(f"{label}: error {code} closed with {closed.code}")
        self.count(f"error:{code}")

    async def run_ghost(self, cid, it, rng):
        want = rng.choice(GHOST_WANTS)
        if rng.random() < 0.6:
            # Labels nobody has: each a new selector, so idle selectors get swept now and then.
            want = [{"type": rng.choice(list(LABEL_CHOICES)), "labels": {"rack": f"r{rng.randrange(10**6)}"}}]
            if rng.random() < 0.5:
                want.insert(0, {"type": "array", "labels": {"proto": "fc"}})
        async with connect(f"{self.server.ws}/v1/lease", open_timeout=10, close_timeout=2) as ws:
            await ws.send(json.dumps({"op": "acquire", "want": want, "wait": rng.choice([None, 0, 1])}))
            await self.expect_failure(ws, f"ghost {want}", "unsatisfiable")

    async def run_bad(self, cid, it, rng):
        message = rng.choice(BAD_MESSAGES)
        async with connect(f"{self.server.ws}/v1/lease", open_timeout=10, close_timeout=2) as ws:
            await ws.send(message)
            await self.expect_failure(ws, f"bad {message[:80]}", "bad_request")

    async def run_binary_first(self, cid, it, rng):
        async with connect(f"{self.server.ws}/v1/lease", open_timeout=10, close_timeout=2) as ws:
            await ws.send(b'{"op":"acquire","want":[{"type":"array"}]}')
            await self.expect_failure(ws, "binary first", "protocol")

    async def run_idle(self, cid, it, rng):
        async with connect(f"{self.server.ws}/v1/lease", open_timeout=10, close_timeout=2) as ws:
            started = time.monotonic()
            await self.expect_failure(ws, "idle", "request_timeout", timeout=REQUEST_TIMEOUT + 5)
            if time.monotonic() - started < REQUEST_TIMEOUT - 0.2:
                self.problems.add("request_timeout came early")

    async def run_good(self, cid, it, rng):
        want = random_want(rng)
        cls = classify(want)
        wait = rng.choice([None, None, 0, 0, 0.05, 0.2, 0.5, 1.5, 3.0])
        label = f"client {cid}.{it} want={want} wait={wait} ({cls})"
        wait_plan = rng.choice(["patient", "patient", "patient", "release", "close", "rst", "garbage", "binary"])
        wait_patience = rng.uniform(0.1, 3.0)
        hold_plan = rng.choice(["release", "close", "rst", "binary", "second_acquire", "garbage"]
                               + (["silent"] if DEAD_AFTER else []))
        hold_time = rng.choice([0, 0.01, 0.05, 0.2, 0.5])
        message = {"op": "acquire", "want": want, "holder": f"c{cid}.{it}", "meta": {"client": str(cid)}}
        if wait is not None or rng.random() < 0.5:
            message["wait"] = wait
        ws = await connect(f"{self.server.ws}/v1/lease", open_timeout=10, close_timeout=2, max_queue=None)
        try:
            await self.good_session(ws, label, cid, want, cls, wait, message, wait_plan, wait_patience,
                                    hold_plan, hold_time)
        finally:
            if ws.transport is not None and not ws.transport.is_closing():
                ws.transport.abort()

    async def good_session(self, ws, label, cid, want, cls, wait, message, wait_plan, wait_patience,
                           hold_plan, hold_time):
        sent_at = time.monotonic()
        await ws.send(json.dumps(message))
        trace = [(round(sent_at, 4), "acquire sent")]
        lease = None
        grant = None
        queued_at = []
        acted = None             # what we did to end it (or "garbage" while it goes on)
        terminal = None          # ("error", code) / ("revoked",) received
        garbage_pending = 0      # error events owed for garbage/second acquire during the session
        act_at = None
        acted_at = None
        liveness_tracked = False
        while True:
            now = time.monotonic()
            if self.stop and wait is None and grant is None and acted is None and not liveness_tracked:
                # The churn is over: this waiter must be granted soon (checked by the caller).
                liveness_tracked = True
                self.pending_liveness.add(label)
            if self.stop and wait is None and grant is None and acted is None:
                act_at = None  # the churn is over: wait for the grant, however long
            if act_at is None:
                timeout = 20.0
            else:
                timeout = max(0.0, act_at - now)
            if self.stop and grant is not None and acted is None:
                timeout = 0.0
            try:
                event = await recv_event(ws, timeout) if timeout > 0 else None
            except (asyncio.TimeoutError, TimeoutError):
                event = None
            except Closed as closed:
                trace.append((round(time.monotonic(), 4), f"closed {closed.code}"))
                self.finish(label, cid, grant, acted, terminal, closed.code, garbage_pending)
                self.pending_liveness.discard(label)
                return
            if event is None:
                if grant is None and act_at is None:
                    self.problems.add(f"{label}: nothing for 20 s while {'queued' if queued_at else 'waiting'}")
                    reset(ws)
                    return
                # Time to act.
                plan = hold_plan if grant is not None else wait_plan
                if self.stop:
                    plan = "release"
                act_at = None
                acted_at = time.monotonic()
                trace.append((round(acted_at, 4), f"act {plan}"))
                if grant is not None and grant.get("stopped_at") is None and plan not in ("garbage", "second_acquire"):
                    grant["stopped_at"] = time.monotonic()
                if plan == "release":
                    acted = "release"
                    await ws.send(json.dumps({"op": "release"}))
                elif plan == "close":
                    acted = "close"
                    await ws.close()
                elif plan == "rst":
                    reset(ws)
                    self.count("rst")
                    self.pending_liveness.discard(label)
                    return
                elif plan == "silent":
                    # A holder that stops (it stopped using the resource above): it reads
                    # nothing and answers no ping, until the server has had time to give up on it.
                    ws.transport.pause_reading()
                    self.count("silent")
                    await asyncio.sleep(DEAD_AFTER * 1.5 + 1)
                    reset(ws)
                    self.pending_liveness.discard(label)
                    return
                elif plan == "binary":
                    acted = "binary"
                    await ws.send(b"\x00\x01binary")
                elif plan in ("garbage", "second_acquire"):
                    garbage_pending += 1
                    if plan == "garbage":
                        await ws.send(rng_garbage(cid))
                    else:
                        await ws.send(json.dumps(message))
                    if grant is not None:
                        hold_plan = "release"
                        act_at = time.monotonic() + hold_time
                    else:
                        wait_plan = "close"
                        act_at = time.monotonic() + 2 + 6 * wait_patience / 3
                elif plan == "patient":
                    pass
                continue
            kind = event.get("event")
            trace.append((round(time.monotonic(), 4), f"event {kind} {event.get('code', '')}"))
            if kind == "queued":
                if wait == 0:
                    self.problems.add(f"{label}: queued with wait 0: {event}")
                if grant is not None or terminal is not None:
                    self.problems.add(f"{label}: queued after {grant and 'grant' or terminal}: {event}")
                if not isinstance(event.get("position"), int) or event["position"] < 1:
                    self.problems.add(f"{label}: bad position {event}")
                if lease is None:
                    lease = event.get("lease")
                elif event.get("lease") != lease:
                    self.problems.add(f"{label}: lease id changed {lease} -> {event}")
                if queued_at and time.monotonic() - queued_at[-1] < 0.5:
                    self.problems.add(f"{label}: position updates {time.monotonic() - queued_at[-1]:.3f} s apart")
                queued_at.append(time.monotonic())
                if len(queued_at) == 1 and acted is None:
                    if wait_plan == "patient":
                        # Even a patient client gives up some day (not after the churn, though).
                        wait_plan = "close"
                        wait_patience = 4 + 8 * wait_patience
                    act_at = time.monotonic() + wait_patience
            elif kind == "granted":
                if grant is not None or terminal is not None:
                    self.problems.add(f"{label}: second grant or grant after {terminal}: {event}")
                    continue
                if lease is not None and event.get("lease") != lease:
                    self.problems.add(f"{label}: granted lease {event.get('lease')} but queued as {lease}")
                lease = event.get("lease")
                self.check_grant(label, want, cls, event)
                grant = {"lease": lease, "cid": cid, "label": label, "granted_at": time.monotonic(), "trace": trace,
                         "stopped_at": None, "revoked": False,
                         "epochs": {r["name"]: r["epoch"] for r in event["resources"]}}
                if acted is not None:
                    # We ended it before the grant reached us: we held nothing after acted_at.
                    grant["stopped_at"] = acted_at
                self.grants.append(grant)
                self.pending_liveness.discard(label)
                if acted is None:
                    act_at = time.monotonic() + hold_time
            elif kind == "revoked":
                if grant is None or event.get("lease") != lease or not event.get("reason"):
                    self.problems.add(f"{label}: revoked without a grant or with a bad body: {event} {trace}")
                elif grant["stopped_at"] is None:
                    grant["stopped_at"] = time.monotonic()
                if grant is not None:
                    grant["revoked"] = True
                terminal = ("revoked",)
                act_at = None
            elif kind == "error":
                code = event.get("code")
                if code == "bad_request" and garbage_pending > 0:
                    garbage_pending -= 1
                    continue
                if terminal is not None:
                    self.problems.add(f"{label}: error after terminal {terminal}: {event}")
                terminal = ("error", code)
                act_at = None
                if code == "wait_timeout":
                    if wait is None:
                        self.problems.add(f"{label}: wait_timeout without a wait")
                    elif time.monotonic() - sent_at < wait - 0.05:
                        self.problems.add(f"{label}: wait_timeout after {time.monotonic() - sent_at:.3f} s < {wait}")
                    elif time.monotonic() - sent_at > wait + 2.0:
                        self.problems.add(f"{label}: wait_timeout only after {time.monotonic() - sent_at:.3f} s")
                    if wait == 0 and queued_at:
                        self.problems.add(f"{label}: wait 0 got queued before wait_timeout")
                    if grant is not None:
                        self.problems.add(f"{label}: wait_timeout after the grant")
                elif code == "unsatisfiable":
                    if cls == "stable":
                        self.problems.add(f"{label}: unsatisfiable, yet every inventory satisfies it: {event}")
                    if grant is not None:
                        self.problems.add(f"{label}: unsatisfiable after the grant")
                elif code == "protocol":
                    if acted != "binary":
                        self.problems.add(f"{label}: protocol error without a binary message: {event}")
                else:
                    self.problems.add(f"{label}: unexpected error {event}")
            else:
                self.problems.add(f"{label}: unknown event {event}")

    def finish(self, label, cid, grant, acted, terminal, code, garbage_pending):
        if grant is not None and grant["stopped_at"] is None:
            # The server closed without a revoke or our action: that is a lost lease.
            grant["stopped_at"] = time.monotonic()
            if terminal is None and acted is None:
                self.problems.add(f"{label}: granted lease closed by the server with {code} and no event")
        if garbage_pending and terminal is None and acted in (None, "release", "close") and code in (1000,):
            # Error events for garbage may legitimately be lost only if the lease ended first.
            pass
        if terminal is not None:
            expected = 4001 if terminal[0] == "revoked" else CLOSE_CODES.get(terminal[1])
            if code != expected:
                self.problems.add(f"{label}: terminal {terminal} but close code {code} (expected {expected})")
            self.count(":".join(terminal))
        elif acted in ("release", "close"):
            if code != 1000:
                self.problems.add(f"{label}: {acted} answered with close code {code}")
            self.count(acted)
        elif acted == "binary":
            self.problems.add(f"{label}: binary message: closed {code} without a protocol error event")
        else:
            self.problems.add(f"{label}: closed by the server with {code} with no event (grant={grant is not None})")

    def check_grant(self, label, want, cls, event):
        resources = event.get("resources")
        if cls == "ghost":
            self.problems.add(f"{label}: granted an unsatisfiable request: {event}")
        if not isinstance(resources, list) or len(resources) != total_slots(want):
            self.problems.add(f"{label}: grant has {resources and len(resources)} resources, wants {total_slots(want)}")
            return
        names = [r["name"] for r in resources]
        if len(set(names)) != len(names):
            self.problems.add(f"{label}: one resource granted twice in one lease: {names}")
        index = 0
        for group in want:
            for _ in range(total_slots([group])):
                r = resources[index]
                index += 1
                if not group_matches(group, r["name"], r["type"], r["labels"]):
                    self.problems.add(f"{label}: {r['name']} {r['type']} {r['labels']} does not match group {group}"
                                      f" (want order: {names})")
                if (r["type"], r["labels"]) not in KNOWN_DEFS.get(r["name"], []):
                    self.problems.add(f"{label}: {r['name']} granted as {r['type']} {r['labels']}, never in inventory")
                if r.get("attributes", {}).get("id") != r["name"]:
                    self.problems.add(f"{label}: {r['name']} has attributes {r.get('attributes')}")
                if not isinstance(r.get("epoch"), int) or r["epoch"] < 1:
                    self.problems.add(f"{label}: bad epoch {r}")
                key = (event["lease"], r["name"])
                self.lease_epochs[key] = r["epoch"]

    # -- admin -----------------------------------------------------------------------------------

    async def admin(self):
        rng = random.Random(self.rng.random())
        current = FULL_VARIANT
        disabled = set()
        while not self.stop:
            await asyncio.sleep(rng.uniform(0.03, 0.12))
            op = rng.choices(["free", "disable", "enable", "reload", "reload_bad", "unauthorized"],
                             [30, 12, 14, 8, 3, 2])[0]
            name = rng.choice(ALL_NAMES + ["ghost-01"])
            if op == "enable" and disabled and rng.random() < 0.8:
                name = rng.choice(sorted(disabled))
            present = name in {n for n, _, _ in variant_resources(current)}
            try:
                if op in ("free", "disable", "enable"):
                    body = json.dumps({"reason": f"stress {op}"}).encode() if rng.random() < 0.5 else b""
                    status, text = await ahttp(self.server.port, "POST", f"/v1/resources/{name}/{op}", body, TOKEN)
                    if name == "ghost-01":
                        allowed = {404}
                    elif present:
                        allowed = {200, 409} if op == "free" else {200}
                    else:  # removed by a reload: gone, or retired while its lease runs on
                        allowed = {200, 404} if op == "free" else {404}
                    if status not in allowed:
                        self.problems.add(f"admin {op} {name}: {status} {text[:200]!r} (allowed {allowed})")
                    self.count(f"admin:{op}:{status}")
                    if op == "disable" and status == 200:
                        disabled.add(name)
                    elif op == "enable":
                        disabled.discard(name)
                elif op == "reload":
                    variant = tuple(rng.choice([None, 0, 1]) for _ in EXTRA_NAMES)
                    self.generation += 1
                    self.server.inventory.write_text(inventory_yaml(variant, self.generation))
                    status, text = await ahttp(self.server.port, "POST", "/v1/reload", b"", TOKEN)
                    if status != 200:
                        self.problems.add(f"admin reload: {status} {text[:300]!r}")
                    current = variant
                    self.count(f"admin:reload:{status}")
                elif op == "reload_bad":
                    self.server.inventory.write_text(rng.choice(INVALID_INVENTORIES))
                    status, text = await ahttp(self.server.port, "POST", "/v1/reload", b"", TOKEN)
                    if status != 400:
                        self.problems.add(f"admin invalid reload: {status} {text[:300]!r}")
                    self.server.inventory.write_text(inventory_yaml(current, self.generation))
                    self.count(f"admin:reload_bad:{status}")
                else:
                    status, _ = await ahttp(self.server.port, "POST", f"/v1/resources/{name}/free", b"", "wrong")
                    if status != 401:
                        self.problems.add(f"admin with a wrong token: {status}")
            except (OSError, asyncio.TimeoutError, TimeoutError) as error:
                self.problems.add(f"admin {op} {name} failed: {error!r}")
        # All clear: every resource back in service, the full inventory in force.
        self.generation += 1
        self.server.inventory.write_text(inventory_yaml(FULL_VARIANT, self.generation))
        status, text = await ahttp(self.server.port, "POST", "/v1/reload", b"", TOKEN)
        assert status == 200, text
        for name in ALL_NAMES:
            status, text = await ahttp(self.server.port, "POST", f"/v1/resources/{name}/enable", b"", TOKEN)
            if status != 200:
                self.problems.add(f"final enable {name}: {status} {text!r}")
        self.all_clear_at = time.monotonic()

    # -- status sampling -------------------------------------------------------------------------

    def check_snapshot(self, doc, where):
        started = time.monotonic()
        try:
            self._check_snapshot(doc, where)
        finally:
            self.check_seconds += time.monotonic() - started

    def _check_snapshot(self, doc, where):
        # Status responses and watch snapshots arrive interleaved, not in the order they were
        # rendered: the "never goes back" checks hold within each stream.
        max_epoch = self.max_epoch.setdefault(where, {})
        sample_state = self.sample_state.setdefault(where, {})
        resources = doc["resources"]
        leases = {lease["id"]: lease for lease in doc["leases"]}
        waiters = doc["queue"]
        waiter_ids = {w["id"] for w in waiters}
        owner = {}
        for lease in doc["leases"]:
            for name in lease["resources"]:
                if name in owner:
                    self.problems.add(f"{where}: {name} in two leases {owner[name]} and {lease['id']}")
                owner[name] = lease["id"]
        by_name = {}
        for r in resources:
            if r["name"] in by_name:
                self.problems.add(f"{where}: {r['name']} listed twice")
            by_name[r["name"]] = r
            name, state, epoch = r["name"], r["state"], r["epoch"]
            if epoch < max_epoch.get(name, 0):
                self.problems.add(f"{where}: epoch of {name} went back {max_epoch[name]} -> {epoch}")
            max_epoch[name] = max(epoch, max_epoch.get(name, 0))
            if state == "held":
                if owner.get(name) != r["lease"]:
                    self.problems.add(f"{where}: {name} held by {r['lease']} but leases say {owner.get(name)}")
                last = sample_state.get(name)
                if last is not None and last[0] != r["lease"] and epoch <= last[1]:
                    self.problems.add(f"{where}: {name} held by {r['lease']}@{epoch} after {last[0]}@{last[1]}")
                if last is not None and last[0] == r["lease"] and epoch != last[1]:
                    self.problems.add(f"{where}: {name} epoch changed within lease {r['lease']}")
                granted_epoch = self.lease_epochs.get((r["lease"], name))
                if granted_epoch is not None and granted_epoch != epoch:
                    self.problems.add(f"{where}: {name} lease {r['lease']} epoch {epoch}, granted {granted_epoch}")
                sample_state[name] = (r["lease"], epoch)
            elif state == "reserved":
                if r["lease"] not in waiter_ids:
                    self.problems.add(f"{where}: {name} reserved for {r['lease']}, not a waiter")
                if name in owner:
                    self.problems.add(f"{where}: {name} reserved but in lease {owner[name]}")
            elif state in ("free", "disabled"):
                if r["lease"] is not None or name in owner:
                    self.problems.add(f"{where}: {state} {name} has lease {r['lease']} / {owner.get(name)}")
            else:
                self.problems.add(f"{where}: unknown state {state}")
        for name in owner:
            if name not in by_name or by_name[name]["state"] != "held":
                self.problems.add(f"{where}: lease {owner[name]} lists {name} which is not shown held")
        # Queue: positions 1..n in order; reserved lists consistent; fairness invariants.
        for i, w in enumerate(waiters):
            if w["position"] != i + 1:
                self.problems.add(f"{where}: queue position {w['position']} at index {i}")
            for name in w.get("reserved", []):
                r = by_name.get(name)
                if r is None or r["state"] != "reserved" or r["lease"] != w["id"]:
                    self.problems.add(f"{where}: waiter {w['id']} lists reserved {name}: {r}")
        if set(leases) & waiter_ids:
            self.problems.add(f"{where}: lease both granted and waiting: {set(leases) & waiter_ids}")
        for r in resources:
            self.state_counts[r["state"]] = self.state_counts.get(r["state"], 0) + 1
        self.state_counts["waiters"] = self.state_counts.get("waiters", 0) + len(waiters)
        free = [(r["name"], r["type"], r["labels"]) for r in resources if r["state"] == "free"]
        for i, w in enumerate(waiters):
            mine = [(by_name[n]["name"], by_name[n]["type"], by_name[n]["labels"])
                    for n in w.get("reserved", []) if n in by_name]
            have = max_matching(w["want"], mine)
            if have == total_slots(w["want"]):
                self.problems.add(f"{where}: waiter {w['id']} holds a full assignment but waits: {w}")
                continue
            for candidate in free:
                if not any(group_matches(g, *candidate) for g in w["want"]):
                    continue
                if max_matching(w["want"], mine + [candidate]) > have:
                    self.problems.add(f"{where}: free {candidate[0]} is usable by waiter {w['id']} {w['want']}")
                    break
            for later in waiters[i + 1:]:
                for name in later.get("reserved", []):
                    candidate = (name, by_name[name]["type"], by_name[name]["labels"])
                    if not any(group_matches(g, *candidate) for g in w["want"]):
                        continue
                    if max_matching(w["want"], mine + [candidate]) > have:
                        self.problems.add(f"{where}: {name} reserved by later {later['id']} is usable by "
                                          f"earlier {w['id']} {w['want']} (reserved {w.get('reserved')})")

    async def sampler(self):
        while not self.stop or self.all_clear_at is None:
            try:
                status, body = await ahttp(self.server.port, "GET", "/v1/status")
                if status != 200:
                    self.problems.add(f"/v1/status answered {status}")
                else:
                    self.check_snapshot(json.loads(body), "status")
                    self.samples += 1
            except (OSError, asyncio.TimeoutError, TimeoutError) as error:
                self.problems.add(f"/v1/status failed: {error!r}")
            await asyncio.sleep(0.03)

    async def watcher(self, done):
        async with connect(f"{self.server.ws}/v1/watch", open_timeout=10, max_size=None) as ws:
            started = time.monotonic()
            while not done.is_set():
                try:
                    message = await asyncio.wait_for(ws.recv(), 0.5)
                except (asyncio.TimeoutError, TimeoutError):
                    continue
                doc = json.loads(message)
                if doc.get("event") != "snapshot":
                    self.problems.add(f"watch: {doc.get('event')}")
                    continue
                self.watch_snapshots += 1
                self.check_snapshot(doc, "watch")
            elapsed = time.monotonic() - started
            if self.watch_snapshots > elapsed * 10 + 3:
                self.problems.add(f"watch: {self.watch_snapshots} snapshots in {elapsed:.1f} s (> 10/s)")

    async def run(self, clients):
        done = asyncio.Event()
        watch_task = asyncio.create_task(self.watcher(done))
        tasks = [asyncio.create_task(self.client(cid)) for cid in range(clients)]
        admin_task = asyncio.create_task(self.admin())
        sampler_task = asyncio.create_task(self.sampler())
        await asyncio.sleep(self.duration)
        self.stop = True
        await admin_task
        await sampler_task
        # Liveness: every remaining waiter is granted within a few seconds of the all-clear.
        _, pending = await asyncio.wait(tasks, timeout=8)
        stuck = sorted(self.pending_liveness)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        done.set()
        await watch_task
        return stuck, len(pending)


@pytest.fixture
def churn_server(tmp_path):
    loops = os.environ.get("LEASEHOLD_STRESS_LOOPS")
    args = ["--loops", loops] if loops else []
    if DEAD_AFTER:
        args += ["--ping-interval", str(max(0.5, DEAD_AFTER / 3)), "--dead-after", str(DEAD_AFTER)]
    server = Server(tmp_path, inventory_yaml(FULL_VARIANT, 0), args + ["--audit-file", str(tmp_path / "audit.jsonl")])
    server.journal = tmp_path / "audit.jsonl"
    yield server
    server.stop()


def leases_revoked_by_the_server(journal):
    """The leases the server's audit journal says were revoked (read after the server stopped, so
    every line is written). A holder may act on its lease before it reads a revoke that is already
    on its way, so its own record can miss one."""
    revoked = set()
    for line in journal.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("event") in ("revoked", "revoking"):
            revoked.add(entry.get("lease"))
    return revoked


def test_churn_safety_and_liveness(churn_server):
    server = churn_server
    churn = Churn(server, random.Random(SEED), duration=float(os.environ.get("LEASEHOLD_STRESS_SECONDS", "20")))
    started = time.monotonic()
    stuck, unfinished = asyncio.run(churn.run(clients=100))
    server.assert_alive()
    print(f"\nchurn: {len(churn.grants)} grants, {churn.samples} status samples, "
          f"{churn.watch_snapshots} watch snapshots, {time.monotonic() - started:.1f} s, "
          f"{churn.check_seconds:.1f} s checking snapshots")
    print("outcomes:", json.dumps(dict(sorted(churn.outcomes.items()))))
    samples = max(1, churn.samples + churn.watch_snapshots)
    print("mean per snapshot:", {k: round(v / samples, 1) for k, v in sorted(churn.state_counts.items())})

    if stuck:
        churn.problems.add(f"{len(stuck)} waiters not granted within 8 s of the all-clear: {stuck[:5]}")
    if unfinished:
        churn.problems.add(f"{unfinished} clients did not finish within 8 s of the all-clear")

    # Nothing leaked: all free, no leases, no queue, no connections but ours.
    deadline = time.monotonic() + 5
    while True:
        status, body = http(server.port, "GET", "/v1/status")
        doc = json.loads(body)
        states = {r["name"]: r["state"] for r in doc["resources"]}
        clean = not doc["leases"] and not doc["queue"] and set(states.values()) == {"free"} \
            and sorted(states) == sorted(ALL_NAMES)
        if clean or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if not clean:
        churn.problems.add(f"final status not clean: states={states} leases={doc['leases']} queue={doc['queue']}")
    status, body = http(server.port, "GET", "/metrics")
    text = body.decode()
    for name in ("leasehold_leases", "leasehold_waiters"):
        if metric(text, name) != 0:
            churn.problems.add(f"{name} is {metric(text, name)} at the end")
    if churn.outcomes.get("silent"):
        dead = re.search(r'^leasehold_releases_total\{reason="dead_peer"\} (\d+)', text, re.M)
        print(f"silent holders: {churn.outcomes['silent']}, freed as dead peers by the server: {dead and dead.group(1)}")
        if not dead or int(dead.group(1)) == 0:
            churn.problems.add("holders went silent, but the server freed none of them as a dead peer")
    try:
        wait_for_connections(server, 0)
    except AssertionError as error:
        churn.problems.add(str(error))
    assert http(server.port, "GET", "/healthz")[0] == 200
    server.assert_alive()
    server.stop()  # the journal is whole once the server has stopped
    revoked = leases_revoked_by_the_server(server.journal)

    # Safety from the clients' side: per name, grants ordered by epoch never overlap in time
    # (unless the earlier one was revoked, when the server does not wait for the holder).
    by_name = {}
    for grant in churn.grants:
        for name, epoch in grant["epochs"].items():
            by_name.setdefault(name, []).append((epoch, grant))
    for name, entries in by_name.items():
        entries.sort(key=lambda e: e[0])
        epochs = [e for e, _ in entries]
        if len(set(epochs)) != len(epochs):
            churn.problems.add(f"{name}: epoch granted twice: {epochs}")
        for (e1, g1), (e2, g2) in zip(entries, entries[1:]):
            g1["revoked"] = g1["revoked"] or g1["lease"] in revoked
            # A grant its client had already given up on (it closed or released while waiting and
            # the grant crossed that) ended before the client read it: with every client on one
            # event loop, a later grant to another client may then be read first.
            given_up = g1["stopped_at"] is not None and g1["stopped_at"] <= g1["granted_at"]
            if g2["granted_at"] < g1["granted_at"] and not g1["revoked"] and not given_up:
                churn.problems.add(f"{name}: epoch {e2} granted before epoch {e1} {g1['label']} {g1['trace']} "
                                   f"{g2['label']} {g2['trace']}")
            if not g1["revoked"] and g1["stopped_at"] is not None and g2["granted_at"] < g1["stopped_at"]:
                churn.problems.add(f"{name}: {g2['label']} granted epoch {e2} while {g1['label']} "
                                   f"still held epoch {e1} ({g1['stopped_at'] - g2['granted_at']:.3f} s overlap)"
                                   f" {g1['trace']} {g2['trace']}")
    assert len(churn.grants) > 200, "the churn granted too little to mean anything"
    assert not churn.problems.items, "\n".join(churn.problems.items[:60])


def rng_garbage(cid):
    return ["{oops", json.dumps({"op": "dance"}), json.dumps({"op": "acquire"}), "[]", "null"][cid % 5]


# ---------------------------------------------------------------------------------------------
# Hostile transport input

def big_inventory(count=1500):
    blob = "x" * 400
    lines = ["resources:"]
    for i in range(count):
        lines += [f"  - name: disk-{i:04d}", "    type: disk", f"    labels: {{shelf: \"s{i % 10}\"}}",
                  f"    attributes: {{id: disk-{i:04d}, blob: \"{blob}\"}}"]
    return "\n".join(lines) + "\n"


UPGRADE = ("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def frame(opcode, payload=b"", fin=True, mask=True, rsv=0, length=None):
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    n = len(payload) if length is None else length
    if n < 126:
        head = bytes([first, (0x80 if mask else 0) | n])
    elif n < 1 << 16:
        head = bytes([first, (0x80 if mask else 0) | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, (0x80 if mask else 0) | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = b"\x11\x22\x33\x44"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def ws_open(port, path="/v1/lease", rcvbuf=None, timeout=5.0):
    """A raw socket upgraded to a WebSocket; returns (socket, bytes after the 101 head)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    s.sendall(UPGRADE.format(path=path).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, "closed during the handshake"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return s, rest


def read_frames(s, buffered=b"", timeout=5.0, until_close=True):
    """Reads server frames, answering pings. until_close: until the server's close frame and then
    EOF (the close frame is echoed); else until the first data or close frame. Returns
    ([(opcode, payload)], whether the server closed the TCP connection)."""
    s.settimeout(timeout)
    data = buffered
    frames = []
    deadline = time.monotonic() + timeout
    eof = False
    echoed = False
    while time.monotonic() < deadline:
        while len(data) >= 2:
            n = data[1] & 0x7F
            offset = 2
            if n == 126:
                if len(data) < 4:
                    break
                n = struct.unpack("!H", data[2:4])[0]
                offset = 4
            elif n == 127:
                if len(data) < 10:
                    break
                n = struct.unpack("!Q", data[2:10])[0]
                offset = 10
            if len(data) < offset + n:
                break
            opcode, payload = data[0] & 0x0F, data[offset:offset + n]
            data = data[offset + n:]
            if opcode == 9:
                with contextlib.suppress(OSError):
                    s.sendall(frame(10, payload))
                continue
            frames.append((opcode, payload))
        if not until_close and any(op in (1, 2, 8) for op, _ in frames):
            break
        if frames and frames[-1][0] == 8 and not echoed:
            echoed = True
            with contextlib.suppress(OSError):
                s.sendall(frame(8, frames[-1][1][:2]))
        if eof:
            break
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            eof = True
            break
        if not chunk:
            eof = True
            continue  # parse what is left, then stop
        data += chunk
    return frames, eof


def close_code(frames):
    for opcode, payload in frames:
        if opcode == 8:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
    return None


class HealthMonitor(threading.Thread):
    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.halt = threading.Event()
        self.latencies = []
        self.failures = []

    def run(self):
        while not self.halt.is_set():
            started = time.monotonic()
            try:
                status, body = http(self.port, "GET", "/healthz", timeout=1.0)
                elapsed = time.monotonic() - started
                self.latencies.append(elapsed)
                if status != 200 or elapsed > 1.0:
                    self.failures.append(f"/healthz {status} after {elapsed:.3f} s")
            except OSError as error:
                self.failures.append(f"/healthz failed after {time.monotonic() - started:.3f} s: {error!r}")
            self.halt.wait(0.1)


MALFORMED = [
    ("unmasked frame", frame(1, b'{"op":"release"}', mask=False), {1002}),
    ("reserved bit", frame(1, b"{}", rsv=4), {1002}),
    ("unknown opcode 3", frame(3, b"x"), {1002}),
    ("unknown control opcode 11", frame(11, b""), {1002}),
    ("ping longer than 125", frame(9, b"p" * 126), {1002}),
    ("fragmented ping", frame(9, b"p", fin=False), {1002}),
    ("continuation first", frame(0, b"x"), {1002}),
    ("text inside a fragmented text", frame(1, b"a", fin=False) + frame(1, b"b"), {1002}),
    ("invalid UTF-8", frame(1, b"\xff\xfe"), {1007}),
    ("UTF-8 split invalid across fragments", frame(1, b"\xe2\x82", fin=False) + frame(0, b"A"), {1007}),
    ("surrogate in UTF-8", frame(1, b"\xed\xa0\x80"), {1007}),
    ("64-bit length with the top bit", frame(1, b"", length=1 << 63)[:10] + b"\x11\x22\x33\x44", {1002, 1009}),
    ("declared length over the limit", frame(1, b"", length=10 << 20)[:10] + b"\x11\x22\x33\x44", {1009}),
    ("message over the limit in fragments",
     b"".join(frame(1 if i == 0 else 0, b"a" * 30000, fin=False) for i in range(3)), {1009}),
    ("close with a 1-byte payload", frame(8, b"\x03"), {1002}),
    ("close with code 999", frame(8, struct.pack("!H", 999)), {1002}),
    ("close with code 1005", frame(8, struct.pack("!H", 1005)), {1002}),
    ("close with code 5000", frame(8, struct.pack("!H", 5000)), {1002}),
    ("close with an invalid UTF-8 reason", frame(8, struct.pack("!H", 1000) + b"\xff"), {1007, 1002}),
]


def test_hostile_transport(tmp_path):
    server = Server(tmp_path, big_inventory())
    monitor = HealthMonitor(server.port)
    opened = []
    problems = []
    try:
        rss_before = server.rss_kib()
        monitor.start()
        attack_started = time.monotonic()

        # Slowloris: 300 sockets dribbling a head one byte at a time (never finishing it).
        slow = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]
        opened += slow
        slow_head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"z" * 400
        dribble_halt = threading.Event()

        def dribble():
            for i in range(len(slow_head)):
                for s in slow:
                    with contextlib.suppress(OSError):
                        s.send(slow_head[i:i + 1])
                if dribble_halt.wait(0.3):
                    return
        dribbler = threading.Thread(target=dribble, daemon=True)
        dribbler.start()
        slow_started = time.monotonic()

        # Silent sockets (never send a byte) and half-closed requests.
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(50)]
        opened += silent
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                s.shutdown(socket.SHUT_WR)
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                if not data.startswith(b"HTTP/1.1 200"):
                    problems.append(f"half-closed request answered {data[:60]!r}")
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                s.shutdown(socket.SHUT_WR)
                if s.recv(4096) != b"":
                    problems.append("an empty half-closed connection got an answer")

        # Oversized head and body, unsupported chunked body.
        cases = [
            (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", {431}),
            (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(2000)) + b"\r\n",
             {431}),
            (b"POST /v1/reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000000\r\n\r\n", {413}),
            (b"POST /v1/reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999999999999999999\r\n\r\n", {400, 413}),
            (b"POST /v1/reload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
             {501}),
            (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", {400}),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 100 + b"\r\n\r\n", {400}),
            (b"GET /v1/lease HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n", {400}),
        ]
        for request, statuses in cases:
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                with contextlib.suppress(OSError):
                    s.sendall(request)
                data = b""
                with contextlib.suppress(OSError):
                    while chunk := s.recv(65536):
                        data += chunk
                status, _ = parse_response(data)
                if status not in statuses:
                    problems.append(f"{request[:50]!r}: answered {data[:80]!r}, expected {statuses}")

        # Malformed frames on /v1/lease: the close code, no error event, the TCP connection ends.
        for name, payload, codes in MALFORMED:
            s, rest = ws_open(server.port)
            try:
                s.sendall(payload)
                frames, eof = read_frames(s, rest, timeout=5)
                code = close_code(frames)
                texts = [p for op, p in frames if op == 1]
                if code not in codes or texts:
                    problems.append(f"malformed {name}: close {code} (expected {codes}), frames {frames[:3]}")
                if not eof:
                    problems.append(f"malformed {name}: TCP connection not closed within 5 s")
            finally:
                s.close()

        # A lease whose client vanishes without a FIN (no pongs, no reads): dead after 3 s.
        ghost, rest = ws_open(server.port)
        opened.append(ghost)
        ghost.sendall(frame(1, json.dumps({"op": "acquire", "want": [{"name": "disk-0000"}]}).encode()))
        frames, _ = read_frames(ghost, rest, timeout=5, until_close=False)
        if not frames or json.loads(frames[0][1]).get("event") != "granted":
            problems.append(f"ghost lease not granted: {frames}")
        ghost_granted = time.monotonic()
        # A waiter behind it that vanishes too, and a polite one behind both: it gets the disk once
        # both are found dead.
        ghost_waiter, rest = ws_open(server.port)
        opened.append(ghost_waiter)
        ghost_waiter.sendall(frame(1, json.dumps({"op": "acquire", "want": [{"name": "disk-0000"}]}).encode()))
        polite = {}

        def polite_waiter():
            with sync_connect(f"{server.ws}/v1/lease", open_timeout=5) as ws:
                ws.send(json.dumps({"op": "acquire", "want": [{"name": "disk-0000"}], "wait": 10}))
                while (event := json.loads(ws.recv(timeout=12)))["event"] == "queued":
                    polite.setdefault("positions", []).append(event["position"])
                polite["event"] = event
                polite["after"] = time.monotonic() - ghost_granted
        polite_thread = threading.Thread(target=polite_waiter, daemon=True)
        polite_thread.start()

        # Watchers that never read, while a reading one must stay fresh and the changes pour in.
        deaf = [ws_open(server.port, "/v1/watch", rcvbuf=4096)[0] for _ in range(10)]
        opened += deaf
        deaf_halt = threading.Event()

        def heartbeat():
            # Unsolicited pongs (RFC 6455 5.5.3) keep them alive without reading a byte.
            while not deaf_halt.wait(0.5):
                for s in deaf:
                    with contextlib.suppress(OSError):
                        s.send(frame(10, b"hb"))
        threading.Thread(target=heartbeat, daemon=True).start()
        fresh = []
        watch_halt = threading.Event()

        def reading_watcher():
            s, rest = ws_open(server.port, "/v1/watch")
            try:
                data = rest
                s.settimeout(0.5)
                while not watch_halt.is_set():
                    with contextlib.suppress(socket.timeout):
                        chunk = s.recv(1 << 20)
                        if not chunk:
                            return
                        data += chunk
                    while len(data) >= 2:
                        n = data[1] & 0x7F
                        offset = 2
                        if n == 126:
                            if len(data) < 4:
                                break
                            n, offset = struct.unpack("!H", data[2:4])[0], 4
                        elif n == 127:
                            if len(data) < 10:
                                break
                            n, offset = struct.unpack("!Q", data[2:10])[0], 10
                        if len(data) < offset + n:
                            break
                        if data[0] & 0x0F == 1:
                            fresh.append(time.monotonic())
                        elif data[0] & 0x0F == 9:
                            s.sendall(frame(10, data[offset:offset + n]))
                        data = data[offset + n:]
            finally:
                s.close()
        reader = threading.Thread(target=reading_watcher, daemon=True)
        reader.start()

        def churn_leases(index):
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                s, rest = ws_open(server.port)
                try:
                    s.sendall(frame(1, json.dumps({"op": "acquire", "want": [{"type": "disk", "count": 3}]}).encode()))
                    read_frames(s, rest, timeout=2, until_close=False)
                    s.sendall(frame(1, b'{"op":"release"}'))
                    read_frames(s, b"", timeout=2)
                finally:
                    s.close()
        churners = [threading.Thread(target=churn_leases, args=(i,), daemon=True) for i in range(8)]
        for t in churners:
            t.start()

        # 2,000 connections at once, half of them with half a head, then dropped (half with RST).
        crowd = []
        for i in range(2000):
            try:
                s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            except OSError as error:
                problems.append(f"connection {i} of the crowd failed: {error!r}")
                break
            with contextlib.suppress(OSError):
                if i % 4 == 1:
                    s.send(b"GET /v1/status HTTP/1.1\r\nHo")
                elif i % 4 == 3:
                    # A whole upgrade and an acquire in one go, then gone: the lease must not stay.
                    s.send(UPGRADE.format(path="/v1/lease").encode() + frame(1, json.dumps(
                        {"op": "acquire", "want": [{"type": "disk", "labels": {"shelf": f"s{i % 10}"}}]}).encode()))
            crowd.append(s)
        for i, s in enumerate(crowd):
            if i % 2 == 0:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

        for t in churners:
            t.join(timeout=10)
        # The deaf watchers are still connected (their backlog stays bounded; they are not dropped).
        status, body = http(server.port, "GET", "/metrics")
        if metric(body.decode(), "leasehold_connections") < len(deaf) + 1:
            problems.append(f"deaf watchers dropped: {metric(body.decode(), 'leasehold_connections')} connections")
        deaf_halt.set()
        watch_halt.set()
        reader.join(timeout=5)
        updates = [b - a for a, b in zip(fresh, fresh[1:])]
        if len(fresh) < 10:
            problems.append(f"the reading watcher got only {len(fresh)} snapshots while deaf ones stalled")
        elif max(updates) > 2.0:
            problems.append(f"the reading watcher waited {max(updates):.1f} s for a snapshot")

        polite_thread.join(timeout=15)
        if polite.get("event", {}).get("event") != "granted" or polite.get("positions", [None])[0] != 2:
            problems.append(f"the waiter behind two vanished peers: {polite}")
        # The vanished lease is released by the dead-peer timeout.
        deadline = ghost_granted + 8
        while True:
            doc = json.loads(http(server.port, "GET", "/v1/status")[1])
            state = next(r["state"] for r in doc["resources"] if r["name"] == "disk-0000")
            if state == "free" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if state != "free":
            problems.append(f"a peer that vanished still holds disk-0000 after 8 s ({state})")

        # Slowloris: every dribbling socket gets 408 after the 10 s head timeout, then EOF.
        wait_until = slow_started + 12.5
        time.sleep(max(0.0, wait_until - time.monotonic()))
        dribble_halt.set()
        dribbler.join(timeout=5)
        answered = 0
        for s in slow:
            s.settimeout(2)
            data = b""
            with contextlib.suppress(OSError):
                while chunk := s.recv(4096):
                    data += chunk
            if data.startswith(b"HTTP/1.1 408"):
                answered += 1
        if answered != len(slow):
            problems.append(f"only {answered} of {len(slow)} slowloris sockets got 408")
        for s in silent:
            s.settimeout(2)
            with contextlib.suppress(OSError):
                if s.recv(4096) != b"":
                    problems.append("a silent socket got bytes instead of a close")
                    break

        for s in opened:
            s.close()
        opened = []
        print(f"\nhostile: {time.monotonic() - attack_started:.1f} s, healthz max "
              f"{max(monitor.latencies, default=0):.3f} s over {len(monitor.latencies)} probes, "
              f"watcher got {len(fresh)} snapshots, RSS {rss_before // 1024} -> {server.rss_kib() // 1024} MiB")
        try:
            wait_for_connections(server, 0, timeout=10)
        except AssertionError as error:
            problems.append(str(error))
        status, body = http(server.port, "GET", "/metrics")
        for name in ("leasehold_leases", "leasehold_waiters"):
            if metric(body.decode(), name) != 0:
                problems.append(f"{name} is {metric(body.decode(), name)} at the end")
        if server.rss_kib() > rss_before + 512 * 1024:
            problems.append(f"RSS grew from {rss_before} KiB to {server.rss_kib()} KiB")
        server.assert_alive()
    finally:
        monitor.halt.set()
        monitor.join(timeout=5)
        for s in opened:
            s.close()
        server.stop()
    problems += monitor.failures[:10]
    assert not problems, "\n".join(problems)
