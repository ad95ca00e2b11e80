// History and usage on the status page, fetched only when asked for: a resource's last 50
// events (click its name) and the usage table per type for the last day or week. Nothing here
// runs per resource row, so a lab of 20,000 resources costs it nothing until someone asks.
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function age(seconds) {
    if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "";
    const total = Math.max(0, Math.floor(seconds));
    const pad = (n) => (n < 10 ? "0" + n : String(n));
    if (total < 60) return seconds < 10 && seconds % 1 !== 0 ? seconds.toFixed(1) + "s" : total + "s";
    if (total < 3600) return Math.floor(total / 60) + "m" + pad(total % 60) + "s";
    if (total < 86400) return Math.floor(total / 3600) + "h" + pad(Math.floor(total / 60) % 60) + "m";
    return Math.floor(total / 86400) + "d" + pad(Math.floor(total / 3600) % 24) + "h";
  }

  function when(iso) {
    return typeof iso === "string" ? iso.replace("T", " ").replace(/\.\d+Z$/, "Z").replace("Z", " UTC") : "";
  }

  /** The server's message for a failed call (`{"error": …}`), or the status line. */
  async function problem(response) {
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") return body.error;
    } catch (_) { /* not JSON */ }
    return "the server answered " + response.status;
  }

  function table(headers, className) {
    const root = el("table", "grid " + className);
    const tr = el("tr");
    for (const [text, cls] of headers) tr.appendChild(el("th", cls, text));
    root.appendChild(el("thead")).appendChild(tr);
    root.appendChild(el("tbody"));
    return root;
  }

  // ---------------------------------------------------------------- a resource's history

  let dialog = null;
  let asked = 0;

  function buildDialog() {
    const root = el("dialog", "dialog dialog-wide");
    root.id = "history-dialog";
    const body = el("div", "history-body");
    const title = el("h3", "dialog-title");
    title.id = "history-title";
    const status = el("p", "history-status");
    status.id = "history-status";
    const events = table([["When", "h-at"], ["Event", "h-event"], ["Holder", "h-holder"], ["Lease", "h-lease"],
                          ["Held / waited", "h-duration"], ["Why", "h-why"]], "history-table");
    events.id = "history-table";
    const close = el("button", "btn", "Close");
    close.type = "button";
    close.addEventListener("click", () => root.close());
    const actions = el("div", "dialog-buttons");
    actions.appendChild(close);
    body.append(title, status, events, actions);
    root.appendChild(body);
    document.body.appendChild(root);
    return root;
  }

  function eventRow(event) {
    const tr = el("tr", "h-" + String(event.event || "").replace(/[^a-z_]/g, ""));
    const cell = (cls, text) => tr.appendChild(el("td", cls, text));
    cell("h-at", when(event.at));
    cell("h-event", String(event.event || ""));
    cell("h-holder", typeof event.holder === "string" ? event.holder : "");
    cell("h-lease", typeof event.lease === "string" ? event.lease : "");
    let duration = "";
    if (typeof event.held_seconds === "number") duration = "held " + age(event.held_seconds);
    else if (typeof event.waited_seconds === "number") duration = "waited " + age(event.waited_seconds);
    cell("h-duration", duration);
    const why = [];
    if (typeof event.reason === "string" && event.reason) why.push(event.reason);
    if (typeof event.code === "string") why.push(event.code);
    if (typeof event.by === "string") why.push("by " + event.by);
    cell("h-why", why.join("; "));
    return tr;
  }

  async function showHistory(name) {
    if (!dialog) dialog = buildDialog();
    const ticket = ++asked;
    $("history-title").textContent = "History of " + name;
    const status = $("history-status");
    const events = $("history-table");
    status.textContent = "Loading the last 50 events…";
    status.hidden = false;
    events.hidden = true;
    events.tBodies[0].replaceChildren();
    if (!dialog.open) dialog.showModal();
    let answer;
    try {
      const response = await fetch("/v1/history?resource=" + encodeURIComponent(name) + "&limit=50", { cache: "no-store" });
      if (ticket !== asked) return;
      if (!response.ok) {
        status.textContent = await problem(response);
        return;
      }
      answer = await response.json();
    } catch (error) {
      if (ticket === asked) status.textContent = "Could not load the history: " + error.message;
      return;
    }
    if (ticket !== asked) return;
    const list = Array.isArray(answer.events) ? answer.events : [];
    events.tBodies[0].replaceChildren(...list.map(eventRow));
    events.hidden = list.length === 0;
    status.textContent = list.length === 0 ? "No events for " + name + " in the journal."
      : list.length === 50 ? "The last 50 events, newest first (leasehold history --resource " + name + " shows more)."
      : list.length + " events, newest first.";
  }

  const resources = $("resources");
  if (resources) {
    const heading = resources.tHead && resources.tHead.querySelector("th.c-name");
    if (heading) heading.title = "Click a name for its history";
    resources.classList.add("has-history");
    resources.tBodies[0].addEventListener("click", (event) => {
      const td = event.target instanceof Element ? event.target.closest("td.c-name") : null;
      const name = td ? td.closest("tr")?.dataset.key : undefined;
      if (name !== undefined) showHistory(name);
    });
  }

  // ---------------------------------------------------------------- usage per type

  const usage = $("usage");
  let usageAsked = 0;

  async function showUsage(link) {
    const days = Number(link.dataset.days) || 1;
    for (const other of usage.querySelectorAll("a[data-days]")) other.classList.toggle("btn-primary", other === link);
    const status = $("usage-status");
    const rows = $("usage-table");
    const ticket = ++usageAsked;
    status.hidden = false;
    status.textContent = "Loading…";
    const since = new Date(Date.now() - days * 86400000).toISOString();
    let answer;
    try {
      const response = await fetch("/v1/usage?by=type&since=" + encodeURIComponent(since), { cache: "no-store" });
      if (ticket !== usageAsked) return;
      if (!response.ok) {
        status.textContent = await problem(response);
        rows.hidden = true;
        return;
      }
      answer = await response.json();
    } catch (error) {
      if (ticket === usageAsked) status.textContent = "Could not load the usage: " + error.message;
      return;
    }
    if (ticket !== usageAsked) return;
    const body = rows.tBodies[0];
    body.replaceChildren();
    for (const row of Array.isArray(answer.rows) ? answer.rows : []) {
      const tr = el("tr");
      tr.dataset.key = String(row.name);
      const cell = (cls, text) => tr.appendChild(el("td", cls, text));
      cell("u-name", String(row.name));
      cell("u-held", age(row.held_seconds));
      cell("u-share", typeof row.share === "number" ? (row.share * 100).toFixed(1) + "%" : "");
      cell("u-leases", String(row.leases ?? 0));
      cell("u-p50", row.grant_wait_p50 === null ? "–" : age(row.grant_wait_p50));
      cell("u-p95", row.grant_wait_p95 === null ? "–" : age(row.grant_wait_p95));
      cell("u-abnormal", String(row.abnormal_ends ?? 0));
      cell("u-resets", String(row.failed_resets ?? 0));
      body.appendChild(tr);
    }
    rows.hidden = false;
    status.textContent = "From " + when(answer.since) + " to " + when(answer.until) + ".";
  }

  if (usage) {
    usage.addEventListener("click", (event) => {
      const link = event.target instanceof Element ? event.target.closest("a[data-days]") : null;
      if (!link) return;
      event.preventDefault();
      showUsage(link);
    });
  }
})();
