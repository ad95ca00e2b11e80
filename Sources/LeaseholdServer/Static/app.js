// leasehold status page: keeps the server-rendered tables live through /v1/watch.
//
// - Rows are keyed (data-key: resource name, lease id) and updated in place: a snapshot touches
//   only the cells whose value changed, adds and removes only the rows that came and went.
// - Reconnects with backoff; while disconnected the page says so (banner, red pill, greyed
//   tables, frozen clocks, tab title), and it only looks live again after a fresh snapshot.
// - Values from the server reach the DOM only as textContent (or an http(s) href): no innerHTML.
// - The admin token lives in sessionStorage and in Authorization headers, nowhere else.
(() => {
  "use strict";

  const STATES = new Set(["free", "held", "reserved", "disabled", "resetting"]);
  const COUNTED = ["free", "held", "reserved", "disabled", "resetting"];
  const FIELDS = new Set(["name", "type", "state", "holder", "label", "lease"]);
  const TOKEN_KEY = "leasehold.admin-token";
  const BACKOFF_FIRST_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const QUIET_PROBE_MS = 30000; // no message for this long: check that the server is still there
  const PROBE_TIMEOUT_MS = 5000;
  const ADMIN_TIMEOUT_MS = 10000;
  const FIRST_SNAPSHOT_MS = 10000; // a socket that has sent no snapshot by then is given up

  const body = document.body;
  const $ = (id) => document.getElementById(id);
  // The browser's clock may be off; the page carries the server's time at render.
  const renderedAt = Number(body.dataset.nowMs) || Date.now();
  const skew = renderedAt - Date.now();
  const serverNow = () => Date.now() + skew;

  // ---------------------------------------------------------------- small helpers

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function str(value) {
    return typeof value === "string" ? value : value === undefined || value === null ? "" : String(value);
  }

  function duration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    const pad = (n) => (n < 10 ? "0" : "") + n;
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + pad(s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + pad(Math.floor(s / 60) % 60) + "m";
    return Math.floor(s / 86400) + "d " + (Math.floor(s / 3600) % 24) + "h";
  }

  // Clock times are shown as the server saw them, in the viewer's time zone.
  const clockFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const clock = (serverMs) => clockFormat.format(new Date(serverMs));

  function labelPairs(labels) {
    if (!labels || typeof labels !== "object") return [];
    return Object.keys(labels).sort().map((key) => key + "=" + str(labels[key]));
  }

  function metaPairs(meta) {
    if (!meta || typeof meta !== "object") return [];
    return Object.keys(meta).sort().map((key) => [key, str(meta[key])]);
  }

  function wantsText(groups) {
    if (!Array.isArray(groups)) return "";
    return groups.map((group) => {
      if (!group || typeof group !== "object") return "?";
      if (typeof group.name === "string") return group.name;
      const count = Number(group.count) || 1;
      const pairs = labelPairs(group.labels);
      return (count === 1 ? "" : count + " × ") + str(group.type) + (pairs.length ? " (" + pairs.join(", ") + ")" : "");
    }).join(", ");
  }

  function webURL(text) {
    if (!/^https?:\/\/[^\s"<>]+$/i.test(text)) return null;
    try {
      const url = new URL(text);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (_) {
      return null;
    }
  }

  /** The job a lease belongs to: its first meta value, in key order, that is a web URL. */
  function jobURL(meta) {
    for (const [, value] of metaPairs(meta)) {
      const href = webURL(value);
      if (href) return href;
    }
    return null;
  }

  /** "2026-12-07T12:00:00Z" → "12:00:00 UTC", as the server writes it. */
  function untilText(iso) {
    return typeof iso === "string" && iso.length >= 19 ? iso.slice(11, 19) + " UTC" : "";
  }

  function fillChips(cell, items) {
    cell.replaceChildren(...items.map((text) => el("span", "chip", text)));
  }

  function fillMeta(cell, pairs) {
    cell.replaceChildren(...pairs.map(([key, value]) => {
      const href = webURL(value);
      if (!href) return el("span", "chip", key + "=" + value);
      const link = el("a", "chip chip-link", key + "=" + value);
      link.href = href;
      link.rel = "noopener noreferrer";
      link.target = "_blank";
      return link;
    }));
  }

  // ---------------------------------------------------------------- filter (same rules as the server: Tests/Fixtures/page-rules.json)

  function parseFilter(text) {
    const terms = [];
    for (const word of text.toLowerCase().split(/\s+/)) {
      if (!word) continue;
      const colon = word.indexOf(":");
      if (colon > 0 && FIELDS.has(word.slice(0, colon))) {
        const rest = word.slice(colon + 1);
        if (rest) terms.push({ field: word.slice(0, colon), text: rest });
      } else {
        terms.push({ field: null, text: word });
      }
    }
    return terms;
  }

  function fields(parts) {
    const out = { all: [] };
    for (const name of FIELDS) {
      out[name] = (parts[name] || []).map((value) => str(value).toLowerCase());
      out.all.push(...out[name]);
    }
    for (const value of parts.other || []) out.all.push(str(value).toLowerCase());
    return out;
  }

  // `type:` and `state:` name one value exactly (`type:switch` is not `fc-switch`); every other
  // word matches any part of a value.
  function matches(terms, f) {
    for (const term of terms) {
      const values = term.field ? f[term.field] : f.all;
      const exact = term.field === "type" || term.field === "state";
      if (!values.some((value) => (exact ? value === term.text : value.includes(term.text)))) return false;
    }
    return true;
  }

  // The rules above, for tests/test_status_page.py: it runs Tests/Fixtures/page-rules.json
  // against them, the same table that StatusPage.swift is tested with.
  window.leaseholdRules = Object.freeze({ duration, labelPairs, wantsText, parseFilter, fields, matches });

  // ---------------------------------------------------------------- keyed tables

  class Table {
    constructor(id, spec) {
      this.id = id;
      this.spec = spec;
      this.tbody = $(id).tBodies[0];
      this.count = $(id + "-count");
      this.empty = $(id + "-empty");
      this.rows = new Map();
      this.total = this.tbody.rows.length;
      if (spec.adminColumn) $(id).tHead.rows[0].appendChild(el("th", "c-admin", "Admin"));
      // Adopt the server-rendered rows, with what they show, so that the first snapshot only
      // touches what changed since the page was rendered.
      for (const tr of Array.from(this.tbody.rows)) {
        const key = tr.dataset.key;
        if (key === undefined || this.rows.has(key)) tr.remove();
        else this.rows.set(key, this.adopt(this.record(tr)));
      }
    }

    record(tr) {
      const rec = { tr, cells: {}, v: {}, f: null, match: null, since: null, time: null, timeText: null, adminFor: null };
      const existing = new Map();
      for (const td of Array.from(tr.cells)) existing.set(td.className.split(" ")[0], td);
      for (const name of this.spec.cells) {
        let td = existing.get("c-" + name);
        if (!td) {
          td = el("td", "c-" + name);
          tr.appendChild(td);
        }
        rec.cells[name] = td;
      }
      return rec;
    }

    /** Reads back the values a server-rendered row shows (the caches `fill` compares with). */
    adopt(rec) {
      const v = rec.v;
      const state = /(?:^| )s-(\w+)/.exec(rec.tr.className);
      if (state) v.state = state[1];
      for (const [name, td] of Object.entries(rec.cells)) {
        if (name === "for") {
          const time = td.querySelector("time");
          const ms = time ? Date.parse(time.dateTime) : NaN;
          if (!time || Number.isNaN(ms)) v.since = null;
          else {
            v.since = time.dateTime + " " + (this.spec.sinceWhat || v.state);
            rec.time = time;
            rec.since = ms;
          }
        } else if (name === "meta") {
          v.meta = JSON.stringify(Array.from(td.children, (chip) => {
            const text = chip.textContent;
            const eq = text.indexOf("=");
            return [text.slice(0, eq), text.slice(eq + 1)];
          }));
        } else if (this.spec.chipCells && this.spec.chipCells.includes(name)) {
          v[name] = Array.from(td.children, (chip) => chip.textContent).join("\n");
        } else if (name === "state") {
          const why = td.querySelector(".why");
          v.why = why ? why.textContent : "";
        } else {
          v[name] = td.textContent;
          const link = td.querySelector("a.holder-link");
          v[name + "Link"] = link ? link.getAttribute("href") : "";
        }
      }
      return rec;
    }

    update(items, ctx) {
      const spec = this.spec;
      const keys = new Set();
      const list = [];
      for (const item of items) {
        if (!item || typeof item !== "object") continue;
        const key = spec.key(item);
        if (typeof key !== "string" || keys.has(key)) continue;
        keys.add(key);
        list.push([key, item]);
      }
      for (const [key, rec] of this.rows) {
        if (!keys.has(key)) {
          rec.tr.remove();
          this.rows.delete(key);
        }
      }
      let cursor = this.tbody.firstElementChild;
      for (const [key, item] of list) {
        let rec = this.rows.get(key);
        if (!rec) {
          const tr = el("tr");
          tr.dataset.key = key;
          rec = this.record(tr);
          this.rows.set(key, rec);
        }
        if (spec.fill(rec, item, ctx) || rec.f === null) {
          rec.f = fields(spec.fields(item, ctx));
          rec.match = null;
        }
        if (rec.tr === cursor) cursor = cursor.nextElementSibling;
        else this.tbody.insertBefore(rec.tr, cursor);
      }
      this.total = list.length;
    }

    /** Shows the rows that match; `all`: the filter changed, so look at every row. */
    filter(terms, all) {
      if (snapshotCount === 0) return; // the server rendered the rows already filtered
      let shown = 0;
      for (const rec of this.rows.values()) {
        if (all || rec.match === null) rec.match = terms.length === 0 || matches(terms, rec.f);
        if (rec.tr.hidden === rec.match) rec.tr.hidden = !rec.match;
        if (rec.match) shown++;
      }
      setText(this.count, shown === this.total ? String(this.total) : shown + " of " + this.total);
      this.empty.hidden = shown > 0;
      if (shown === 0) setText(this.empty, this.total === 0 ? this.spec.emptyText : this.spec.noMatchText);
      return shown;
    }

    tick(now) {
      for (const rec of this.rows.values()) {
        if (rec.time === null) continue;
        const text = duration(now - rec.since);
        if (rec.timeText !== text) {
          rec.time.textContent = text;
          rec.timeText = text;
        }
      }
    }
  }

  /** The "for" cell: a ticking duration since `iso`; nothing when `iso` is null. */
  function setSince(rec, iso, what) {
    const signature = iso === null ? null : iso + " " + what;
    if (rec.v.since === signature) return;
    rec.v.since = signature;
    const cell = rec.cells.for;
    const ms = iso === null ? NaN : Date.parse(iso);
    if (Number.isNaN(ms)) {
      cell.replaceChildren();
      rec.time = null;
      rec.since = null;
      return;
    }
    const time = el("time");
    time.dateTime = iso;
    time.title = what + " since " + new Date(ms).toLocaleString();
    cell.replaceChildren(time);
    rec.time = time;
    rec.since = ms;
    rec.timeText = null;
    const text = duration(serverNow() - ms);
    time.textContent = text;
    rec.timeText = text;
  }

  function put(rec, name, value) {
    if (rec.v[name] === value) return false;
    rec.v[name] = value;
    setText(rec.cells[name], value);
    return true;
  }

  /** A holder cell: the holder's text, linked to its job when the lease names one. */
  function putHolder(rec, text, href) {
    if (rec.v.holder === text && rec.v.holderLink === (href || "")) return false;
    rec.v.holder = text;
    rec.v.holderLink = href || "";
    const cell = rec.cells.holder;
    if (href) {
      const link = el("a", "holder-link", text);
      link.href = href;
      link.rel = "noopener noreferrer";
      link.target = "_blank";
      cell.replaceChildren(link);
    } else {
      setText(cell, text);
    }
    if (text) cell.title = text;
    else cell.removeAttribute("title");
    return true;
  }

  function putTitled(rec, name, value) {
    if (!put(rec, name, value)) return false;
    if (value) rec.cells[name].title = value;
    else rec.cells[name].removeAttribute("title");
    return true;
  }

  function putChips(rec, name, items) {
    const signature = items.join("\n");
    if (rec.v[name] === signature) return false;
    rec.v[name] = signature;
    fillChips(rec.cells[name], items);
    if (items.length) rec.cells[name].title = items.join(" ");
    else rec.cells[name].removeAttribute("title");
    return true;
  }

  function putMeta(rec, pairs) {
    const signature = JSON.stringify(pairs);
    if (rec.v.meta === signature) return false;
    rec.v.meta = signature;
    fillMeta(rec.cells.meta, pairs);
    return true;
  }

  const resources = new Table("resources", {
    cells: ["name", "type", "state", "for", "holder", "lease", "labels", "epoch"],
    chipCells: ["labels"],
    adminColumn: true,
    emptyText: "The inventory is empty.",
    noMatchText: "No resource matches the filter.",
    key: (r) => r.name,
    fill(rec, r, ctx) {
      let changed = put(rec, "name", r.name);
      changed = put(rec, "type", str(r.type)) || changed;
      const state = STATES.has(r.state) ? r.state : "unknown";
      const why = r.disabled && typeof r.disabled === "object" ? str(r.disabled.reason) : "";
      // The latest reset's outcome (its output on demand, for admins).
      const reset = r.reset && typeof r.reset === "object" ? r.reset : null;
      const resetKey = reset ? str(reset.result) + "@" + str(reset.at) : "";
      if (rec.v.state !== state || rec.v.why !== why || rec.v.reset !== resetKey) {
        rec.v.state = state;
        rec.v.why = why;
        rec.v.reset = resetKey;
        rec.tr.className = "s-" + state;
        const parts = [el("span", "state state-" + state, state)];
        if (why) parts.push(el("span", "why", why));
        if (reset && state !== "resetting") {
          const outcome = el("button", "reset-outcome reset-" + str(reset.result), "reset " + str(reset.result));
          outcome.type = "button";
          outcome.dataset.action = "output";
          outcome.title = (str(reset.detail) || str(reset.result)) + " · " + str(reset.at) + " · admins: click for the output";
          parts.push(outcome);
        }
        rec.cells.state.replaceChildren(...parts);
        if (why) rec.cells.state.title = "disabled: " + why;
        else rec.cells.state.removeAttribute("title");
        changed = true;
      }
      const showsLease = state === "held" || state === "reserved";
      const lease = state === "held" && ctx ? ctx.leaseById.get(str(r.lease)) : null;
      changed = putHolder(rec, showsLease ? str(r.holder) : "", lease ? jobURL(lease.meta) : null) || changed;
      changed = put(rec, "lease", showsLease ? str(r.lease) : "") || changed;
      changed = putChips(rec, "labels", labelPairs(r.labels)) || changed;
      put(rec, "epoch", str(r.epoch));
      setSince(rec, state === "free" || typeof r.since !== "string" ? null : r.since, state);
      // A held resource can be disabled too (its lease runs on): it then offers Enable.
      rec.v.enabled = r.enabled !== false;
      rec.v.resettable = r.resettable === true;
      if (admin.on && rec.adminFor !== adminKey(rec)) renderAdminCell(rec);
      return changed;
    },
    fields: (r) => {
      const showsLease = r.state === "held" || r.state === "reserved";
      return {
        name: [r.name], type: [r.type], state: [r.state], label: labelPairs(r.labels),
        holder: showsLease ? [r.holder] : [], lease: showsLease ? [r.lease] : [],
      };
    },
  });

  const leases = new Table("leases", {
    cells: ["lease", "holder", "resources", "for", "peer", "meta"],
    chipCells: ["resources"],
    sinceWhat: "held",
    emptyText: "No leases: nothing is held.",
    noMatchText: "No lease matches the filter.",
    key: (l) => l.id,
    fill(rec, l) {
      let changed = put(rec, "lease", l.id);
      changed = putTitled(rec, "holder", str(l.holder)) || changed;
      const names = Array.isArray(l.resources) ? l.resources.map(str) : [];
      changed = putChips(rec, "resources", names) || changed;
      changed = put(rec, "peer", str(l.peer)) || changed;
      changed = putMeta(rec, metaPairs(l.meta)) || changed;
      setSince(rec, typeof l.since === "string" ? l.since : null, "held");
      return changed;
    },
    fields: (l, ctx) => {
      const names = Array.isArray(l.resources) ? l.resources.map(str) : [];
      const held = names.map((name) => ctx.byName.get(name)).filter(Boolean);
      return {
        name: names, type: held.map((r) => r.type), state: ["held"], holder: [l.holder],
        label: held.flatMap((r) => labelPairs(r.labels)), lease: [l.id],
        other: [l.peer, ...metaPairs(l.meta).map((pair) => pair[1])],
      };
    },
  });

  const queue = new Table("queue", {
    cells: ["pos", "lease", "holder", "wants", "collected", "for", "until", "blocked", "meta"],
    chipCells: ["collected", "blocked"],
    sinceWhat: "waiting",
    emptyText: "Nobody is waiting.",
    noMatchText: "No waiter matches the filter.",
    key: (w) => w.id,
    fill(rec, w, ctx) {
      put(rec, "pos", str(w.position));
      let changed = put(rec, "lease", w.id);
      changed = putTitled(rec, "holder", str(w.holder)) || changed;
      changed = put(rec, "wants", wantsText(w.want)) || changed;
      changed = putChips(rec, "collected", Array.isArray(w.reserved) ? w.reserved.map(str) : []) || changed;
      changed = put(rec, "until", untilText(w.until)) || changed;
      const blockers = (Array.isArray(w.blocked_by) ? w.blocked_by.map(str) : []).map((id) => {
        const lease = ctx ? ctx.leaseById.get(id) : null;
        return lease ? id + " · " + str(lease.holder) : id;
      });
      changed = putChips(rec, "blocked", blockers) || changed;
      changed = putMeta(rec, metaPairs(w.meta)) || changed;
      setSince(rec, typeof w.since === "string" ? w.since : null, "waiting");
      return changed;
    },
    fields: (w, ctx) => {
      const parts = { name: [], type: [], label: [], state: ["waiting"], holder: [w.holder], lease: [w.id] };
      for (const group of Array.isArray(w.want) ? w.want : []) {
        if (!group || typeof group !== "object") continue;
        if (typeof group.name === "string") {
          // A named want counts with that resource's type and labels, as a lease's resources do.
          parts.name.push(group.name);
          const r = ctx.byName.get(group.name);
          if (r) {
            parts.type.push(r.type);
            parts.label.push(...labelPairs(r.labels));
          }
        } else {
          parts.type.push(group.type);
          parts.label.push(...labelPairs(group.labels));
        }
      }
      if (Array.isArray(w.reserved)) parts.name.push(...w.reserved);
      parts.other = [w.peer, ...metaPairs(w.meta).map((pair) => pair[1])];
      return parts;
    },
  });

  const tables = [resources, leases, queue];

  // ---------------------------------------------------------------- summary

  const summary = $("summary");
  const cards = new Map();
  for (const card of Array.from(summary.children)) {
    if (card.dataset.key === undefined) continue;
    cards.set(card.dataset.key, cardParts(card));
  }

  function cardParts(card) {
    const parts = { card, type: card.querySelector(".card-type") };
    for (const name of [...COUNTED, "total"]) parts[name] = card.querySelector(".n-" + name);
    return parts;
  }

  function filterLink(text, query) {
    const link = el("a", null, text);
    link.href = "?q=" + encodeURIComponent(query).replace(/%20/g, "+");
    return link;
  }

  function newCard(type) {
    const card = el("div", "card");
    card.dataset.key = type;
    const free = filterLink("0", "type:" + type + " state:free");
    free.className = "n-free";
    const typeLink = filterLink(type, "type:" + type);
    typeLink.className = "card-type";
    const freeLine = el("span", "card-free");
    const of = el("span", "muted", "of ");
    of.append(el("span", "n-total", "0"));
    freeLine.append(free, " free ", of);
    const detail = el("span", "card-detail");
    detail.append(el("span", "n-held", "0"), " held · ", el("span", "n-reserved", "0"), " reserved · ",
      el("span", "n-disabled", "0"), " disabled · ", el("span", "n-resetting", "0"), " resetting");
    card.append(typeLink, freeLine, detail);
    return cardParts(card);
  }

  function updateSummary(list, leaseCount, waiting) {
    const counts = new Map();
    const overall = { free: 0, held: 0, reserved: 0, disabled: 0, resetting: 0 };
    for (const r of list) {
      if (!r || typeof r !== "object") continue;
      const type = str(r.type);
      let c = counts.get(type);
      if (!c) counts.set(type, (c = { free: 0, held: 0, reserved: 0, disabled: 0, resetting: 0, total: 0 }));
      if (STATES.has(r.state)) {
        c[r.state]++;
        overall[r.state]++;
      }
      c.total++;
    }
    for (const [type, parts] of cards) {
      if (!counts.has(type)) {
        parts.card.remove();
        cards.delete(type);
      }
    }
    let cursor = summary.firstElementChild;
    for (const [type, c] of counts) {
      let parts = cards.get(type);
      if (!parts) cards.set(type, (parts = newCard(type)));
      for (const name of [...COUNTED, "total"]) setText(parts[name], String(c[name]));
      parts.card.classList.toggle("none-free", c.free === 0);
      if (parts.card === cursor) cursor = cursor.nextElementSibling;
      else summary.insertBefore(parts.card, cursor);
    }
    const line = $("overall");
    const total = overall.free + overall.held + overall.reserved + overall.disabled + overall.resetting;
    const values = { resources: total, ...overall, leases: leaseCount, waiting };
    for (const [name, value] of Object.entries(values)) {
      const node = line.querySelector(".n-" + name);
      if (node) setText(node, String(value));
    }
    return overall;
  }

  // ---------------------------------------------------------------- filter box

  const filterInput = $("filter");
  let terms = parseFilter(filterInput.value);
  let filterScheduled = false;

  function applyFilter(all) {
    for (const table of tables) table.filter(terms, all);
  }

  function filterChanged() {
    if (filterScheduled) return;
    filterScheduled = true;
    requestAnimationFrame(() => {
      filterScheduled = false;
      terms = parseFilter(filterInput.value);
      applyFilter(true);
      const q = filterInput.value.trim();
      const url = location.pathname + (q ? "?q=" + encodeURIComponent(q).replace(/%20/g, "+") : "") + location.hash;
      history.replaceState(null, "", url);
    });
  }

  function setFilter(text) {
    filterInput.value = text;
    filterChanged();
  }

  for (const type of ["input", "search", "change"]) filterInput.addEventListener(type, filterChanged);
  filterInput.form.addEventListener("submit", (event) => {
    event.preventDefault();
    filterChanged();
  });
  filterInput.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && filterInput.value) {
      event.preventDefault();
      setFilter("");
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement || $("dialog")?.open) return;
    event.preventDefault();
    filterInput.focus();
    filterInput.select();
  });
  summary.addEventListener("click", (event) => {
    const link = event.target instanceof Element ? event.target.closest("a[href^='?q=']") : null;
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    setFilter(new URLSearchParams(link.search).get("q") || "");
  });

  // ---------------------------------------------------------------- snapshots

  let snapshotCount = 0;
  let last = { resources: [], leases: [], queue: [], byName: new Map(), leaseById: new Map() };

  function applySnapshot(doc) {
    const started = performance.now();
    const list = (Array.isArray(doc.resources) ? doc.resources : []).filter((r) => r && typeof r.name === "string");
    const leaseList = (Array.isArray(doc.leases) ? doc.leases : []).filter((l) => l && typeof l.id === "string");
    const waiting = (Array.isArray(doc.queue) ? doc.queue : []).filter((w) => w && typeof w.id === "string");
    const byName = new Map(list.map((r) => [r.name, r]));
    const leaseById = new Map(leaseList.map((l) => [l.id, l]));
    const ctx = { byName, leaseById };
    resources.update(list, ctx);
    leases.update(leaseList, ctx);
    queue.update(waiting, ctx);
    snapshotCount++;
    applyFilter(false);
    const overall = updateSummary(list, leaseList.length, waiting.length);
    last = { resources: list, leases: leaseList, queue: waiting, byName, leaseById, overall, total: list.length };
    if (doc.server && typeof doc.server.version === "string") setText($("version"), doc.server.version);
    body.dataset.snapshots = String(snapshotCount);
    body.dataset.applyMs = (performance.now() - started).toFixed(1);
    updateTitle();
  }

  function updateTitle() {
    const overall = last.overall || { free: 0 };
    let title = "leasehold · " + overall.free + " of " + (last.total || 0) + " free";
    if (last.queue.length) title += " · " + last.queue.length + " waiting";
    if (connection.state !== "live") title = (connection.state === "stale" ? "⚠ disconnected · " : "connecting · ") + title;
    if (document.title !== title) document.title = title;
  }

  // ---------------------------------------------------------------- connection

  const header = document.querySelector(".topbar");
  const connBox = $("conn");
  const connText = $("conn-text");
  const banner = el("div", "banner banner-stale");
  banner.id = "stale-banner";
  banner.setAttribute("role", "alert");
  banner.hidden = true;
  const bannerText = el("span", "banner-text");
  const reconnectButton = el("button", "btn btn-small", "Reconnect now");
  reconnectButton.type = "button";
  reconnectButton.id = "reconnect-now";
  banner.append(el("strong", null, "Disconnected from the server."), " ", bannerText, " ", reconnectButton);
  header.appendChild(banner);

  const connection = {
    state: "connecting", // connecting (no live data yet) | live | stale
    socket: null,
    attempt: 0,
    retryAt: 0,
    retryTimer: 0,
    firstSnapshotTimer: 0,
    lostAt: 0,
    lastMessageAt: 0,
    probing: false,
  };

  function watchURL() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/watch";
  }

  function showConnection() {
    const state = connection.state;
    connBox.className = "conn conn-" + state;
    body.dataset.conn = state;
    body.classList.toggle("stale", state === "stale");
    if (state === "live") {
      setText(connText, "Live");
      connBox.title = "Updates arrive as they happen through /v1/watch.";
    } else if (state === "connecting") {
      setText(connText, "Connecting…");
      connBox.title = "";
    } else {
      setText(connText, "Disconnected · data from " + clock(connection.lostAt + skew));
      connBox.title = "The tables are not being updated.";
    }
    banner.hidden = state !== "stale";
    if (state === "stale") {
      const asOf = clock(connection.lostAt + skew);
      const wait = Math.ceil((connection.retryAt - Date.now()) / 1000);
      const next = connection.socket ? "Reconnecting…" : wait > 0 ? "Reconnecting in " + wait + " s." : "Reconnecting…";
      setText(bannerText, "The tables show the lab as it was at " + asOf + " and may be out of date. " + next);
    }
    updateTitle();
    stickyTop();
  }

  function connect() {
    clearTimeout(connection.retryTimer);
    connection.retryTimer = 0;
    if (connection.socket) return;
    let socket;
    try {
      socket = new WebSocket(watchURL());
    } catch (_) {
      lost();
      return;
    }
    connection.socket = socket;
    showConnection();
    let gotSnapshot = false;
    clearTimeout(connection.firstSnapshotTimer);
    connection.firstSnapshotTimer = setTimeout(() => {
      if (connection.socket === socket && !gotSnapshot) lost();
    }, FIRST_SNAPSHOT_MS);
    socket.onmessage = (event) => {
      if (connection.socket !== socket) return;
      connection.lastMessageAt = Date.now();
      let doc;
      try {
        doc = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      if (!doc || doc.event !== "snapshot") return;
      gotSnapshot = true;
      applySnapshot(doc);
      if (connection.state !== "live") {
        connection.state = "live";
        connection.attempt = 0;
        showConnection();
        tickClocks();
      }
    };
    socket.onclose = () => {
      if (connection.socket === socket) lost();
    };
  }

  /** The connection is gone (or never came): say so, and try again after a backoff. */
  function lost() {
    const socket = connection.socket;
    connection.socket = null;
    if (socket) {
      socket.onmessage = socket.onclose = null;
      try {
        socket.close();
      } catch (_) { /* already closed */ }
    }
    if (connection.state !== "stale") {
      // Live until now, or (never live) as the server rendered the page.
      connection.lostAt = connection.state === "live" ? Date.now() : renderedAt - skew;
      connection.state = "stale";
    }
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** connection.attempt);
    const delay = Math.round(base * (0.8 + 0.4 * Math.random()));
    connection.attempt = Math.min(connection.attempt + 1, 10);
    connection.retryAt = Date.now() + delay;
    clearTimeout(connection.retryTimer);
    connection.retryTimer = setTimeout(connect, delay);
    showConnection();
  }

  function reconnectNow() {
    if (connection.socket) return;
    connection.attempt = 0;
    connect();
  }

  /** A quiet socket may be dead without knowing it (laptop asleep, network gone): ask the server. */
  async function probe() {
    const socket = connection.socket;
    connection.probing = true;
    let alive = false;
    try {
      const response = await fetch("/healthz", { cache: "no-store", signal: AbortSignal.timeout(PROBE_TIMEOUT_MS) });
      alive = response.ok;
    } catch (_) {
      alive = false;
    }
    connection.probing = false;
    if (connection.socket !== socket) return;
    if (alive) connection.lastMessageAt = Date.now();
    else lost();
  }

  function tickClocks() {
    if (connection.state === "live") {
      const now = serverNow();
      for (const table of tables) table.tick(now);
    }
  }

  setInterval(() => {
    tickClocks();
    if (connection.state === "stale") showConnection(); // the countdown
    if (connection.state === "live" && !connection.probing && Date.now() - connection.lastMessageAt > QUIET_PROBE_MS) {
      probe();
    }
  }, 1000);

  reconnectButton.addEventListener("click", reconnectNow);
  window.addEventListener("online", reconnectNow);
  window.addEventListener("offline", () => {
    if (connection.socket || connection.state === "live") lost();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && !connection.socket) reconnectNow();
  });
  window.addEventListener("pageshow", (event) => {
    if (event.persisted && !connection.socket) reconnectNow();
  });

  // The sticky table headers sit under the top bar, whatever its height.
  function stickyTop() {
    document.documentElement.style.setProperty("--sticky-top", header.offsetHeight + "px");
  }
  if (typeof ResizeObserver === "function") new ResizeObserver(stickyTop).observe(header);
  window.addEventListener("resize", stickyTop);

  // ---------------------------------------------------------------- admin

  const admin = { on: false, token: null };
  const tools = $("tools");
  const adminBadge = el("span", "admin-badge", "Admin mode");
  adminBadge.hidden = true;
  const adminButton = el("button", "btn btn-ghost", "Admin…");
  adminButton.type = "button";
  adminButton.id = "admin-button";
  tools.append(adminBadge, adminButton);

  const notice = el("div", "notice");
  notice.id = "notice";
  notice.setAttribute("role", "status");
  notice.hidden = true;
  document.body.appendChild(notice);
  let noticeTimer = 0;

  function notify(text, isError) {
    notice.textContent = text;
    notice.className = "notice" + (isError ? " notice-error" : "");
    notice.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { notice.hidden = true; }, isError ? 12000 : 6000);
  }
  notice.addEventListener("click", () => { notice.hidden = true; });

  function storedToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (_) {
      return null;
    }
  }

  function storeToken(token) {
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage off: the token lives in memory for this page only */ }
  }

  function setAdmin(token) {
    admin.token = token || null;
    admin.on = !!admin.token;
    storeToken(admin.token);
    body.classList.toggle("admin", admin.on);
    adminBadge.hidden = !admin.on;
    adminButton.textContent = admin.on ? "Leave admin mode" : "Admin…";
    if (admin.on) for (const rec of resources.rows.values()) renderAdminCell(rec);
  }

  function actionButton(action, text, className) {
    const button = el("button", "btn btn-small " + (className || ""), text);
    button.type = "button";
    button.dataset.action = action;
    return button;
  }

  function adminKey(rec) {
    return rec.v.state + (rec.v.enabled === false ? "/disabled" : "") + (rec.v.resettable ? "/resettable" : "");
  }

  function renderAdminCell(rec) {
    const state = rec.v.state;
    rec.adminFor = adminKey(rec);
    const buttons = [];
    if (state === "held") buttons.push(actionButton("free", "Force free", "btn-danger"));
    const off = state === "disabled" || rec.v.enabled === false;
    buttons.push(off ? actionButton("enable", "Enable") : actionButton("disable", "Disable"));
    if (rec.v.resettable && (state === "free" || state === "disabled")) buttons.push(actionButton("reset", "Reset"));
    if (!rec.cells.admin) rec.tr.appendChild((rec.cells.admin = el("td", "c-admin")));
    rec.cells.admin.replaceChildren(...buttons);
  }

  // One dialog, built on demand, for the token and for confirmations.
  let dialog = null;

  function buildDialog() {
    const root = el("dialog", "dialog");
    root.id = "dialog";
    const form = el("form");
    form.method = "dialog";
    form.noValidate = true; // our own messages, in words that say what to do
    const title = el("h3", "dialog-title");
    title.id = "dialog-title";
    const text = el("div", "dialog-text");
    const field = el("label", "dialog-field");
    const label = el("span", "dialog-label");
    const input = el("input");
    input.id = "dialog-input";
    input.autocomplete = "off";
    input.spellcheck = false;
    field.append(label, input);
    const error = el("p", "dialog-error");
    error.id = "dialog-error";
    error.setAttribute("role", "alert");
    error.hidden = true;
    const buttons = el("div", "dialog-buttons");
    const cancel = el("button", "btn", "Cancel");
    cancel.type = "button";
    cancel.id = "dialog-cancel";
    const confirm = el("button", "btn btn-primary");
    confirm.type = "submit";
    confirm.id = "dialog-confirm";
    buttons.append(cancel, confirm);
    form.append(title, text, field, error, buttons);
    root.append(form);
    document.body.appendChild(root);
    const d = { root, form, title, text, field, label, input, error, cancel, confirm, busy: false, options: null };
    cancel.addEventListener("click", () => root.close());
    root.addEventListener("close", () => {
      if (root.open) return; // the close event of a dialog that was reopened meanwhile
      input.value = ""; // never leave a token lying in the DOM
      d.options = null;
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const options = d.options;
      if (d.busy || !options) return;
      const value = input.value.trim();
      if (options.input && options.input.required && !value) {
        showDialogError(options.input.missing || "This field is required.");
        input.focus();
        return;
      }
      d.busy = true;
      confirm.disabled = true;
      confirm.textContent = "Working…";
      let problem = null;
      try {
        problem = await options.submit(value);
      } finally {
        d.busy = false;
        confirm.disabled = false;
        if (d.options === options) confirm.textContent = options.confirm;
      }
      if (d.options !== options) return; // replaced by another dialog meanwhile
      if (problem) showDialogError(problem);
      else root.close();
    });
    return d;
  }

  function showDialogError(text) {
    dialog.error.textContent = text;
    dialog.error.hidden = false;
  }

  /** options: title, text (array of strings), input ({label, type, placeholder, required, missing}), confirm, danger, error, submit(value) → Promise<error text | null> */
  function openDialog(options) {
    if (!dialog) dialog = buildDialog();
    const d = dialog;
    if (d.root.open) d.root.close();
    d.options = options;
    d.title.textContent = options.title;
    d.text.replaceChildren(...(options.text || []).map((line) => (line instanceof Element ? line : el("p", null, line))));
    d.field.hidden = !options.input;
    d.input.value = "";
    if (options.input) {
      d.label.textContent = options.input.label;
      d.input.type = options.input.type || "text";
      d.input.placeholder = options.input.placeholder || "";
      d.input.required = !!options.input.required;
      d.input.maxLength = options.input.maxLength || 500;
    }
    d.error.hidden = !options.error;
    d.error.textContent = options.error || "";
    d.confirm.textContent = options.confirm;
    d.confirm.className = "btn " + (options.danger ? "btn-danger" : "btn-primary");
    d.root.showModal();
    (options.input ? d.input : d.confirm).focus();
  }

  /**
   * Asks for the admin token and checks it with the server before taking it. `retry`: the admin
   * action that was refused for want of it, run again once the token is right.
   */
  function askToken(error, retry) {
    openDialog({
      title: "Admin mode",
      text: ["Force free, Disable and Enable need the server's admin token. It stays in this browser tab " +
        "(sessionStorage) and is sent only as an Authorization header."],
      input: { label: "Admin token", type: "password", required: true, missing: "Enter the admin token.", maxLength: 4096 },
      confirm: retry ? "Enter admin mode and retry" : "Enter admin mode",
      error,
      submit: async (token) => {
        const refused = await checkToken(token);
        if (refused) return refused;
        setAdmin(token);
        if (retry) retry();
        else notify("Admin mode: Force free, Disable and Enable are in the Admin column.");
        return null;
      },
    });
  }

  /** Whether the server takes `token` (GET /v1/admin changes nothing): null when it does, else why not. */
  async function checkToken(token) {
    let response;
    try {
      response = await fetch("/v1/admin", {
        method: "GET", headers: { Authorization: "Bearer " + token }, cache: "no-store", credentials: "omit",
        redirect: "error", signal: AbortSignal.timeout(ADMIN_TIMEOUT_MS),
      });
    } catch (error) {
      const why = error && error.name === "TimeoutError" ? "no answer within " + ADMIN_TIMEOUT_MS / 1000 + " s" : "network error";
      return "Could not reach the server to check the token (" + why + "). Try again.";
    }
    if (response.ok) return null;
    if (response.status === 401) return "The server did not accept this admin token (401). Enter it again.";
    if (response.status === 403) return "Admin calls are disabled on this server (403): start it with --admin-token-file.";
    return "The server answered " + response.status + " while checking the token. Try again.";
  }

  adminButton.addEventListener("click", () => {
    if (admin.on) {
      setAdmin(null);
      notify("Left admin mode; the token is forgotten.");
    } else {
      askToken();
    }
  });

  async function adminCall(name, action, reason) {
    const headers = { Authorization: "Bearer " + admin.token };
    let payload;
    if (reason) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify({ reason });
    }
    let response;
    try {
      response = await fetch("/v1/resources/" + encodeURIComponent(name) + "/" + action, {
        method: "POST", headers, body: payload, cache: "no-store", credentials: "omit", redirect: "error",
        signal: AbortSignal.timeout(ADMIN_TIMEOUT_MS),
      });
    } catch (error) {
      const why = error && error.name === "TimeoutError" ? "no answer within " + ADMIN_TIMEOUT_MS / 1000 + " s" : "network error";
      return { ok: false, status: 0, message: "Could not reach the server (" + why + ")." };
    }
    let message = "";
    try {
      const answer = await response.json();
      message = answer && typeof answer.error === "string" ? answer.error : "";
    } catch (_) { /* not JSON */ }
    return { ok: response.ok, status: response.status, message };
  }

  /**
   * A readable sentence for a failed admin call, or null when the token was refused: then the
   * token dialog is open, and `retry` runs once a token the server takes is entered.
   */
  function explain(result, name, action, retry) {
    const detail = result.message ? ": " + result.message + "." : ".";
    switch (result.status) {
      case 0: return result.message;
      case 401:
        setAdmin(null);
        askToken("The server did not accept the admin token (401)" + detail + " Enter it again.", retry);
        return null;
      case 403: return "Admin calls are disabled on this server (403)" + detail;
      case 404: return "There is no resource named " + name + " any more (404).";
      case 409:
        return action === "free"
          ? name + " is not held any more, so there is no lease to free (409). The table shows its state now."
          : "The server refused (409)" + detail;
      case 400: return "The server refused the request (400)" + detail;
      default: return "The server answered " + result.status + detail;
    }
  }

  const PAST = { free: "Freed", disable: "Disabled", enable: "Enabled", reset: "Started the reset of" };

  async function perform(name, action, reason) {
    const result = await adminCall(name, action, reason);
    if (result.ok) return { ok: true };
    // Refused for the token: once a right one is entered, the same call runs again.
    const retry = async () => {
      const again = await perform(name, action, reason);
      if (again.ok) notify(PAST[action] + " " + name + ".");
      else if (again.error) notify(again.error, true);
    };
    return { ok: false, error: explain(result, name, action, retry) };
  }

  function confirmFree(name) {
    const r = last.byName.get(name) || {};
    const leaseId = str(r.lease);
    const lease = last.leaseById.get(leaseId);
    const holder = str(r.holder) || "an unknown holder";
    const held = lease && Array.isArray(lease.resources) ? lease.resources.map(str) : [name];
    const since = Date.parse(str(r.since));
    const text = ["Revoke lease " + (leaseId || "?") + " of " + holder +
      (Number.isNaN(since) ? "" : ", held for " + duration(serverNow() - since)) + "?"];
    if (held.length > 1) text.push("The lease also holds " + held.filter((n) => n !== name).join(", ") + ": all of it is freed.");
    text.push("The holder gets the reason and is disconnected (close code 4001); the resources go to the next waiter.");
    openDialog({
      title: "Force free " + name,
      text,
      input: { label: "Reason (shown to the holder and kept in the audit log)", placeholder: "e.g. job is gone, array wedged",
        required: true, missing: "Say why: the holder and the audit log get this reason." },
      confirm: "Force free " + name,
      danger: true,
      submit: async (reason) => {
        const outcome = await perform(name, "free", reason);
        if (outcome.ok) notify("Freed " + name + ": lease " + leaseId + " of " + holder + " is revoked.");
        return outcome.ok ? null : outcome.error;
      },
    });
  }

  function confirmDisable(name) {
    const r = last.byName.get(name) || {};
    const state = r.state;
    const text = [];
    if (state === "held") text.push("Its current lease (" + str(r.holder) + ") runs on; when it ends, " + name + " stays out of service.");
    else if (state === "reserved") text.push("It is taken back from the waiter " + str(r.holder) + ", which keeps its place in the queue.");
    text.push("Nobody is granted " + name + " until it is enabled again; requests that need it wait.");
    openDialog({
      title: "Disable " + name + "?",
      text,
      input: { label: "Reason (optional, kept in the audit log)", placeholder: "e.g. firmware upgrade" },
      confirm: "Disable " + name,
      danger: true,
      submit: async (reason) => {
        const outcome = await perform(name, "disable", reason);
        if (outcome.ok) notify("Disabled " + name + ".");
        return outcome.ok ? null : outcome.error;
      },
    });
  }

  async function enable(name, button) {
    button.disabled = true;
    const outcome = await perform(name, "enable", "");
    button.disabled = false;
    if (outcome.ok) notify("Enabled " + name + ".");
    else if (outcome.error) notify(outcome.error, true);
  }

  function confirmReset(name) {
    openDialog({
      title: "Reset " + name + "?",
      text: ["Runs the inventory's reset command for " + name + " now. Nobody is granted it while the reset runs; " +
        "if the command fails, " + name + " is disabled with the reason."],
      confirm: "Reset " + name,
      submit: async () => {
        const outcome = await perform(name, "reset", "");
        if (outcome.ok) notify("Started the reset of " + name + ".");
        return outcome.ok ? null : outcome.error;
      },
    });
  }

  /** The latest reset's output (admins only: it may name credentials). */
  async function showOutput(name) {
    let answer;
    try {
      const response = await fetch("/v1/resources/" + encodeURIComponent(name) + "/reset", {
        headers: { Authorization: "Bearer " + admin.token }, cache: "no-store", credentials: "omit", redirect: "error",
        signal: AbortSignal.timeout(ADMIN_TIMEOUT_MS),
      });
      answer = await response.json();
      if (!response.ok) return notify("The server answered " + response.status + ": " + str(answer && answer.error), true);
    } catch (_) {
      return notify("Could not fetch the reset's output from the server.", true);
    }
    const output = el("pre", "reset-output", str(answer.output) || "(no output)");
    output.id = "reset-output";
    openDialog({
      title: "Reset of " + name + ": " + str(answer.result),
      text: [str(answer.detail) + " · " + str(answer.at) + " · after: " + str(answer.reason), output],
      confirm: "Close",
      submit: async () => null,
    });
  }

  resources.tbody.addEventListener("click", (event) => {
    const button = event.target instanceof Element ? event.target.closest("button[data-action]") : null;
    if (!button) return;
    if (!admin.on) {
      if (button.dataset.action === "output") askToken("The reset's output is for admins: enter the admin token.");
      return;
    }
    const name = button.closest("tr")?.dataset.key;
    if (name === undefined) return;
    const action = button.dataset.action;
    if (action === "free") confirmFree(name);
    else if (action === "disable") confirmDisable(name);
    else if (action === "enable") enable(name, button);
    else if (action === "reset") confirmReset(name);
    else if (action === "output") showOutput(name);
  });

  // ---------------------------------------------------------------- start

  filterInput.closest("form").classList.add("live");
  setAdmin(storedToken());
  showConnection();
  connect();
})();
