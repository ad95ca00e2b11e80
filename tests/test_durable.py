"""Durable leases end to end, with the real binary: a server restart (SIGTERM and kill -9) in the
middle of `leasehold hold`, revocation that waits for the command to stop, max_hold, and a
crash-point test that kills the server at random moments of churn.

The binary is $LEASEHOLD_BIN, or <repo>/.build/debug/leasehold. Every wait is for an event, with a
generous hang guard; no assertion bets on a duration.
"""

import json
import os
import pathlib
import queue
import random
import re
import signal
import subprocess
import threading
import time
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

REPO = pathlib.Path(__file__).resolve().parent.parent
HANG_GUARD = 60  # seconds: only a broken behaviour reaches it
ADMIN_TOKEN = "durable-secret"

INVENTORY = """\
resources:
  - name: switch-01
    type: switch
  - name: switch-02
    type: switch
  - name: array-01
    type: array
  - name: array-02
    type: array
  - name: array-03
    type: array
"""


def binary():
    path = pathlib.Path(os.environ.get("LEASEHOLD_BIN", REPO / ".build" / "debug" / "leasehold"))
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"leasehold binary not found at {path}: run `swift build` first or set LEASEHOLD_BIN", pytrace=False)
    return path


def wait_for(what, condition, timeout=HANG_GUARD, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(interval)


class Server:
    """`leasehold serve` with a state directory, restartable on the same port."""

    def __init__(self, tmp_path, *extra):
        self.tmp_path = tmp_path
        self.inventory = tmp_path / "inventory.yaml"
        self.inventory.write_text(INVENTORY)
        self.token_file = tmp_path / "admin-token"
        self.token_file.write_text(ADMIN_TOKEN + "\n")
        self.state = tmp_path / "state"
        self.extra = list(extra)
        self.port = 0
        self.process = None
        self.log = tmp_path / "server.log"
        self.start()

    def start(self):
        command = [
            str(binary()), "serve", "--listen", f"127.0.0.1:{self.port}", "--inventory", str(self.inventory),
            "--state-dir", str(self.state), "--admin-token-file", str(self.token_file), "--log-level", "notice",
            *self.extra,
        ]
        # The port may still be closing from the previous process: retry the bind a few times.
        for _ in range(50):
            with open(self.log, "a") as log:
                self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
            lines = queue.Queue()
            threading.Thread(target=lambda p=self.process: [lines.put(line) for line in p.stdout], daemon=True).start()
            try:
                line = lines.get(timeout=HANG_GUARD)
            except queue.Empty:
                self.process.kill()
                pytest.fail(f"no listening line; log: {self.log.read_text()}")
            match = re.fullmatch(r"leasehold listening on 127\.0\.0\.1:(\d+)\n", line or "")
            if match:
                self.port = int(match.group(1))
                return
            self.process.wait(timeout=HANG_GUARD)
            time.sleep(0.1)
        pytest.fail(f"the server did not start again on port {self.port}; log: {self.log.read_text()}")

    @property
    def url(self):
        return f"ws://127.0.0.1:{self.port}"

    def stop(self, sig=signal.SIGTERM):
        self.process.send_signal(sig)
        status = self.process.wait(timeout=HANG_GUARD)
        if sig == signal.SIGTERM:
            assert status == 0, f"SIGTERM exits 0; log: {self.log.read_text()}"

    def restart(self, sig=signal.SIGTERM):
        self.stop(sig)
        self.start()

    def status(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/status", timeout=HANG_GUARD) as answer:
            return json.load(answer)

    def resource(self, name):
        return next(r for r in self.status()["resources"] if r["name"] == name)

    def free(self, name, **body):
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/resources/{name}/free", method="POST",
            data=json.dumps(body).encode(), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        with urllib.request.urlopen(request, timeout=HANG_GUARD) as answer:
            return answer.status

    def hold(self, *arguments, command):
        environment = dict(os.environ, LEASEHOLD_URL=self.url)
        return subprocess.Popen([str(binary()), "hold", *arguments, "--", *command], env=environment,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def close(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def server(tmp_path):
    started = Server(tmp_path, "--resume-grace", "60")
    yield started
    started.close()


def event(ws):
    return json.loads(ws.recv(timeout=HANG_GUARD))


def running(pid):
    """Whether `pid` runs (a zombie waiting to be reaped by init does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def try_now(server, name):
    """Whether `name` can be granted to someone else at this moment (wait 0)."""
    with connect(server.url + "/v1/lease") as ws:
        ws.send(json.dumps({"op": "acquire", "want": [{"name": name}], "wait": 0}))
        answer = event(ws)
        if answer["event"] == "granted":
            ws.send(json.dumps({"op": "release"}))
        return answer


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_restart_in_the_middle_of_hold_is_invisible_to_its_command(server, tmp_path, how):
    go, started = tmp_path / "go", tmp_path / "started"
    holder = server.hold(
        "--name", "switch-01", "--grace", "2", "--grace-on-drop", "30",
        command=["sh", "-c", 'touch "$1"; while [ ! -e "$2" ]; do sleep 0.05; done; echo "$LEASEHOLD_RESOURCES"', "sh",
                 str(started), str(go)])
    wait_for("the command to start", started.exists)
    before = server.resource("switch-01")
    assert before["state"] == "held"

    server.restart(how)
    after = server.status()
    lease = next(entry for entry in after["leases"] if entry["id"] == before["lease"])
    assert lease["state"] in ("orphaned", "granted")
    assert server.resource("switch-01")["epoch"] == before["epoch"]
    # hold resumes by itself; nobody else gets the switch meanwhile.
    wait_for("hold to resume", lambda: server.status()["leases"][0]["state"] == "granted")
    refused = try_now(server, "switch-01")
    assert refused["event"] == "error" and refused["code"] == "wait_timeout"
    assert holder.poll() is None, "the command survived"

    go.touch()
    out, err = holder.communicate(timeout=HANG_GUARD)
    assert holder.returncode == 0, err
    assert json.loads(out)[0]["epoch"] == before["epoch"]
    assert "resuming lease" in err and f"lease {before['lease']} resumed" in err
    wait_for("switch-01 free", lambda: server.resource("switch-01")["state"] == "free")


def test_a_waiter_keeps_its_place_across_a_restart(server, tmp_path):
    first = connect(server.url + "/v1/lease")
    first.send(json.dumps({"op": "acquire", "want": [{"name": "array-01"}], "holder": "first"}))
    granted = event(first)
    second = connect(server.url + "/v1/lease")
    second.send(json.dumps({"op": "acquire", "want": [{"name": "array-01"}], "holder": "second"}))
    queued = event(second)
    assert queued["event"] == "queued" and queued["resume"]

    server.restart()
    for ws in (first, second):
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=HANG_GUARD)
        assert closed.value.rcvd.code == 1012
    late = connect(server.url + "/v1/lease")
    late.send(json.dumps({"op": "acquire", "want": [{"name": "array-01"}], "holder": "late"}))
    assert event(late)["position"] == 2

    waiter = connect(server.url + "/v1/lease")
    waiter.send(json.dumps({"op": "resume", "lease": queued["lease"], "token": queued["resume"]}))
    assert event(waiter) == {"event": "queued", "lease": queued["lease"], "position": 1, "resume": queued["resume"]}
    holder = connect(server.url + "/v1/lease")
    holder.send(json.dumps({"op": "resume", "lease": granted["lease"], "token": granted["resume"]}))
    resumed = event(holder)
    assert resumed["lease"] == granted["lease"] and resumed["resources"] == granted["resources"]
    holder.send(json.dumps({"op": "release"}))
    assert event(waiter)["event"] == "granted"
    for ws in (waiter, late, holder):
        ws.close()


def test_revocation_waits_until_the_command_has_stopped(server, tmp_path):
    pid_file = tmp_path / "pid"
    # The command ignores SIGTERM: it stops only at hold's SIGKILL, --grace seconds later.
    holder = server.hold("--name", "array-02", "--grace", "2",
                         command=["sh", "-c", 'trap "" TERM; echo $$ > "$1"; while :; do sleep 0.05; done', "sh", str(pid_file)])
    wait_for("the command to start", lambda: pid_file.exists() and pid_file.read_text().strip())
    pid = int(pid_file.read_text())
    waiter = connect(server.url + "/v1/lease")
    waiter.send(json.dumps({"op": "acquire", "want": [{"name": "array-02"}], "holder": "next"}))
    assert event(waiter)["event"] == "queued"

    assert server.free("array-02", reason="maintenance") == 200
    status = wait_for("the lease revoking", lambda: [l for l in server.status()["leases"] if l["state"] == "revoking"])
    assert status[0]["resources"] == ["array-02"]
    granted = event(waiter)
    assert granted["event"] == "granted"
    assert not running(pid), "the revoked command was still running when someone else got the array"
    holder.wait(timeout=HANG_GUARD)
    assert holder.returncode == 76
    assert "maintenance" in holder.stderr.read()
    waiter.close()


def test_revocation_with_now_frees_at_once(server, tmp_path):
    started = tmp_path / "started"
    holder = server.hold("--name", "array-03", "--grace", "30",
                         command=["sh", "-c", 'trap "" TERM; touch "$1"; while :; do sleep 0.05; done', "sh", str(started)])
    wait_for("the command to start", started.exists)
    assert server.free("array-03", reason="urgent", now=True) == 200
    assert try_now(server, "array-03")["event"] == "granted"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=HANG_GUARD)


def test_max_hold_revokes_the_lease_on_time(server, tmp_path):
    holder = server.hold("--name", "switch-02", "--max-hold", "1", "--grace", "1",
                         command=["sh", "-c", "while :; do sleep 0.05; done"])
    out, err = holder.communicate(timeout=HANG_GUARD)
    assert holder.returncode == 76, err
    assert "max_hold: held for 1 seconds" in err


def test_random_crashes_during_churn_never_double_grant_nor_repeat_an_epoch(tmp_path):
    """Kills the server (SIGKILL) at random moments while clients churn; after each restart no
    resource has two holders, every grant a client was told of is restored with its epoch, and
    every epoch grows past what any client has seen."""
    rng = random.Random(int(os.environ.get("LEASEHOLD_CRASH_SEED", "20261207")))
    # Restored leases wait long for their (never returning) clients: the test frees them itself
    # once it has looked, so nothing depends on how fast it looks.
    server = Server(tmp_path, "--resume-grace", "600")
    names = ["switch-01", "switch-02", "array-01", "array-02", "array-03"]
    seen_epochs = {name: 0 for name in names}
    told = {}  # lease id -> (server process, epochs) a client was told it holds (and had not released)
    generation = [0]  # which server process the test runs now
    lock = threading.Lock()
    stop = threading.Event()
    problems = []

    def churn(index):
        local = random.Random(index)
        while not stop.is_set():
            with lock:
                opened_against = generation[0]
            try:
                with connect(server.url + "/v1/lease", open_timeout=2) as ws:
                    want = local.sample(names, local.choice([1, 1, 2]))
                    # wait 0: nobody queues, so no restored waiter (whose client never comes back) is
                    # granted later and starves the churn.
                    ws.send(json.dumps({"op": "acquire", "want": [{"name": n} for n in want], "holder": f"churn-{index}", "wait": 0}))
                    answer = event(ws)
                    if answer["event"] != "granted":
                        time.sleep(0.005)
                        continue
                    with lock:
                        for r in answer["resources"]:
                            if r["epoch"] <= seen_epochs[r["name"]]:
                                problems.append(f"epoch {r['epoch']} of {r['name']} after {seen_epochs[r['name']]}")
                            seen_epochs[r["name"]] = max(seen_epochs[r["name"]], r["epoch"])
                        told[answer["lease"]] = (opened_against, {r["name"]: r["epoch"] for r in answer["resources"]})
                    time.sleep(local.random() * 0.02)
                    with lock:
                        told.pop(answer["lease"], None)
                    ws.send(json.dumps({"op": "release"}))
                    ws.recv(timeout=5)
            # A kill during the opening handshake ends it without an answer (InvalidMessage).
            except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
                time.sleep(0.02)

    checked = 0  # grants that were live at a kill and found restored
    threads = [threading.Thread(target=churn, args=(i,), daemon=True) for i in range(6)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(12):
            time.sleep(rng.uniform(0.2, 1.0))
            # Kill while some client holds a lease (waiting for that, not betting on timing), and
            # note what clients were told under the same lock: none can drop out before the kill.
            deadline = time.monotonic() + HANG_GUARD
            while True:
                with lock:
                    # Only grants of this process count (one that was on its way when the previous
                    # process died may be noted late).
                    current = {lease: epochs for lease, (made_by, epochs) in told.items() if made_by == generation[0]}
                    if current:
                        server.process.send_signal(signal.SIGKILL)
                        held_before = current
                        epochs_before = dict(seen_epochs)
                        told.clear()
                        generation[0] += 1
                        break
                assert time.monotonic() < deadline, "no client was granted anything"
                time.sleep(0.001)
            server.process.wait(timeout=HANG_GUARD)
            server.start()
            status = server.status()
            holders = {}
            for lease in status["leases"]:
                for name in lease["resources"]:
                    assert name not in holders, f"{name} held by {holders[name]} and {lease['id']}"
                    holders[name] = lease["id"]
            by_name = {r["name"]: r for r in status["resources"]}
            for lease_id, epochs in held_before.items():
                for name, epoch in epochs.items():
                    assert holders.get(name) == lease_id, f"{lease_id} was told it holds {name}; restored: {holders.get(name)}"
                    assert by_name[name]["epoch"] == epoch
                    checked += 1
            for name, epoch in epochs_before.items():
                assert by_name[name]["epoch"] >= epoch, f"{name}'s epoch went back from {epoch}"
            # Nobody will resume them: free them (one resource frees its whole lease) for the churn to go on.
            # (Only the restored ones: churn clients that reconnected at once hold and release their own.)
            for lease in status["leases"]:
                if lease["state"] == "orphaned":
                    assert server.free(lease["resources"][0], reason="test", now=True) == 200
        assert not problems, problems
        assert checked > 0, "no kill came while a client held a lease"
    finally:
        stop.set()
        server.close()  # ends every connection, so no churn thread waits on one
        for thread in threads:
            thread.join(timeout=HANG_GUARD)
