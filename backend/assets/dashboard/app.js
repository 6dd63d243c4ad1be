// The marketplace's dashboard. It reads the public JSON API and its event streams like any
// other client, and draws its charts as inline SVG. No framework and no build step: this
// file is served as it is, from the binary, so the page works offline.
//
// Every request goes through `api()`, which never throws: a refusal or a network error
// comes back as a value and is shown in the panel that asked, so that one missing route
// (an older server, a target split off into another process) leaves the rest working.
"use strict";

(() => {
  /** A saga whose last move is older than this, still PROCESSING, is shown as stuck. */
  const STUCK_AFTER_MS = 10_000;
  /** Orders kept in the live feed. */
  const FEED_MAX = 40;
  /** Figures, stock and sagas in flight are read this often without a stream. */
  const POLL_MS = 5_000;
  /** The feed's fallback (the order list) when the order stream is not served. */
  const FEED_POLL_MS = 2_000;
  /** Per-minute buckets roll over with the clock even when nothing sells. */
  const SLOW_POLL_MS = 30_000;
  /** A stream the server refused is tried again this much later. */
  const STREAM_RETRY_MS = 60_000;
  const DEAD_LETTER_POLL_MS = 10_000;
  const TOKEN_KEY = "marketplace.operatorToken";

  const FINAL = ["SUCCESS", "INSUFFICIENT_FUND", "INSUFFICIENT_INVENTORY", "TIMEOUT", "UNKNOWN"];
  // The purchase API's fault flags (backend/src/api/purchase.rs FAULT_FLAGS), in its order.
  const FAULT_FLAGS = [
    "kill_create", "kill_payment", "timeout_payment", "kill_inventory",
    "timeout_inventory", "kill_deliver", "timeout_deliver",
  ];
  const FORWARD = ["order.create", "payment.charge", "inventory.reserve", "delivery.schedule", "order.complete"];
  const COMPENSATIONS = new Set(["delivery.cancel", "inventory.release", "payment.refund", "order.reject"]);
  /** Events that end a step attempt (the manager's view: its reply, deadline or dead letter). */
  const OUTCOMES = new Set(["done", "refused", "failed", "skipped", "timed_out", "dead_lettered"]);

  const state = {
    config: { trace_ui_url: null },
    /** order id -> what the feed knows of it */
    feed: new Map(),
    feedLive: false,
    analyticsLive: false,
    summary: null,
    timeseries: null,
    inventory: null,
    selected: null,
    /** The last order shown in the timeline, kept for redrawing on resize. */
    shownOrder: null,
    /** Server clock minus this browser's (from the Date header), for the ages of sagas. */
    clockSkewMs: 0,
  };

  // ---- DOM helpers ------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  const SVG_NS = "http://www.w3.org/2000/svg";

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") {
        for (const [name, data] of Object.entries(value)) if (data !== undefined && data !== null) node.dataset[name] = data;
      }
      else node.setAttribute(key, value === true ? "" : String(value));
    }
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
  }

  /** An HTML element; text children are text nodes (never parsed as markup). */
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  /** An SVG element. */
  function s(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function fill(node, ...children) {
    node.replaceChildren();
    append(node, children);
  }

  /** A panel's note line: `kind` is "" (plain), "muted", "warn" or "error". */
  function note(id, text, kind = "muted") {
    const node = $(id);
    if (!node) return;
    node.textContent = text || "";
    node.className = `note ${kind}`;
  }

  const number = new Intl.NumberFormat("en");
  const fmt = (n) => (typeof n === "number" && Number.isFinite(n) ? number.format(n) : "–");
  const clock = (ms) => new Date(ms).toLocaleTimeString("en-GB", { hour12: false });
  const hhmm = (ms) => new Date(ms).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", hour12: false });
  const shortId = (id) => `…${String(id).slice(-8)}`;
  const statusClass = (status) => `st-${status || "PROCESSING"}`;

  function duration(ms) {
    if (!Number.isFinite(ms)) return "";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
    return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
  }

  function badge(status) {
    return h("span", { class: `badge ${statusClass(status)}` }, status || "PROCESSING");
  }

  /** Milliseconds of a timestamp that is either `*_ms` or RFC 3339. */
  function millis(ms, text) {
    if (typeof ms === "number") return ms;
    const parsed = Date.parse(text);
    return Number.isFinite(parsed) ? parsed : NaN;
  }

  function serverNow() {
    return Date.now() + state.clockSkewMs;
  }

  // ---- errors -----------------------------------------------------------------------------

  function showPageError(error) {
    const banner = $("page-error");
    banner.textContent = `The page hit an error: ${error && error.message ? error.message : error}`;
    banner.hidden = false;
  }

  /** Runs `task`, showing whatever it throws in the page instead of losing it. */
  async function guard(task) {
    try {
      await task();
    } catch (error) {
      showPageError(error);
    }
  }

  window.addEventListener("error", (event) => showPageError(event.error || event.message));
  window.addEventListener("unhandledrejection", (event) => showPageError(event.reason));

  // ---- the API ------------------------------------------------------------------------------

  function operatorToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch {
      return "";
    }
  }

  /**
   * One request. Resolves to `{ok, status, data, message}` and never rejects: status 0 is a
   * network error; `data` is the parsed JSON (or the text of a non-JSON answer); `message`
   * says what went wrong in words fit for the page.
   */
  async function api(path, { method = "GET", body, operator = false } = {}) {
    const headers = { Accept: "application/json, text/plain;q=0.5" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const token = operatorToken();
    if (operator && token) headers.Authorization = `Bearer ${token}`;
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (error) {
      return { ok: false, status: 0, data: null, message: `${method} ${path}: network error (${error.message})` };
    }
    const date = Date.parse(response.headers.get("Date") || "");
    if (Number.isFinite(date)) {
      // The Date header has whole seconds: only a skew above that is worth correcting.
      const skew = date - Date.now();
      state.clockSkewMs = Math.abs(skew) > 2000 ? skew : 0;
    }
    let text = "";
    try {
      text = await response.text();
    } catch (error) {
      return { ok: false, status: response.status, data: null, message: `${method} ${path}: ${error.message}` };
    }
    let data = text;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      // Not JSON (Prometheus text, an HTML error page): kept as text.
    }
    if (response.ok) return { ok: true, status: response.status, data, message: "" };
    return { ok: false, status: response.status, data, message: explain(method, path, response.status, data) };
  }

  function explain(method, path, status, data) {
    let detail = "";
    if (data && typeof data === "object") detail = [data.error, data.detail].filter(Boolean).join(": ");
    else if (typeof data === "string") detail = data.slice(0, 200);
    let hint = "";
    if (status === 401) hint = " — set the operator token (top right)";
    if (status === 403 && /token|loopback/i.test(detail)) hint = " — the operator token is wrong or missing";
    return `${method} ${path} → ${status}${detail ? ` ${detail}` : ""}${hint}`;
  }

  /** Whether a failed answer means the server has no such route (an older build, a split target). */
  const missingRoute = (r) => r.status === 404 || r.status === 405;

  /** Routes found missing: path (without its query) -> [when, the answer]. */
  const missing = new Map();

  /**
   * `api()` for a route the server may not have: once it answered 404 or 405, the same
   * answer is returned without asking for STREAM_RETRY_MS, so that a panel the server
   * cannot fill costs one request a minute, not one per refresh.
   */
  async function optional(path, options) {
    const route = path.split("?")[0];
    const known = missing.get(route);
    if (known && Date.now() - known[0] < STREAM_RETRY_MS) return known[1];
    const r = await api(path, options);
    if (!r.ok && missingRoute(r)) missing.set(route, [Date.now(), r]);
    else missing.delete(route);
    return r;
  }

  function unavailable(what, r) {
    return missingRoute(r) ? `${what}: not available on this server (${r.status})` : r.message;
  }

  // ---- scheduling ---------------------------------------------------------------------------

  /** `task` every `ms`, the next run only after the previous one ended. */
  function every(ms, task) {
    const run = () => guard(task).finally(() => setTimeout(run, ms));
    run();
  }

  /**
   * A trigger for `task` that runs it at most once per `ms`: calls that come meanwhile are
   * folded into one run after it, so a burst of events costs one refresh.
   */
  function coalesced(ms, task) {
    let timer = null;
    let running = false;
    let pending = false;
    let last = -Infinity;
    const fire = async () => {
      timer = null;
      running = true;
      pending = false;
      last = Date.now();
      await guard(task);
      running = false;
      if (pending) schedule();
    };
    const schedule = () => {
      if (running) {
        pending = true;
        return;
      }
      if (timer === null) timer = setTimeout(fire, Math.max(0, last + ms - Date.now()));
    };
    return schedule;
  }

  function setSource(id, text, kind) {
    const pill = $(id);
    pill.textContent = text;
    pill.className = `pill ${kind}`;
  }

  /**
   * An EventSource on `path` that says how it is doing. The browser reconnects by itself
   * after a network error (with Last-Event-ID); a refusal (not 200, not an event stream)
   * closes it for good, so `onRefused` is told and the stream is tried again later.
   */
  function stream(path, { events, onOpen, onReconnecting, onRefused }) {
    let source;
    try {
      source = new EventSource(path);
    } catch (error) {
      onRefused(`${path}: ${error.message}`);
      setTimeout(() => stream(path, { events, onOpen, onReconnecting, onRefused }), STREAM_RETRY_MS);
      return;
    }
    source.addEventListener("open", () => onOpen());
    for (const [name, handler] of Object.entries(events)) {
      source.addEventListener(name, (event) => {
        try {
          handler(JSON.parse(event.data), event);
        } catch (error) {
          showPageError(new Error(`${path}: a "${name}" event could not be read: ${error.message}`));
        }
      });
    }
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        onRefused(`${path} is not available on this server`);
        setTimeout(() => stream(path, { events, onOpen, onReconnecting, onRefused }), STREAM_RETRY_MS);
      } else {
        onReconnecting();
      }
    });
  }

  // ---- charts -------------------------------------------------------------------------------

  function chartWidth(container, fallback = 600) {
    return Math.max(240, Math.floor(container.clientWidth || fallback));
  }

  /** Vertical bars over time: `series` is [{start_ms, parts: [{value, cls, label}]}] stacked. */
  function drawBars(container, series, { unit, bucketMs }) {
    const width = chartWidth(container);
    const height = 190;
    const pad = { left: 44, right: 8, top: 10, bottom: 22 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const totals = series.map((p) => p.parts.reduce((sum, part) => sum + part.value, 0));
    const max = Math.max(1, ...totals);
    const y = (v) => pad.top + plotH - (v / max) * plotH;
    const step = plotW / Math.max(1, series.length);
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": `${unit} per minute` });
    for (const fraction of [0, 0.5, 1]) {
      const v = max * fraction;
      svg.append(
        s("line", { class: "grid", x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v) }),
        s("text", { class: "axis", x: pad.left - 6, y: y(v) + 4, "text-anchor": "end" }, fmt(Math.round(v))),
      );
    }
    series.forEach((point, i) => {
      let base = 0;
      const x = pad.left + i * step + 1;
      const w = Math.max(1, step - 2);
      for (const part of point.parts) {
        if (part.value <= 0) continue;
        const top = y(base + part.value);
        svg.append(
          s("rect", { class: `bar ${part.cls}`, x, y: top, width: w, height: Math.max(1, y(base) - top) },
            s("title", {}, `${hhmm(point.start_ms)}–${hhmm(point.start_ms + bucketMs)}: ${fmt(part.value)} ${part.label}`)),
        );
        base += part.value;
      }
      // A label every ten buckets, and on the last (the current minute).
      if (i % 10 === 0 || i === series.length - 1) {
        svg.append(s("text", { class: "axis", x: x + w / 2, y: height - 6, "text-anchor": "middle" }, hhmm(point.start_ms)));
      }
    });
    fill(container, svg);
  }

  /** Horizontal bars: rows of {label, value, cls, text, onclick?}. */
  function drawRows(container, rows, { max } = {}) {
    const width = chartWidth(container, 320);
    const rowH = 24;
    const labelW = Math.min(170, Math.round(width * 0.38));
    const valueW = 92;
    const plotW = Math.max(20, width - labelW - valueW - 8);
    const top = Math.max(1, max ?? Math.max(0, ...rows.map((r) => r.value)));
    const height = rows.length * rowH + 4;
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
    rows.forEach((row, i) => {
      const y = 2 + i * rowH;
      const w = row.value > 0 ? Math.max(2, (row.value / top) * plotW) : 0;
      svg.append(
        s("text", { class: "label", x: labelW - 6, y: y + 16, "text-anchor": "end" }, row.label),
        s("rect", { class: "track", x: labelW, y: y + 4, width: plotW, height: rowH - 8, rx: 3 }),
        s("rect", { class: `bar ${row.cls}`, x: labelW, y: y + 4, width: w, height: rowH - 8, rx: 3, dataset: { key: row.label } },
          s("title", {}, `${row.label}: ${row.text}`)),
        s("text", { class: "value", x: labelW + plotW + 6, y: y + 16 }, row.text),
      );
    });
    fill(container, svg);
  }

  // ---- figures: summary, outcomes, sales per minute, products, customers ---------------------

  function renderSummary() {
    const summary = state.summary;
    if (!summary) return;
    const byStatus = summary.orders_by_status || {};
    const finished = typeof summary.orders === "number"
      ? summary.orders
      : Object.values(byStatus).reduce((a, b) => a + b, 0);
    const success = byStatus.SUCCESS || 0;
    $("kpi-orders").textContent = fmt(finished);
    $("kpi-success").textContent = finished ? `${fmt(success)} (${Math.round((100 * success) / finished)} %)` : fmt(success);
    $("kpi-tokens").textContent = fmt(summary.tokens_sold);
    $("kpi-revenue").textContent = fmt(summary.revenue);
    $("kpi-customers").textContent = fmt(summary.customers);
    const rows = FINAL.map((status) => {
      const value = byStatus[status] || 0;
      const share = finished ? ` · ${Math.round((100 * value) / finished)} %` : "";
      return { label: status, value, cls: statusClass(status), text: `${fmt(value)}${share}` };
    });
    drawRows($("outcomes-chart"), rows);
  }

  function renderSales() {
    const container = $("sales-chart");
    const ts = state.timeseries;
    if (!ts || !Array.isArray(ts.points)) return;
    const metric = $("sales-metric").value;
    const bucketMs = (ts.bucket_s || 60) * 1000;
    const series = ts.points.map((p) => {
      if (metric === "orders") {
        const by = p.orders_by_status || {};
        return {
          start_ms: p.start_ms,
          parts: FINAL.map((status) => ({ value: by[status] || 0, cls: statusClass(status), label: status })),
        };
      }
      const value = metric === "revenue" ? p.revenue || 0 : p.tokens || 0;
      return { start_ms: p.start_ms, parts: [{ value, cls: metric === "revenue" ? "revenue" : "tokens", label: metric === "revenue" ? "credits" : "tokens" }] };
    });
    drawBars(container, series, { unit: metric, bucketMs });
    const tokens = ts.points.reduce((a, p) => a + (p.tokens || 0), 0);
    const revenue = ts.points.reduce((a, p) => a + (p.revenue || 0), 0);
    const orders = ts.points.reduce((a, p) => a + Object.values(p.orders_by_status || {}).reduce((x, y) => x + y, 0), 0);
    note("sales-note", `Last ${Math.round((ts.window_s || 3600) / 60)} min: ${fmt(orders)} orders finished, ${fmt(tokens)} tokens sold, ${fmt(revenue)} credits.`);
  }

  async function refreshSummary() {
    if (state.analyticsLive) return;
    let r = await optional("/api/analytics/summary");
    if (!r.ok && missingRoute(r)) {
      // An older server has the sales figures only (no customers).
      const sales = await optional("/api/analytics/sales");
      if (sales.ok) {
        state.summary = sales.data;
        renderSummary();
        note("outcomes-note", "From /api/analytics/sales (no summary on this server).");
        return;
      }
      r = sales;
    }
    if (!r.ok) {
      note("outcomes-note", unavailable("outcomes", r), missingRoute(r) ? "warn" : "error");
      return;
    }
    state.summary = r.data;
    renderSummary();
    note("outcomes-note", "");
  }

  async function refreshTimeseries() {
    const r = await optional("/api/analytics/timeseries?bucket_s=60&window_s=3600");
    if (!r.ok) {
      note("sales-note", unavailable("sales per minute", r), missingRoute(r) ? "warn" : "error");
      return;
    }
    state.timeseries = r.data;
    renderSales();
  }

  async function refreshProducts() {
    const r = await optional("/api/analytics/sales-by-product");
    const table = $("products-table");
    if (!r.ok) {
      fill(table);
      note("products-note", unavailable("sales by product", r), missingRoute(r) ? "warn" : "error");
      return;
    }
    const rows = Array.isArray(r.data) ? r.data : [];
    const top = Math.max(1, ...rows.map((p) => p.revenue || 0));
    fill(
      table,
      h("thead", {}, h("tr", {}, h("th", {}, "product"), h("th", { class: "num" }, "orders"), h("th", { class: "num" }, "tokens"), h("th", { class: "num" }, "revenue"), h("th", {}, ""))),
      h("tbody", {}, rows.map((p) => {
        const bar = h("span", { class: "minibar" });
        bar.style.width = `${Math.round((100 * (p.revenue || 0)) / top)}%`;
        return h("tr", {}, h("td", {}, p.product), h("td", { class: "num" }, fmt(p.orders)), h("td", { class: "num" }, fmt(p.tokens)), h("td", { class: "num" }, fmt(p.revenue)), h("td", { class: "barcell" }, bar));
      })),
    );
    note("products-note", rows.length ? "" : "Nothing sold yet.");
  }

  async function refreshCustomers() {
    const r = await optional("/api/analytics/top-customers?limit=5");
    const table = $("customers-table");
    if (!r.ok) {
      fill(table);
      note("customers-note", unavailable("top customers", r), missingRoute(r) ? "warn" : "error");
      return;
    }
    const rows = Array.isArray(r.data) ? r.data : [];
    fill(
      table,
      h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "customer"), h("th", { class: "num" }, "orders"), h("th", { class: "num" }, "tokens"), h("th", { class: "num" }, "spent"))),
      h("tbody", {}, rows.map((c, i) => h("tr", {}, h("td", {}, String(i + 1)), h("td", { class: "name", title: c.username }, c.username), h("td", { class: "num" }, fmt(c.orders)), h("td", { class: "num" }, fmt(c.tokens)), h("td", { class: "num" }, fmt(c.spent))))),
    );
    note("customers-note", rows.length ? "" : "No customer yet.");
  }

  async function refreshInventory() {
    const r = await api("/api/inventory");
    if (!r.ok) {
      note("stock-note", unavailable("stock", r), "error");
      return;
    }
    state.inventory = Array.isArray(r.data) ? r.data : [];
    renderInventory();
    fillProducts();
  }

  function renderInventory() {
    const items = state.inventory || [];
    if (!items.length) {
      fill($("stock-chart"));
      note("stock-note", "The inventory has not reported its stock yet.");
      return;
    }
    drawRows(
      $("stock-chart"),
      items.map((item) => ({
        label: item.product,
        value: item.stock,
        cls: item.stock > 0 ? "stock" : "stock-out",
        text: `${fmt(item.stock)} left`,
      })),
    );
    const priced = items.filter((i) => i.price !== undefined);
    note(
      "stock-note",
      priced.length
        ? priced.map((i) => `${i.product}: ${i.price === null ? "buyer names the price" : `${fmt(i.price)} credits each`}`).join(" · ")
        : "",
    );
  }

  function fillProducts() {
    const select = $("p-product");
    const names = (state.inventory || []).map((i) => i.product);
    const current = [...select.options].map((o) => o.value);
    if (!names.length || names.join() === current.join()) return;
    const chosen = select.value;
    fill(select, names.map((name) => h("option", { value: name }, name)));
    if (names.includes(chosen)) select.value = chosen;
    applyProductPrice();
  }

  /** A product with a set price fills the price field with it (the buyer may still change it). */
  function applyProductPrice() {
    const item = (state.inventory || []).find((i) => i.product === $("p-product").value);
    if (item && typeof item.price === "number") $("p-price").value = String(item.price);
  }

  const refreshFigures = coalesced(2_000, async () => {
    await Promise.all([refreshSummary(), refreshTimeseries(), refreshProducts(), refreshCustomers(), refreshInventory()]);
  });

  function startFigures() {
    stream("/api/analytics/stream", {
      events: {
        summary: (summary) => {
          state.summary = summary;
          renderSummary();
          note("outcomes-note", "");
          refreshFigures();
        },
      },
      onOpen: () => {
        state.analyticsLive = true;
        setSource("analytics-source", "figures: live", "live");
      },
      onReconnecting: () => {
        state.analyticsLive = false;
        setSource("analytics-source", "figures: reconnecting…", "warn");
      },
      onRefused: () => {
        state.analyticsLive = false;
        setSource("analytics-source", `figures: polling every ${POLL_MS / 1000} s`, "poll");
        refreshFigures();
      },
    });
    // Without the stream, poll; with it, the per-minute buckets still move with the clock.
    let ticks = 0;
    setInterval(() => {
      ticks += 1;
      if (!state.analyticsLive || (ticks * POLL_MS) % SLOW_POLL_MS === 0) refreshFigures();
    }, POLL_MS);
    refreshFigures();
  }

  // ---- live feed ------------------------------------------------------------------------------

  /**
   * Folds what is known of an order into the feed. An event with a version replaces what an
   * older one said; a list entry (no version) only fills in an order not seen otherwise, or
   * one whose newer state the list shows.
   */
  function upsertOrder(update) {
    const id = update.order_id || update.id;
    if (!id) return null;
    const known = state.feed.get(id);
    const version = typeof update.version === "number" ? update.version : -1;
    const updatedMs = millis(update.updated_at_ms, update.updated_at);
    if (known) {
      if (version >= 0 && known.version >= version) return known;
      if (version < 0 && known.version >= 0 && !(updatedMs > known.updatedMs)) return known;
    }
    const entry = known || { id, steps: new Map(), last: null, version: -1, updatedMs: 0 };
    entry.username = update.username ?? entry.username;
    entry.product = update.product ?? entry.product;
    entry.amount = update.amount ?? entry.amount;
    entry.price = update.price ?? entry.price;
    entry.status = update.status ?? entry.status;
    entry.phase = update.phase ?? entry.phase;
    entry.version = Math.max(entry.version, version);
    if (Number.isFinite(updatedMs)) entry.updatedMs = Math.max(entry.updatedMs, updatedMs);
    for (const step of Array.isArray(update.steps) ? update.steps : []) {
      if (!step || !step.step) continue;
      entry.steps.set(step.step, step.event);
      entry.last = step;
    }
    state.feed.set(id, entry);
    return entry;
  }

  function trimFeed() {
    // Order ids are UUIDv7: they sort by when the order was placed.
    const ids = [...state.feed.keys()].sort().reverse();
    for (const id of ids.slice(FEED_MAX)) {
      if (id !== state.selected) state.feed.delete(id);
    }
  }

  const renderFeed = coalesced(150, () => {
    trimFeed();
    const ids = [...state.feed.keys()].sort().reverse().slice(0, FEED_MAX);
    const list = $("feed");
    fill(list, ids.map((id) => feedRow(state.feed.get(id))));
    $("feed-count").textContent = ids.length ? `${ids.length} newest` : "";
    if (!ids.length) note("feed-note", "No order yet: place one below or with the API.");
    else if (state.feedLive) note("feed-note", "");
  });

  function feedRow(o) {
    const steps = h("span", { class: "steps", "aria-hidden": "true" },
      FORWARD.map((step) => h("i", { class: `dot ev-${o.steps.get(step) || "none"}`, title: `${step}: ${o.steps.get(step) || "not yet"}` })),
      [...o.steps.keys()].filter((step) => COMPENSATIONS.has(step)).map((step) =>
        h("i", { class: `dot comp ev-${o.steps.get(step)}`, title: `${step}: ${o.steps.get(step)}` })),
    );
    const last = o.last ? `${o.last.step} ${o.last.event}` : (o.phase || "");
    const what = [o.product, o.amount ? `×${o.amount}` : ""].filter(Boolean).join(" ");
    return h(
      "li",
      {
        class: `feed-row${o.id === state.selected ? " selected" : ""}`,
        tabindex: 0,
        role: "button",
        dataset: { orderId: o.id, status: o.status || "PROCESSING", streamStatus: o.streamStatus },
        title: o.id,
        onclick: () => openOrder(o.id),
        onkeydown: (e) => { if (e.key === "Enter") openOrder(o.id); },
      },
      badge(o.status),
      h("span", { class: "oid mono" }, shortId(o.id)),
      h("span", { class: "who", title: o.username || "" }, o.username || ""),
      h("span", { class: "what" }, what),
      steps,
      h("span", { class: "last" }, last),
      h("span", { class: "when muted" }, o.updatedMs ? clock(o.updatedMs) : ""),
    );
  }

  function onOrderEvent(event) {
    const entry = upsertOrder(event);
    if (!entry) return;
    // What the stream itself last said (the row may also be refreshed by the timeline's reads).
    if (entry.version === event.version) entry.streamStatus = entry.status;
    renderFeed();
    if (entry.id === state.selected) refreshTimelineSoon();
  }

  let feedPolling = null;

  async function pollFeed() {
    const r = await api(`/api/orders?limit=${Math.min(FEED_MAX, 50)}`);
    if (!r.ok) {
      note("feed-note", unavailable("orders", r), "error");
      return;
    }
    for (const order of r.data.orders || []) {
      const entry = upsertOrder(order);
      if (entry && entry.id === state.selected) refreshTimelineSoon();
    }
    renderFeed();
  }

  function startFeed() {
    // The newest orders first, so that the feed is not empty until something moves.
    guard(pollFeed);
    stream("/api/orders/stream", {
      // A resume from an id the server no longer keeps: read the newest orders again.
      events: { order: onOrderEvent, reset: () => guard(pollFeed) },
      onOpen: () => {
        state.feedLive = true;
        clearInterval(feedPolling);
        feedPolling = null;
        setSource("feed-source", "orders: live", "live");
        note("feed-note", "");
      },
      onReconnecting: () => {
        state.feedLive = false;
        setSource("feed-source", "orders: reconnecting…", "warn");
      },
      onRefused: () => {
        state.feedLive = false;
        setSource("feed-source", `orders: polling every ${FEED_POLL_MS / 1000} s`, "poll");
        note("feed-note", "The order stream (/api/orders/stream) is not available: the feed polls /api/orders.", "warn");
        if (feedPolling === null) feedPolling = setInterval(() => guard(pollFeed), FEED_POLL_MS);
      },
    });
  }

  // ---- one order's timeline ---------------------------------------------------------------------

  function traceUrl(traceId) {
    const template = state.config.trace_ui_url;
    if (!template || !traceId) return null;
    return template.includes("{trace_id}") ? template.split("{trace_id}").join(traceId) : template + traceId;
  }

  /** The timeline's entries with their times in ms, each outcome with how long its attempt took. */
  function analyse(order) {
    const entries = (order.timeline || []).map((e) => ({ ...e, ms: millis(e.at_ms, e.at) }));
    const attempts = [];
    const open = new Map();
    entries.forEach((e, i) => {
      e.delta = i > 0 ? e.ms - entries[i - 1].ms : 0;
      if (e.event === "sent") {
        const previous = open.get(e.step);
        if (previous) attempts.push({ step: e.step, from: previous.ms, to: e.ms, outcome: "retried" });
        open.set(e.step, e);
      } else if (OUTCOMES.has(e.event)) {
        const sent = open.get(e.step);
        if (sent) {
          e.took = e.ms - sent.ms;
          attempts.push({ step: e.step, from: sent.ms, to: e.ms, outcome: e.event });
          open.delete(e.step);
        }
      }
    });
    const end = order.status && order.status !== "PROCESSING" ? entries.at(-1)?.ms : Math.max(serverNow(), entries.at(-1)?.ms || 0);
    for (const sent of open.values()) attempts.push({ step: sent.step, from: sent.ms, to: end, outcome: "running" });
    const steps = [];
    for (const e of entries) if (!steps.includes(e.step)) steps.push(e.step);
    return { entries, attempts, steps };
  }

  function drawGantt(container, { entries, attempts, steps }) {
    if (!entries.length) {
      fill(container);
      return;
    }
    const width = chartWidth(container);
    const rowH = 20;
    const labelW = 140;
    const pad = { right: 10, bottom: 20 };
    const t0 = entries[0].ms;
    const t1 = Math.max(t0 + 1, ...attempts.map((a) => a.to), entries.at(-1).ms);
    const plotW = width - labelW - pad.right;
    const x = (ms) => labelW + ((ms - t0) / (t1 - t0)) * plotW;
    const height = steps.length * rowH + pad.bottom + 4;
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": "Steps over time" });
    steps.forEach((step, i) => {
      const y = 2 + i * rowH;
      const comp = COMPENSATIONS.has(step);
      svg.append(
        s("text", { class: `label${comp ? " comp" : ""}`, x: labelW - 6, y: y + 14, "text-anchor": "end" }, comp ? `↩ ${step}` : step),
        s("line", { class: "grid", x1: labelW, x2: width - pad.right, y1: y + rowH - 1, y2: y + rowH - 1 }),
      );
      for (const a of attempts.filter((at) => at.step === step)) {
        const left = x(a.from);
        svg.append(s("rect", {
          class: `span ev-${a.outcome}${comp ? " comp" : ""}`,
          x: left, y: y + 4, width: Math.max(3, x(a.to) - left), height: rowH - 8, rx: 2,
          dataset: { step, outcome: a.outcome },
        }, s("title", {}, `${step}: ${a.outcome} after ${duration(a.to - a.from)}`)));
      }
    });
    const axisY = steps.length * rowH + 16;
    for (const fraction of [0, 0.25, 0.5, 0.75, 1]) {
      const ms = t0 + fraction * (t1 - t0);
      svg.append(s("text", { class: "axis", x: x(ms), y: axisY, "text-anchor": fraction === 0 ? "start" : fraction === 1 ? "end" : "middle" }, `+${duration(ms - t0)}`));
    }
    fill(container, svg);
  }

  function renderTimeline(order) {
    state.shownOrder = order;
    const analysis = analyse(order);
    const url = traceUrl(order.trace_id);
    const trace = order.trace_id
      ? (url ? h("a", { href: url, target: "_blank", rel: "noopener noreferrer", class: "mono", id: "trace-link" }, order.trace_id) : h("span", { class: "mono" }, order.trace_id))
      : h("span", { class: "muted" }, "none (tracing off)");
    const first = analysis.entries[0];
    const last = analysis.entries.at(-1);
    const total = first && last ? duration(last.ms - first.ms) : "";
    const facts = h("dl", { class: "facts" },
      h("dt", {}, "order"), h("dd", { class: "mono", id: "timeline-order-id" }, order.id),
      h("dt", {}, "status"), h("dd", {}, badge(order.status), " ", h("span", { class: "muted" }, order.phase || "")),
      h("dt", {}, "buyer"), h("dd", {}, order.username),
      h("dt", {}, "bought"), h("dd", {}, `${fmt(order.amount)} × ${order.product || "late_token"} at ${fmt(order.price)} = ${fmt(order.total ?? order.price * order.amount)} credits`),
      h("dt", {}, "placed"), h("dd", {}, order.created_at ? clock(Date.parse(order.created_at)) : "", total ? h("span", { class: "muted" }, ` · saga ${total}`) : ""),
      h("dt", {}, "trace"), h("dd", {}, trace),
    );
    const gantt = h("div", { class: "chart gantt", id: "timeline-gantt" });
    const spans = analysis.entries.some((e) => e.span_id);
    const table = h("table", { class: "table timeline-table", id: "timeline-table" },
      h("thead", {}, h("tr", {},
        h("th", {}, "#"), h("th", {}, "step"), h("th", {}, "event"), h("th", {}, "at"),
        h("th", { class: "num", title: "since the previous entry" }, "+Δ"),
        h("th", { class: "num", title: "from the step's sent to this outcome" }, "took"),
        h("th", {}, "detail"), spans ? h("th", {}, "span") : null)),
      h("tbody", {}, analysis.entries.map((e) => h("tr", {
        class: `${COMPENSATIONS.has(e.step) ? "comp" : ""} ev-row-${e.event}`,
        dataset: { step: e.step, event: e.event },
      },
      h("td", { class: "num" }, String(e.seq ?? "")),
      h("td", { class: "step" }, COMPENSATIONS.has(e.step) ? `↩ ${e.step}` : e.step),
      h("td", {}, h("span", { class: `ev ev-${e.event}` }, e.event)),
      h("td", { class: "mono" }, Number.isFinite(e.ms) ? `${clock(e.ms)}.${String(e.ms % 1000).padStart(3, "0")}` : ""),
      h("td", { class: "num" }, e.delta ? `+${duration(e.delta)}` : ""),
      h("td", { class: "num" }, e.took !== undefined ? duration(e.took) : ""),
      h("td", { class: "detail" }, e.detail || ""),
      spans ? h("td", { class: "mono muted" }, e.span_id || "") : null,
      ))),
    );
    fill($("timeline"), facts, gantt, h("div", { class: "scroll" }, table));
    drawGantt(gantt, analysis);
  }

  async function loadTimeline() {
    const id = state.selected;
    if (!id) return;
    const r = await api(`/api/orders/${encodeURIComponent(id)}`);
    if (id !== state.selected) return;
    if (!r.ok) {
      state.shownOrder = null;
      fill($("timeline"), h("p", { class: "note error", id: "timeline-error" }, r.message));
      return;
    }
    renderTimeline(r.data);
    upsertOrder({ ...r.data, order_id: r.data.id, steps: r.data.timeline });
    renderFeed();
    // Without the stream nothing tells the page that the saga moved: look again shortly.
    if (r.data.status === "PROCESSING") {
      clearTimeout(timelinePoll);
      timelinePoll = setTimeout(refreshTimelineSoon, state.feedLive ? 3_000 : 700);
    }
  }

  let timelinePoll = null;
  const refreshTimelineSoon = coalesced(250, loadTimeline);

  function openOrder(id) {
    const trimmed = String(id).trim();
    if (!trimmed) return;
    state.selected = trimmed;
    $("timeline-id").value = trimmed;
    for (const row of document.querySelectorAll(".feed-row")) row.classList.toggle("selected", row.dataset.orderId === trimmed);
    fill($("timeline"), h("p", { class: "muted" }, "Loading…"));
    refreshTimelineSoon();
  }

  // ---- sagas in flight and stuck ones ------------------------------------------------------------

  /** The value of a Prometheus gauge: the largest over its series (every manager replica reports the same total). */
  function gauge(text, name) {
    if (typeof text !== "string") return null;
    let value = null;
    for (const line of text.split("\n")) {
      if (!line.startsWith(name)) continue;
      const rest = line.slice(name.length);
      if (rest[0] !== " " && rest[0] !== "{") continue;
      const v = Number(line.trim().split(/\s+/).at(-1));
      if (Number.isFinite(v)) value = value === null ? v : Math.max(value, v);
    }
    return value;
  }

  async function refreshInFlight() {
    // The newest sagas, and those that have not moved for STUCK_AFTER_MS whatever their age
    // (the server picks them: with many sagas in flight the stuck ones are the oldest, past
    // the newest page).
    const [metrics, list, idle] = await Promise.all([
      optional("/metrics"),
      api("/api/orders?status=PROCESSING&limit=50"),
      api(`/api/orders?status=PROCESSING&idle_ms=${STUCK_AFTER_MS}&limit=50`),
    ]);
    const inFlight = metrics.ok ? gauge(metrics.data, "marketplace_sagas_in_flight") : null;
    const deadOpen = metrics.ok ? gauge(metrics.data, "marketplace_dead_letters_open") : null;
    $("kpi-inflight").textContent = inFlight === null ? "–" : fmt(inFlight);
    if (deadOpen !== null) $("kpi-dead").textContent = fmt(deadOpen);
    const problems = [];
    if (!metrics.ok) problems.push(unavailable("metrics", metrics));
    else if (inFlight === null) problems.push("The manager's gauge is not in this process's /metrics (it runs elsewhere).");
    const table = $("inflight-table");
    if (!list.ok || !idle.ok) {
      fill(table);
      problems.push((list.ok ? idle : list).message);
      note("inflight-note", problems.join(" "), "error");
      return;
    }
    const now = serverNow();
    const stuckIds = new Set((idle.data.orders || []).map((o) => o.id));
    const byId = new Map();
    for (const o of [...(idle.data.orders || []), ...(list.data.orders || [])]) byId.set(o.id, o);
    const orders = [...byId.values()].map((o) => ({ ...o, idleMs: now - Date.parse(o.updated_at), isStuck: stuckIds.has(o.id) }));
    const stuckCount = `${fmt(stuckIds.size)}${idle.data.next_cursor ? "+" : ""}`;
    $("kpi-stuck").textContent = stuckCount;
    $("kpi-stuck").classList.toggle("alarm", stuckIds.size > 0);
    $("inflight-summary").textContent = `${fmt((list.data.orders || []).length)}${list.data.next_cursor ? "+" : ""} processing · ${stuckCount} stuck (no move for ${STUCK_AFTER_MS / 1000} s)`;
    orders.sort((a, b) => b.idleMs - a.idleMs);
    fill(
      table,
      orders.length ? h("thead", {}, h("tr", {}, h("th", {}, "order"), h("th", {}, "buyer"), h("th", {}, "phase"), h("th", { class: "num" }, "idle"), h("th", {}, ""))) : null,
      h("tbody", {}, orders.slice(0, 12).map((o) => {
        return h("tr", { class: o.isStuck ? "stuck" : "", dataset: { orderId: o.id } },
          h("td", {}, h("button", { type: "button", class: "link mono", onclick: () => openOrder(o.id), title: o.id }, shortId(o.id))),
          h("td", { class: "name" }, o.username),
          h("td", {}, o.phase),
          h("td", { class: "num" }, duration(Math.max(0, o.idleMs))),
          h("td", {}, o.isStuck ? h("span", { class: "badge st-TIMEOUT" }, "stuck") : ""));
      })),
    );
    if (!orders.length) problems.unshift("No saga in flight.");
    note("inflight-note", problems.join(" "), problems.length > 1 || !orders.length ? "muted" : "warn");
  }

  // ---- dead letters ------------------------------------------------------------------------------

  async function refreshDeadLetters() {
    const status = $("dead-status").value;
    const r = await optional(`/api/dead-letters?status=${encodeURIComponent(status)}&limit=20`, { operator: true });
    const table = $("dead-table");
    if (!r.ok) {
      fill(table);
      const operatorRefusal = r.status === 401 || r.status === 403;
      note("dead-note", unavailable("dead letters", r), operatorRefusal ? "error auth" : missingRoute(r) ? "warn" : "error");
      return;
    }
    const items = r.data.items || [];
    if (status === "open") $("kpi-dead").textContent = `${fmt(items.length)}${r.data.next_cursor ? "+" : ""}`;
    fill(
      table,
      items.length ? h("thead", {}, h("tr", {},
        h("th", {}, "last seen"), h("th", {}, "queue"), h("th", {}, "reason"), h("th", {}, "order"),
        h("th", { class: "num" }, "seen"), h("th", { class: "num" }, "replays"), h("th", {}, "status"),
        h("th", {}, "message"), h("th", {}, ""))) : null,
      h("tbody", {}, items.map((d) => h("tr", { dataset: { letterId: d.id } },
        h("td", {}, clock(d.last_seen_ms)),
        h("td", {}, d.original_queue || ""),
        h("td", {}, d.reason || ""),
        h("td", {}, d.order_id ? h("button", { type: "button", class: "link mono", title: d.order_id, onclick: () => openOrder(d.order_id) }, shortId(d.order_id)) : ""),
        h("td", { class: "num" }, fmt(d.times_seen)),
        h("td", { class: "num" }, fmt(d.replays)),
        h("td", {}, d.status),
        h("td", { class: "mono preview", title: d.payload_preview }, d.payload_preview),
        h("td", { class: "actions" },
          h("button", { type: "button", class: "replay", disabled: d.status !== "open", onclick: () => guard(() => deadLetterAction(d.id, "replay")) }, "Replay"),
          h("button", { type: "button", class: "resolve", disabled: d.status !== "open", onclick: () => guard(() => deadLetterAction(d.id, "resolve")) }, "Resolve")),
      ))),
    );
    note("dead-note", items.length ? "" : `No ${status === "all" ? "" : `${status} `}dead letter.`);
  }

  async function deadLetterAction(id, action) {
    const r = action === "replay"
      ? await api(`/api/dead-letters/${encodeURIComponent(id)}/replay`, { method: "POST", operator: true })
      : await api(`/api/dead-letters/${encodeURIComponent(id)}`, { method: "DELETE", operator: true });
    await refreshDeadLetters();
    if (r.ok) note("dead-note", `${action === "replay" ? "Replayed" : "Resolved"} ${shortId(id)} (${r.status}).`, "ok");
    else note("dead-note", r.message, r.status === 401 || r.status === 403 ? "error auth" : "error");
  }

  // ---- operator token ----------------------------------------------------------------------------

  function showTokenState() {
    $("token-state").textContent = operatorToken() ? "token set" : "no token: loopback only";
  }

  function startToken() {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token-input").value.trim();
      try {
        if (value) sessionStorage.setItem(TOKEN_KEY, value);
        else sessionStorage.removeItem(TOKEN_KEY);
      } catch (error) {
        showPageError(error);
      }
      $("token-input").value = "";
      showTokenState();
      guard(refreshDeadLetters);
    });
    $("token-clear").addEventListener("click", () => {
      try {
        sessionStorage.removeItem(TOKEN_KEY);
      } catch (error) {
        showPageError(error);
      }
      showTokenState();
      guard(refreshDeadLetters);
    });
    showTokenState();
  }

  // ---- the purchase form -------------------------------------------------------------------------

  /** A typed number as a JSON number when it is an integer; else as typed, for the server to name. */
  function integerField(value) {
    return /^-?\d+$/.test(value.trim()) ? Number(value.trim()) : value;
  }

  async function purchase(event) {
    event.preventDefault();
    const body = {
      username: $("p-username").value,
      product: $("p-product").value,
      price: integerField($("p-price").value),
      amount: integerField($("p-amount").value),
    };
    const flags = FAULT_FLAGS.filter((flag) => $(`flag-${flag}`).checked);
    for (const flag of flags) body[flag] = true;
    const button = $("p-submit");
    button.disabled = true;
    const result = $("purchase-result");
    fill(result, h("p", { class: "muted" }, "Sending…"));
    try {
      const r = await api("/api/purchase/", { method: "POST", body, operator: flags.length > 0 });
      const json = h("pre", { class: "json" }, typeof r.data === "string" ? r.data : JSON.stringify(r.data, null, 2));
      if (r.ok && r.data && r.data.order_id) {
        const id = r.data.order_id;
        result.dataset.orderId = id;
        result.dataset.status = String(r.status);
        fill(result,
          h("p", { class: "ok" }, `${r.status} accepted: order `,
            h("button", { type: "button", class: "link mono", onclick: () => openOrder(id) }, id)),
          json);
        openOrder(id);
      } else {
        delete result.dataset.orderId;
        result.dataset.status = String(r.status);
        fill(result, h("p", { class: "note error" }, r.message || `${r.status}`), json);
      }
    } finally {
      button.disabled = false;
    }
  }

  function startPurchase() {
    fill($("p-flags"), FAULT_FLAGS.map((flag) =>
      h("label", { class: "flag" }, h("input", { type: "checkbox", id: `flag-${flag}`, name: flag }), flag)));
    $("purchase-form").addEventListener("submit", (event) => guard(() => purchase(event)));
    $("p-product").addEventListener("change", applyProductPrice);
  }

  // ---- start -------------------------------------------------------------------------------------

  async function loadConfig() {
    const r = await api("/dashboard/config.json");
    if (r.ok && r.data && typeof r.data === "object") state.config = r.data;
  }

  function redrawOnResize() {
    let timer = null;
    window.addEventListener("resize", () => {
      clearTimeout(timer);
      timer = setTimeout(() => guard(async () => {
        renderSummary();
        renderSales();
        renderInventory();
        if (state.shownOrder) renderTimeline(state.shownOrder);
      }), 200);
    });
  }

  async function start() {
    startToken();
    startPurchase();
    $("timeline-form").addEventListener("submit", (event) => {
      event.preventDefault();
      openOrder($("timeline-id").value);
    });
    $("sales-metric").addEventListener("change", () => guard(async () => renderSales()));
    $("dead-status").addEventListener("change", () => guard(refreshDeadLetters));
    redrawOnResize();
    await loadConfig();
    startFeed();
    startFigures();
    every(POLL_MS, refreshInFlight);
    every(DEAD_LETTER_POLL_MS, refreshDeadLetters);
  }

  document.addEventListener("DOMContentLoaded", () => guard(start));
})();
