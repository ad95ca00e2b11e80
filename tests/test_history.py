"""History, usage and observability against the real `leasehold` binary.

    LEASEHOLD_BIN=.build/debug/leasehold .venv/bin/python -m pytest -q tests/test_history.py

The journal survives kill -9 in the middle of heavy journalling; the Grafana dashboard and the
alert rules only name series the server exposes; `--log-format json` keeps a forging holder in
its field; the status page shows a resource's history and the usage per type in Chromium.
"""

import json
import pathlib
import re
import select
import signal
import subprocess
import threading
import time
import urllib.request

import pytest

from test_status_page import (  # noqa: F401 (browser is a fixture)
    SAMPLE_LAB, TOKEN, Leases, browser, conn_state, forget_earlier_pages, http_get, leasehold_binary,
    severe_console_messages, wait_for,
)

REPO = pathlib.Path(__file__).resolve().parent.parent


class Server:
    """`leasehold serve` on 127.0.0.1:0 with a state directory (so a journal), an admin token,
    and whatever else `extra` says."""

    def __init__(self, workdir, extra=(), inventory=SAMPLE_LAB):
        self.workdir = pathlib.Path(workdir)
        self.state = self.workdir / "state"
        self.extra = list(extra)
        self.inventory = inventory
        self.token_file = self.workdir / "admin-token"
        self.token_file.write_text(TOKEN + "\n")
        self.log = self.workdir / "server.log"
        self.process = None
        self.port = None

    def start(self, timeout=30):
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [leasehold_binary(), "serve", "--listen", "127.0.0.1:0", "--inventory", str(self.inventory),
                 "--admin-token-file", str(self.token_file), "--state-dir", str(self.state), *self.extra],
                stdout=subprocess.PIPE, stderr=log)
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline().decode() if ready else ""
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, f"leasehold did not start: {line!r}; log: {self.log.read_text()}"
        self.port = int(match.group(1))
        return self

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process:
            self.process.stdout.close()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, path):
        return f"ws://127.0.0.1:{self.port}{path}"

    def get_json(self, path):
        status, _, body = http_get(self.url + path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def journal_lines(self):
        return (self.state / "audit.jsonl").read_bytes().split(b"\n")


@pytest.fixture
def server(tmp_path):
    server = Server(tmp_path).start()
    yield server
    server.stop()


def release(ws):
    """Sends release and waits for the server's 1000 close."""
    from websockets.exceptions import ConnectionClosed

    ws.send(json.dumps({"op": "release"}))
    try:
        while True:
            ws.recv(timeout=30)
    except ConnectionClosed:
        pass


# ------------------------------------------------------------------ the journal survives kill -9


def churn(server, name, stop, counts):
    """Takes and releases `name` until `stop` is set, counting grants."""
    from websockets.sync.client import connect

    while not stop.is_set():
        try:
            with connect(server.ws_url("/v1/lease"), open_timeout=10, close_timeout=2) as ws:
                ws.send(json.dumps({"op": "acquire", "holder": f"churn {name}", "want": [{"name": name}],
                                    "meta": {"job": "https://ci.example/job/" + "x" * 200}}))
                event = json.loads(ws.recv(timeout=30))
                if event["event"] == "granted":
                    counts[name] = counts.get(name, 0) + 1
                    release(ws)
        except Exception:  # the server was killed under us
            return


def test_a_kill_9_during_heavy_journalling_leaves_only_whole_lines(tmp_path):
    server = Server(tmp_path).start()
    stop = threading.Event()
    counts = {}
    names = ["array-01", "array-02", "array-03", "switch-01", "switch-02", "switch-03"]
    threads = [threading.Thread(target=churn, args=(server, name, stop, counts), daemon=True) for name in names]
    for thread in threads:
        thread.start()
    # Kill once a good deal has been journalled (counted in lines, not guessed in seconds).
    wait_for(lambda: len(server.journal_lines()) > 1500, 120, "1500 journal lines")
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=30)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    server.process.stdout.close()

    raw = (server.state / "audit.jsonl").read_bytes()
    lines = raw.split(b"\n")
    complete, torn = lines[:-1], lines[-1]
    # Every complete line is one whole JSON object; at most the last line is torn.
    parsed = [json.loads(line) for line in complete]
    assert len(parsed) > 1500
    assert all(isinstance(p, dict) and "time" in p and "event" in p for p in parsed)
    granted = sum(1 for p in parsed if p["event"] == "granted")
    assert granted > 0 and granted <= sum(counts.values()) + len(names)

    # A restart cuts a torn tail off and appends after whole lines; history reads everything.
    server.start()
    try:
        # A history query makes what was recorded so far durable first (the new `started` line too).
        history = server.get_json("/v1/history?resource=switch-02&limit=1000")
        assert history["events"] and all(
            "switch-02" in [r["name"] for r in e.get("resources", [])] for e in history["events"])
        after = server.journal_lines()
        assert after[-1] == b""
        reparsed = [json.loads(line) for line in after[:-1]]
        assert reparsed[: len(parsed)] == parsed
        assert any(p["event"] == "started" for p in reparsed[len(parsed):])
    finally:
        server.stop()


# ------------------------------------------------------------------ metrics, dashboard and alerts


def metric_families(text):
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def named_series(expression):
    return {name for name in re.findall(r"\b(leasehold_[a-z_]+?)(?:_bucket|_sum|_count)?\b", expression)}


def alert_expressions(text):
    """The `expr:` of each rule (inline, or a `|` block of deeper-indented lines)."""
    expressions, lines = [], text.splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped.startswith("expr:"):
            continue
        value = stripped[len("expr:"):].strip()
        if value not in ("|", ">"):
            expressions.append(value)
            continue
        indent = len(line) - len(line.lstrip())
        block = []
        for following in lines[index + 1:]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            block.append(following.strip())
        expressions.append(" ".join(block))
    return expressions


def test_the_dashboard_and_the_alert_rules_name_only_series_the_server_exposes(server):
    _, _, body = http_get(server.url + "/metrics")
    families = metric_families(body.decode())
    dashboard = json.loads((REPO / "deploy" / "grafana" / "leasehold-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    rules = alert_expressions((REPO / "deploy" / "prometheus" / "leasehold-alerts.yaml").read_text())
    assert len(rules) >= 8
    expressions += rules
    used = set().union(*(named_series(e) for e in expressions))
    assert used, "the dashboard and rules query something"
    assert used <= families, f"unknown series: {sorted(used - families)}"
    for family in ("leasehold_lease_duration_seconds", "leasehold_grant_wait_seconds",
                   "leasehold_oldest_waiter_seconds", "leasehold_build_info", "leasehold_waiters_by_type"):
        assert family in families


# ------------------------------------------------------------------ logs


def test_json_logs_keep_a_forging_holder_inside_its_field(tmp_path):
    from websockets.sync.client import connect

    server = Server(tmp_path, extra=["--log-format", "json", "--log-level", "info"]).start()
    forged = 'ci/x\n{"time":"2026-01-01T00:00:00Z","level":"critical","message":"revoked"}\r\x1b[2K'
    try:
        with connect(server.ws_url("/v1/lease"), open_timeout=10) as ws:
            ws.send(json.dumps({"op": "acquire", "holder": forged, "want": [{"name": "array-01"}]}))
            lease = json.loads(ws.recv(timeout=30))["lease"]
            release(ws)
        # The release line is written before the close that ended the `with`.
        wait_for(lambda: '"released"' in server.log.read_text(), 30, "the release in the log")
    finally:
        server.stop()
    lines = server.log.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    about = [r for r in records if r.get("lease.id") == lease]
    assert {r["message"] for r in about} >= {"acquire", "granted", "released"}
    assert all(r["lease.holder"] == forged and r["connection.peer"].startswith("127.0.0.1:") for r in about)
    assert not any(r.get("message") == "revoked" for r in records)


# ------------------------------------------------------------------ the page


@pytest.fixture
def page(browser, server):
    forget_earlier_pages(browser)
    browser.get(server.url + "/")
    wait_for(lambda: conn_state(browser) == "live", 20, "the page to go live")
    return browser


def test_the_page_shows_a_resources_history_and_the_usage_per_type_on_demand(page, server):
    clients = Leases(server)
    try:
        ws, granted = clients.take("ci/page-history", [{"name": "array-02"}])
        release(ws)
        clients.take("ci/still-holding", [{"name": "array-02"}])
        status, _, _ = http_get(server.url + "/v1/history")
        assert status == 200
        # Nothing was fetched for history or usage before anyone asked.
        assert page.execute_script(
            "return performance.getEntriesByType('resource').filter(e => /v1\\/(history|usage)/.test(e.name)).length") == 0

        page.execute_script("document.querySelector('#resources tr[data-key=\"array-02\"] td.c-name').click()")
        wait_for(lambda: page.execute_script(
            "const t = document.getElementById('history-table'); return t && !t.hidden && t.tBodies[0].rows.length >= 3"),
            20, "the history of array-02")
        rows = page.execute_script(
            "return Array.from(document.querySelectorAll('#history-table tbody tr'), tr => "
            "Array.from(tr.cells, td => td.textContent))")
        assert page.execute_script("return document.getElementById('history-title').textContent") == "History of array-02"
        events = [r[1] for r in rows]
        assert events[:3] == ["granted", "released", "granted"], rows
        assert rows[0][2] == "ci/still-holding" and rows[1][2] == "ci/page-history"
        assert rows[1][4].startswith("held ") and rows[1][5] == "release"
        assert rows[2][3] == granted["lease"]
        page.execute_script("document.getElementById('history-dialog').close()")

        page.execute_script("document.querySelector('#usage a[data-days=\"7\"]').click()")
        wait_for(lambda: page.execute_script(
            "const t = document.getElementById('usage-table'); return !t.hidden && t.tBodies[0].rows.length > 0"),
            20, "the usage table")
        usage = page.execute_script(
            "return Object.fromEntries(Array.from(document.querySelectorAll('#usage-table tbody tr'), tr => "
            "[tr.dataset.key, Array.from(tr.cells, td => td.textContent)]))")
        assert {"array", "switch"} <= set(usage), usage
        assert usage["array"][3] == "2"   # two leases of an array this week
        assert severe_console_messages(page) == []
    finally:
        clients.close()


def test_without_a_journal_the_history_view_says_how_to_keep_one(browser, tmp_path):
    from test_status_page import Server as PlainServer

    plain = PlainServer(tmp_path).start()
    try:
        forget_earlier_pages(browser)
        browser.get(plain.url + "/")
        wait_for(lambda: conn_state(browser) == "live", 20, "the page to go live")
        browser.execute_script("document.querySelector('#resources td.c-name').click()")
        message = wait_for(lambda: browser.execute_script(
            "const s = document.getElementById('history-status'); return s && /state-dir/.test(s.textContent) && s.textContent"),
            20, "the message about the journal")
        assert "--audit-file" in message
    finally:
        plain.stop()
