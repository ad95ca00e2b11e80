"""The status page (`GET /`) in real headless Chromium, against the real `leasehold` binary.

    LEASEHOLD_BIN=.build/debug/leasehold .venv/bin/python -m pytest -q tests/test_status_page.py

Needs Debian's `chromium` and `chromium-driver` and pip's `selenium` and `websockets`
(`scripts/setup --test` installs them). Refresh the README screenshot with

    .venv/bin/python tests/test_status_page.py --screenshot docs/status-page.png
"""

import contextlib
import json
import os
import pathlib
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SAMPLE_LAB = REPO / "deploy" / "lab-inventory.yaml"
TOKEN = "status-page-test-token-7f3a"
CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")
SAMPLE_NAMES = [
    "array-01", "array-02", "array-03", "array-04", "array-05", "array-06",
    "switch-01", "switch-02", "switch-03", "switch-04", "fc-switch-01",
]


# ------------------------------------------------------------------ the server


def leasehold_binary():
    path = os.environ.get("LEASEHOLD_BIN") or str(REPO / ".build" / "debug" / "leasehold")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no leasehold binary at {path}: run `swift build --product leasehold` "
                    "or set LEASEHOLD_BIN", pytrace=False)
    return path


class Server:
    """`leasehold serve` on 127.0.0.1 (port 0 unless given), with an admin token."""

    def __init__(self, workdir, inventory=SAMPLE_LAB, port=0):
        self.workdir = pathlib.Path(workdir)
        self.inventory = inventory
        self.port = port
        self.process = None
        token_file = self.workdir / "admin-token"
        token_file.write_text(TOKEN + "\n")
        self.token_file = token_file

    def start(self, timeout=15):
        log = open(self.workdir / f"server-{time.monotonic_ns()}.log", "wb")
        self.process = subprocess.Popen(
            [leasehold_binary(), "serve", "--listen", f"127.0.0.1:{self.port}", "--inventory", str(self.inventory),
             "--admin-token-file", str(self.token_file), "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=log)
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline().decode() if ready else ""
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not match:
            self.stop()
            raise AssertionError(f"leasehold did not start (stdout: {line!r}); see {log.name}")
        self.port = int(match.group(1))
        return self

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process:
            self.process.stdout.close()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, path):
        return f"ws://127.0.0.1:{self.port}{path}"


class Leases:
    """Test clients holding leases on WebSockets, all closed at the end of the test."""

    def __init__(self, server):
        from websockets.sync.client import connect  # noqa: PLC0415 (a clear error if missing)

        self.connect = connect
        self.server = server
        self.stack = contextlib.ExitStack()

    def take(self, holder, want, meta=None, expect="granted", wait=None):
        ws = self.stack.enter_context(self.connect(self.server.ws_url("/v1/lease"), open_timeout=5, close_timeout=2))
        request = {"op": "acquire", "holder": holder, "want": want, "meta": meta or {}}
        if wait is not None:
            request["wait"] = wait
        ws.send(json.dumps(request))
        event = json.loads(ws.recv(timeout=5))
        assert event["event"] == expect, event
        return ws, event

    def close(self):
        self.stack.close()


@pytest.fixture
def server(tmp_path):
    server = Server(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def leases(server):
    clients = Leases(server)
    yield clients
    clients.close()


# ------------------------------------------------------------------ the browser


def make_driver(width=1400, height=1000):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install -r tests/requirements.txt", pytrace=False)
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: apt-get install chromium chromium-driver (scripts/setup --test)",
                        pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--lang=en-GB"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    driver.set_script_timeout(10)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    return driver


@pytest.fixture(scope="module")
def browser():
    driver = make_driver()
    yield driver
    driver.quit()


def forget_earlier_pages(driver):
    """Leaves the last test's page (which may still be retrying its stopped server) and drops its log."""
    driver.get("about:blank")
    driver.get_log("browser")


@pytest.fixture
def page(browser, server):
    """The status page of this test's server, live."""
    forget_earlier_pages(browser)
    browser.get(server.url + "/")
    wait_for(lambda: conn_state(browser) == "live", 10, "the page to go live")
    return browser


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.03)


def conn_state(driver):
    return driver.execute_script("return document.body.dataset.conn || null")


ROW_JS = """
const [table, key] = arguments;
const tr = document.querySelector('#' + table + ' tbody tr[data-key="' + CSS.escape(key) + '"]');
if (!tr) return null;
const cells = {};
for (const td of tr.cells) cells[td.className.split(' ')[0].slice(2)] = td.textContent;
// The state cell: the state itself, and apart from it why a disabled resource is out of service.
const state = tr.querySelector('.c-state .state');
if (state) cells.state = state.textContent;
const why = tr.querySelector('.c-state .why');
cells.why = why ? why.textContent : '';
return {cells, hidden: tr.hidden, html: tr.innerHTML, className: tr.className};
"""


def row(driver, table, key):
    return driver.execute_script(ROW_JS, table, key)


def visible_keys(driver, table):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#' + arguments[0] + ' tbody tr'))"
        ".filter(tr => !tr.hidden).map(tr => tr.dataset.key)", table)


def severe_console_messages(driver):
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def http_get(url, headers=None):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


# ------------------------------------------------------------------ without JavaScript


def test_server_renders_the_current_state_for_curl_and_text_browsers(server, leases):
    leases.take("ci/nightly-1234", [{"name": "array-01"}, {"name": "switch-03"}])
    leases.take("ci/pr-77", [{"name": "array-01"}], expect="queued")

    status, headers, body = http_get(server.url + "/")
    html = body.decode()
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    # No inline script, no inline style: every <script> has a src.
    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", html))
    assert "style=" not in html

    keys = re.findall(r'<tr data-key="([^"]+)" class="s-(\w+)">', html)
    assert [name for name, _ in keys] == SAMPLE_NAMES
    assert dict(keys)["array-01"] == "held" and dict(keys)["array-02"] == "free"
    array_01 = re.search(r'<tr data-key="array-01".*?</tr>', html).group(0)
    assert "ci/nightly-1234" in array_01 and re.search(r'<td class="c-lease">L\w+</td>', array_01)
    assert re.search(r'id="queue".*<td class="c-pos">1</td>.*ci/pr-77.*</table>', html, re.S)
    assert re.search(r'id="leases".*ci/nightly-1234.*</table>', html, re.S)

    # The filter form works without the script: the server filters.
    _, _, body = http_get(server.url + "/?q=type%3Aswitch+vendor%3Dcisco")
    shown = re.findall(r'<tr data-key="([^"]+)" class="s-', body.decode())
    assert shown == ["switch-03", "switch-04"]


def test_static_files_have_types_and_cache_headers(server):
    _, _, body = http_get(server.url + "/")
    for name, content_type in (("app.js", "text/javascript"), ("app.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        versioned = re.search(rf'/static/{re.escape(name)}\?v=(\w+)', body.decode())
        assert versioned, name
        status, headers, content = http_get(server.url + versioned.group(0))
        assert status == 200 and headers["Content-Type"].startswith(content_type) and content
        assert "immutable" in headers["Cache-Control"] and headers["X-Content-Type-Options"] == "nosniff"
        status, headers, _ = http_get(server.url + f"/static/{name}")
        assert status == 200 and headers["Cache-Control"] == "no-cache"
        status, _, content = http_get(server.url + f"/static/{name}", {"If-None-Match": headers["ETag"]})
        assert status == 304 and content == b""
    assert http_get(server.url + "/static/nope.js")[0] == 404


def test_watch_refuses_a_foreign_origin(server):
    from websockets.sync.client import connect

    with pytest.raises(Exception) as refused:
        with connect(server.ws_url("/v1/watch"), origin="http://evil.example", open_timeout=5):
            pass
    assert "403" in str(refused.value)
    with connect(server.ws_url("/v1/watch"), origin=server.url, open_timeout=5) as watch:
        assert json.loads(watch.recv(timeout=5))["event"] == "snapshot"


# ------------------------------------------------------------------ live in the browser


def test_page_shows_the_sample_lab_and_goes_live(page):
    assert visible_keys(page, "resources") == SAMPLE_NAMES
    assert row(page, "resources", "array-03")["cells"]["state"] == "free"
    cards = page.execute_script(
        "return Array.from(document.querySelectorAll('#summary .card')).map(c => [c.dataset.key,"
        " c.querySelector('.n-free').textContent, c.querySelector('.n-total').textContent])")
    assert cards == [["array", "6", "6"], ["switch", "4", "4"], ["fc-switch", "1", "1"]]
    assert page.find_element("id", "conn-text").text == "Live"
    assert severe_console_messages(page) == []  # no CSP violation, no script error


PAGE_RULES = REPO / "Tests" / "Fixtures" / "page-rules.json"

RULES_JS = """
const [table] = arguments;
const r = window.leaseholdRules;
const got = {duration: [], labelPairs: [], wantsText: [], filter: []};
for (const [ms] of table.duration) got.duration.push(r.duration(ms));
for (const [labels] of table.labelPairs) got.labelPairs.push(r.labelPairs(labels));
for (const [groups] of table.wantsText) got.wantsText.push(r.wantsText(groups));
for (const c of table.filter) got.filter.push(r.matches(r.parseFilter(c.query), r.fields(c.fields)));
return got;
"""


def test_the_script_follows_the_same_rule_table_as_the_server(page):
    """The rules StatusPage.swift is tested with (Tests/Fixtures/page-rules.json), run in app.js."""
    table = json.loads(PAGE_RULES.read_text())
    got = page.execute_script(RULES_JS, table)
    assert got["duration"] == [text for _, text in table["duration"]]
    assert got["labelPairs"] == [pairs for _, pairs in table["labelPairs"]]
    assert got["wantsText"] == [text for _, text in table["wantsText"]]
    mismatches = [(c["query"], c["fields"]) for c, matched in zip(table["filter"], got["filter"])
                  if matched != c["matches"]]
    assert mismatches == []
    assert len(got["filter"]) == len(table["filter"]) > 0


def test_a_lease_appears_within_a_second_and_goes_when_its_socket_closes(page, leases):
    untouched = page.find_element("css selector", '#resources tr[data-key="array-06"]')
    ws, granted = leases.take("ci/nightly-1234", [{"type": "array", "labels": {"proto": "iscsi"}}, {"name": "switch-02"}])
    lease_id = granted["lease"]
    held = [r["name"] for r in granted["resources"]]
    started = time.monotonic()
    wait_for(lambda: all((row(page, "resources", n) or {}).get("cells", {}).get("state") == "held" for n in held),
             1.0, "the granted resources to show as held")
    wait_for(lambda: row(page, "leases", lease_id), 1.0 - (time.monotonic() - started), "the lease row")
    for name in held:
        cells = row(page, "resources", name)["cells"]
        assert cells["holder"] == "ci/nightly-1234" and cells["lease"] == lease_id
        assert re.fullmatch(r"\d+s", cells["for"]), cells
    assert row(page, "leases", lease_id)["cells"]["resources"] == "".join(held)
    # The held-for time ticks.
    first = row(page, "resources", held[0])["cells"]["for"]
    wait_for(lambda: row(page, "resources", held[0])["cells"]["for"] != first, 2.5, "the held-for time to tick")

    ws.close()
    started = time.monotonic()
    wait_for(lambda: all(row(page, "resources", n)["cells"]["state"] == "free" for n in held), 1.0,
             "the resources to be free again")
    wait_for(lambda: row(page, "leases", lease_id) is None, 1.0 - (time.monotonic() - started), "the lease row to go")
    assert row(page, "resources", held[0])["cells"]["holder"] == ""
    assert page.execute_script("return document.getElementById('leases-empty').hidden") is False
    # Rows are updated in place, not rebuilt: the untouched row is the same element.
    assert page.find_element("css selector", '#resources tr[data-key="array-06"]') == untouched
    assert untouched.get_attribute("data-key") == "array-06"


def test_the_queue_shows_who_waits_for_what(page, leases):
    first, _ = leases.take("perf/weekly", [{"name": "fc-switch-01"}])
    _, queued = leases.take("ci/pr-5830", [{"name": "fc-switch-01"}, {"type": "array", "labels": {"proto": "fc"}}],
                            expect="queued")
    waiter = wait_for(lambda: row(page, "queue", queued["lease"]), 1.0, "the waiter in the queue")
    assert waiter["cells"]["pos"] == "1" and waiter["cells"]["holder"] == "ci/pr-5830"
    assert waiter["cells"]["wants"] == "fc-switch-01, array (proto=fc)"
    assert re.fullmatch(r"\d+s", waiter["cells"]["for"])
    assert page.find_element("css selector", "#overall .n-waiting").text == "1"
    # A named want is found by that resource's type, in the page and in the server's rendering.
    page.find_element("id", "filter").send_keys("type:fc-switch")
    wait_for(lambda: visible_keys(page, "queue") == [queued["lease"]], 1.0, "the waiter under type:fc-switch")
    html = http_get(page.current_url)[2].decode()
    assert "q=type%3Afc-switch" in page.current_url and f'<tr data-key="{queued["lease"]}">' in html

    first.close()
    wait_for(lambda: row(page, "queue", queued["lease"]) is None, 2.0, "the waiter to leave the queue")
    assert row(page, "resources", "fc-switch-01")["cells"]["holder"] == "ci/pr-5830"
    assert page.find_element("id", "queue-empty").text == "Nobody is waiting."


def test_the_page_says_who_blocks_a_waiter_until_when_why_a_resource_is_off_and_links_the_job(page, leases, server):
    job = "https://ci.example/job/7"
    _, granted = leases.take("ci/job-7", [{"name": "switch-02"}], meta={"job": job})
    _, queued = leases.take("ci/pr-9", [{"name": "switch-02"}], expect="queued", wait=3600)
    blocker = granted["lease"] + " · ci/job-7"
    waiter = wait_for(lambda: row(page, "queue", queued["lease"]), 10, "the waiter in the queue")
    assert waiter["cells"]["blocked"] == blocker
    assert re.fullmatch(r"\d\d:\d\d:\d\d UTC", waiter["cells"]["until"]), waiter["cells"]
    link = page.find_element("css selector", '#resources tr[data-key="switch-02"] .c-holder a')
    assert link.get_attribute("href") == job and link.text == "ci/job-7"
    request = urllib.request.Request(server.url + "/v1/resources/switch-03/disable", method="POST",
                                     data=json.dumps({"reason": "cable swap in rack 4"}).encode(),
                                     headers={"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    wait_for(lambda: row(page, "resources", "switch-03")["cells"]["why"] == "cable swap in rack 4", 10, "the reason")
    assert row(page, "resources", "switch-03")["cells"]["state"] == "disabled"
    version = subprocess.run([leasehold_binary(), "--version"], capture_output=True, text=True, check=True).stdout.strip()
    assert page.find_element("id", "version").text == version

    # The server's own rendering says the same, for curl and text browsers.
    html = http_get(server.url + "/")[2].decode()
    assert f'<span class="why">cable swap in rack 4</span>' in html
    assert f'<a class="holder-link" href="{job}"' in html
    assert html.count(blocker) == 2  # the chip and its title
    assert f'<span id="version">{version}</span>' in html
    page.get(server.url + "/")
    wait_for(lambda: conn_state(page) == "live", 10, "the page to go live")
    assert row(page, "queue", queued["lease"])["cells"]["blocked"] == blocker
    assert severe_console_messages(page) == []


def test_holder_html_renders_as_text(page, leases, server):
    evil = '<img src=x onerror="document.body.dataset.pwned=1"><script>document.body.dataset.pwned=2</script>&amp;'
    leases.take(evil, [{"name": "array-05"}], meta={"job": "javascript:document.body.dataset.pwned=3",
                                                   "log": "https://ci.example/job/9?a=1&b=2"})
    wait_for(lambda: row(page, "resources", "array-05")["cells"]["holder"] == evil, 1.0, "the holder as text")
    cell_html = page.execute_script(
        "return document.querySelector('#resources tr[data-key=\"array-05\"] .c-holder').innerHTML")
    assert "<img" not in cell_html and "&lt;img" in cell_html
    assert page.execute_script("return document.querySelectorAll('main img, main script').length") == 0
    links = page.execute_script("return Array.from(document.querySelectorAll('#leases a')).map(a => a.href)")
    assert links == ["https://ci.example/job/9?a=1&b=2"]  # the javascript: value stays text
    assert page.execute_script("return document.body.dataset.pwned || null") is None

    # And after a reload, in the server's own rendering.
    html = http_get(server.url + "/")[2].decode()
    assert "<img src=x" not in html and "&lt;img src=x onerror=&quot;" in html
    assert 'href="javascript:' not in html
    page.get(server.url + "/")
    wait_for(lambda: conn_state(page) == "live", 10, "the page to go live")
    assert row(page, "resources", "array-05")["cells"]["holder"] == evil
    assert page.execute_script("return document.body.dataset.pwned || null") is None


def test_the_filter_finds_by_name_type_label_and_holder(page, leases):
    leases.take("ci/nightly-1234", [{"name": "array-02"}])
    wait_for(lambda: row(page, "resources", "array-02")["cells"]["state"] == "held", 1.0, "the lease")
    from selenium.webdriver.common.keys import Keys

    box = page.find_element("id", "filter")

    def shown_after(text):
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.BACKSPACE)
        if text:
            box.send_keys(text)
        time.sleep(0.15)
        return visible_keys(page, "resources")

    assert shown_after("switch") == ["switch-01", "switch-02", "switch-03", "switch-04", "fc-switch-01"]
    assert shown_after("type:switch") == ["switch-01", "switch-02", "switch-03", "switch-04"]
    assert shown_after("proto=fc") == ["array-01", "array-02", "array-06"]
    assert shown_after("nightly") == ["array-02"]
    assert visible_keys(page, "leases") == [row(page, "resources", "array-02")["cells"]["lease"]]
    assert shown_after("site=lab-b state:free array") == ["array-04", "array-05", "array-06"]
    assert page.find_element("id", "resources-count").text == "3 of 11"
    assert "q=site%3Dlab-b+state%3Afree+array" in page.current_url
    assert shown_after("no-such-thing") == []
    assert page.find_element("id", "resources-empty").text == "No resource matches the filter."
    assert shown_after("") == SAMPLE_NAMES
    # A summary card filters by its type.
    page.find_element("css selector", '#summary .card[data-key="fc-switch"] .card-type').click()
    wait_for(lambda: visible_keys(page, "resources") == ["fc-switch-01"], 1.0, "the card's filter")
    assert box.get_attribute("value") == "type:fc-switch"


# ------------------------------------------------------------------ admin


def enter_admin_mode(page, token):
    page.find_element("id", "admin-button").click()
    field = page.find_element("id", "dialog-input")
    assert field.get_attribute("type") == "password"
    field.send_keys(token)
    page.find_element("id", "dialog-confirm").click()
    wait_for(lambda: not page.find_element("id", "dialog").is_displayed(), 2, "the token dialog to close")


def test_admin_force_free_revokes_a_real_lease(page, leases):
    ws, granted = leases.take("ci/stuck-job-42", [{"name": "array-01"}, {"name": "switch-01"}])
    wait_for(lambda: row(page, "resources", "array-01")["cells"]["state"] == "held", 1.0, "the lease")

    enter_admin_mode(page, TOKEN)                                                       # click 1 (+ token)
    assert page.execute_script("return sessionStorage.getItem('leasehold.admin-token')") == TOKEN
    assert TOKEN not in page.current_url
    page.find_element("css selector", '#resources tr[data-key="array-01"] button[data-action="free"]').click()  # 2
    dialog_text = page.find_element("id", "dialog").text
    assert granted["lease"] in dialog_text and "ci/stuck-job-42" in dialog_text and "switch-01" in dialog_text
    page.find_element("id", "dialog-confirm").click()  # no reason yet: asks for one
    assert "Say why" in page.find_element("id", "dialog-error").text
    page.find_element("id", "dialog-input").send_keys("array wedged, job gone")
    page.find_element("id", "dialog-confirm").click()                                   # click 3

    event = json.loads(ws.recv(timeout=5))
    assert event == {"event": "revoked", "lease": granted["lease"], "reason": "array wedged, job gone"}
    from websockets.exceptions import ConnectionClosed

    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=5)
    assert closed.value.rcvd.code == 4001
    wait_for(lambda: row(page, "resources", "array-01")["cells"]["state"] == "free", 1.0, "array-01 to be free")
    assert row(page, "resources", "switch-01")["cells"]["state"] == "free"
    assert "Freed array-01" in page.find_element("id", "notice").text
    assert TOKEN not in page.page_source  # not in the DOM either (the dialog forgets it)

    # Disable and enable from the same row.
    page.find_element("css selector", '#resources tr[data-key="array-01"] button[data-action="disable"]').click()
    page.find_element("id", "dialog-confirm").click()
    wait_for(lambda: row(page, "resources", "array-01")["cells"]["state"] == "disabled", 2.0, "array-01 disabled")
    wait_for(lambda: page.find_elements("css selector", '#resources tr[data-key="array-01"] button[data-action="enable"]'),
             1.0, "an Enable button")[0].click()
    wait_for(lambda: row(page, "resources", "array-01")["cells"]["state"] == "free", 2.0, "array-01 enabled")

    # A held resource that is disabled stays "held" (its lease runs on) but offers Enable.
    holder, _ = leases.take("ci/long-soak", [{"name": "array-02"}])
    wait_for(lambda: row(page, "resources", "array-02")["cells"]["state"] == "held", 1.0, "array-02 held")
    page.find_element("css selector", '#resources tr[data-key="array-02"] button[data-action="disable"]').click()
    page.find_element("id", "dialog-confirm").click()
    wait_for(lambda: page.find_elements("css selector", '#resources tr[data-key="array-02"] button[data-action="enable"]'),
             2.0, "Enable on the held, disabled array-02")
    assert row(page, "resources", "array-02")["cells"]["state"] == "held"
    holder.close()
    assert severe_console_messages(page) == []


def test_a_wrong_token_is_refused_when_entered_and_a_refused_action_runs_once_the_token_is_right(page, leases, server):
    # A wrong token: the server is asked at once, and admin mode is not entered.
    page.find_element("id", "admin-button").click()
    page.find_element("id", "dialog-input").send_keys("not-the-token")
    page.find_element("id", "dialog-confirm").click()
    error = wait_for(lambda: page.find_element("id", "dialog-error").text, 10, "the 401 message")
    assert error == "The server did not accept this admin token (401). Enter it again."
    assert page.find_element("id", "dialog").is_displayed()
    assert page.execute_script("return sessionStorage.getItem('leasehold.admin-token')") is None
    assert not page.find_elements("css selector", "#resources button[data-action]")
    page.find_element("id", "dialog-cancel").click()

    # A token kept in the tab that the server no longer takes: the action asks for the token and,
    # once it is right, runs without being asked for again.
    page.execute_script("sessionStorage.setItem('leasehold.admin-token', 'a-stale-token')")
    page.get(server.url + "/")
    wait_for(lambda: conn_state(page) == "live", 10, "the page to go live")
    page.find_element("css selector", '#resources tr[data-key="array-03"] button[data-action="disable"]').click()
    page.find_element("id", "dialog-input").send_keys("firmware upgrade")
    page.find_element("id", "dialog-confirm").click()
    error = wait_for(lambda: page.find_element("id", "dialog-error").text, 10, "the 401 message")
    assert "did not accept the admin token (401)" in error and error.endswith("Enter it again.")
    assert page.find_element("id", "dialog-title").text == "Admin mode"
    assert page.find_element("id", "dialog-confirm").text == "Enter admin mode and retry"
    assert row(page, "resources", "array-03")["cells"]["state"] == "free"
    page.find_element("id", "dialog-input").send_keys(TOKEN)
    page.find_element("id", "dialog-confirm").click()
    wait_for(lambda: row(page, "resources", "array-03")["cells"]["state"] == "disabled", 10, "the retried disable")
    assert row(page, "resources", "array-03")["cells"]["why"] == "firmware upgrade"
    assert "Disabled array-03." in page.find_element("id", "notice").text
    assert page.execute_script("return sessionStorage.getItem('leasehold.admin-token')") == TOKEN

    # An action that comes too late reads as a sentence.
    ws, _ = leases.take("ci/short-lived", [{"name": "array-04"}])
    wait_for(lambda: page.find_elements("css selector", '#resources tr[data-key="array-04"] button[data-action="free"]'),
             1.0, "a Force free button")[0].click()
    ws.close()  # the lease ends while the admin types the reason
    wait_for(lambda: row(page, "resources", "array-04")["cells"]["state"] == "free", 1.0, "array-04 free")
    page.find_element("id", "dialog-input").send_keys("cleanup")
    page.find_element("id", "dialog-confirm").click()
    error = wait_for(lambda: page.find_element("id", "dialog-error").text, 3, "the 409 message")
    assert "array-04 is not held any more" in error and "(409)" in error


# ------------------------------------------------------------------ disconnection


def test_disconnected_state_shows_when_the_server_stops_and_clears_after_restart(page, server):
    page.find_element("id", "filter").send_keys("array")
    server.stop()
    wait_for(lambda: conn_state(page) == "stale", 3, "the page to show it is disconnected")
    banner = page.find_element("id", "stale-banner")
    assert banner.is_displayed() and "Disconnected from the server" in banner.text
    assert "may be out of date" in banner.text and "Reconnecting" in banner.text
    assert page.find_element("id", "conn-text").text.startswith("Disconnected")
    assert page.title.startswith("⚠ disconnected")
    assert page.execute_script("return getComputedStyle(document.querySelector('main')).opacity") != "1"
    # Held-for clocks stop: nothing on the page pretends to be live.
    assert page.execute_script("return document.body.classList.contains('stale')")

    server.start()  # same port: the page finds it again by itself
    wait_for(lambda: conn_state(page) == "live", 12, "the page to reconnect")
    assert not page.find_element("id", "stale-banner").is_displayed()
    assert page.find_element("id", "conn-text").text == "Live"
    assert visible_keys(page, "resources") == SAMPLE_NAMES[:6]  # the filter survived


# ------------------------------------------------------------------ scale


def test_five_thousand_resources_render_and_update_in_place(browser, tmp_path):
    inventory = tmp_path / "big.yaml"
    lines = ["resources:"]
    for i in range(5000):
        kind = "array" if i % 2 == 0 else "switch"
        lines += [f"  - name: {kind}-{i:05d}", f"    type: {kind}",
                  f"    labels: {{site: lab-{'abc'[i % 3]}, rack: r{i % 40:02d}}}"]
    inventory.write_text("\n".join(lines) + "\n")
    big = Server(tmp_path, inventory=inventory).start()
    try:
        from websockets.sync.client import connect

        forget_earlier_pages(browser)
        started = time.monotonic()
        browser.get(big.url + "/")
        wait_for(lambda: conn_state(browser) == "live", 20, "the big page to go live")
        load_seconds = time.monotonic() - started
        assert browser.execute_script("return document.querySelectorAll('#resources tbody tr').length") == 5000
        untouched = browser.find_element("css selector", '#resources tr[data-key="array-04000"]')
        first_apply = float(browser.execute_script("return document.body.dataset.applyMs"))
        with connect(big.ws_url("/v1/lease"), open_timeout=5) as ws:
            ws.send(json.dumps({"op": "acquire", "holder": "ci/big-1", "want": [{"name": "switch-02501"}]}))
            assert json.loads(ws.recv(timeout=5))["event"] == "granted"
            wait_for(lambda: row(browser, "resources", "switch-02501")["cells"]["state"] == "held", 1.0,
                     "a lease in a 5,000-resource lab")
            update_apply = float(browser.execute_script("return document.body.dataset.applyMs"))
        wait_for(lambda: row(browser, "resources", "switch-02501")["cells"]["state"] == "free", 1.0, "the release")
        assert browser.find_element("css selector", '#resources tr[data-key="array-04000"]') == untouched
        assert severe_console_messages(browser) == []
        print(f"5000 resources: load {load_seconds:.2f} s, first snapshot {first_apply} ms, update {update_apply} ms")
        assert update_apply < 250, f"applying one change to 5,000 rows took {update_apply} ms"
    finally:
        big.stop()


# ------------------------------------------------------------------ the README screenshot


def screenshot(path):
    """A few held leases and a waiter on the sample lab, at 1400x1000."""
    workdir = tempfile.mkdtemp(prefix="leasehold-shot-")
    server = Server(workdir).start()
    clients = Leases(server)
    driver = None
    try:
        clients.take("ci/nightly-1234", [{"type": "array", "count": 2, "labels": {"proto": "fc"}}, {"name": "switch-03"}],
                     {"job": "https://ci.example/job/1234", "commit": "9f2c1e0"})
        clients.take("ci/pr-5821", [{"name": "array-04"}], {"job": "https://ci.example/job/5821"})
        clients.take("perf/weekly-88", [{"name": "fc-switch-01"}, {"type": "switch", "labels": {"vendor": "arista"}}],
                     {"job": "https://ci.example/job/88"})
        clients.take("ci/pr-5830", [{"name": "fc-switch-01"}, {"type": "array", "labels": {"proto": "nvme-tcp"}}],
                     {"job": "https://ci.example/job/5830"}, expect="queued")
        urllib.request.urlopen(urllib.request.Request(
            server.url + "/v1/resources/switch-04/disable", method="POST", data=b'{"reason":"firmware upgrade"}',
            headers={"Authorization": "Bearer " + TOKEN}), timeout=5).read()
        time.sleep(5)  # let the held-for clocks show something
        driver = make_driver(1400, 1000)
        driver.get(server.url + "/")
        wait_for(lambda: conn_state(driver) == "live", 10, "the page to go live")
        time.sleep(1.2)
        driver.save_screenshot(str(path))
        print(f"wrote {path}")
    finally:
        if driver:
            driver.quit()
        clients.close()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--screenshot":
        screenshot(pathlib.Path(sys.argv[2]).resolve())
    else:
        sys.exit(__doc__)


def test_a_reset_shows_while_it_runs_its_outcome_and_its_output_and_an_admin_runs_one(browser, tmp_path):
    go = tmp_path / "go"
    script = tmp_path / "reset-array"
    script.write_text(f'#!/bin/sh\necho "cleaning $LEASEHOLD_NAME after $LEASEHOLD_END_REASON"\n'
                      f'while [ ! -e "{go}" ]; do sleep 0.05; done\necho "LUN 7 still mapped" >&2\nexit 4\n')
    script.chmod(0o755)
    inventory = tmp_path / "lab.yaml"
    inventory.write_text(f'types:\n  array: {{reset: {{command: ["{script}"]}}}}\n'
                         "resources:\n  - {name: array-01, type: array}\n  - {name: switch-01, type: switch}\n")
    server = Server(tmp_path, inventory=inventory).start()
    clients = Leases(server)
    try:
        forget_earlier_pages(browser)
        browser.get(server.url + "/")
        wait_for(lambda: conn_state(browser) == "live", 10, "the page to go live")
        ws, _ = clients.take("ci/crashed", [{"name": "array-01"}])
        ws.socket.close()  # the suite crashed: no release
        wait_for(lambda: row(browser, "resources", "array-01")["cells"]["state"] == "resetting", 10, "array-01 resetting")
        assert row(browser, "resources", "array-01")["cells"]["for"] != "", "a running clock"
        assert "1 resetting" in browser.find_element("id", "summary").text

        go.touch()
        wait_for(lambda: row(browser, "resources", "array-01")["cells"]["state"] == "disabled", 10, "the failed reset")
        assert row(browser, "resources", "array-01")["cells"]["why"] == "reset failed: exit 4: LUN 7 still mapped"
        outcome = browser.find_element("css selector", '#resources tr[data-key="array-01"] button[data-action="output"]')
        assert outcome.text == "reset failed"

        enter_admin_mode(browser, TOKEN)
        browser.find_element("css selector", '#resources tr[data-key="array-01"] button[data-action="output"]').click()
        output = wait_for(lambda: browser.find_elements("id", "reset-output"), 10, "the output dialog")[0]
        assert "cleaning array-01 after disconnect" in output.text and "LUN 7 still mapped" in output.text
        browser.find_element("id", "dialog-confirm").click()

        # The admin runs the reset again from the page (it fails again: it stays disabled).
        assert not browser.find_elements("css selector", '#resources tr[data-key="switch-01"] button[data-action="reset"]')
        wait_for(lambda: browser.find_elements("css selector", '#resources tr[data-key="array-01"] button[data-action="reset"]'),
                 10, "a Reset button")[0].click()
        browser.find_element("id", "dialog-confirm").click()
        wait_for(lambda: "Started the reset of array-01" in browser.find_element("id", "notice").text, 10, "the notice")
        with urllib.request.urlopen(urllib.request.Request(
                server.url + "/v1/resources/array-01/reset", headers={"Authorization": "Bearer " + TOKEN})) as answer:
            latest = json.load(answer)
        wait_for(lambda: json.load(urllib.request.urlopen(urllib.request.Request(
            server.url + "/v1/resources/array-01/reset", headers={"Authorization": "Bearer " + TOKEN})))["reason"] == "admin",
            10, "the admin's reset")
        assert latest["resource"] == "array-01"
        assert severe_console_messages(browser) == []
    finally:
        clients.close()
        server.stop()
