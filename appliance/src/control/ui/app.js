// Moat web UI: plain JavaScript, no framework, no build step. Every page
// is built from DOM nodes (never HTML text), so names from the query log
// cannot inject markup. Routing is by the location hash: #/dashboard etc.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const QTYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT",
    28: "AAAA", 33: "SRV", 35: "NAPTR", 43: "DS", 48: "DNSKEY", 64: "SVCB",
    65: "HTTPS", 255: "ANY",
  };
  const RCODES = { 0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED" };
  const OUTCOMES = ["cached", "forwarded", "stale", "blocked", "rejected", "failed", "local", "shed", "limited"];
  const RECORD_TYPES = ["A", "AAAA", "CNAME", "PTR", "TXT", "MX", "SRV"];

  // What the app knows between pages.
  const app = {
    status: null,
    refresh: null, // interval id of the current page's auto-refresh
    route: 0, // bumped on every navigation: late answers for an old page are dropped
  };

  // ----- DOM helpers -------------------------------------------------------

  // h("div.card#x", {attrs}, children...): an element.
  function h(spec, attrs, ...children) {
    if (attrs instanceof Node || Array.isArray(attrs) || typeof attrs !== "object" || attrs === null) {
      children.unshift(attrs);
      attrs = {};
    }
    const match = /^([a-z0-9]+)((?:[.#][\w-]+)*)$/i.exec(spec);
    const el = document.createElement(match ? match[1] : spec);
    if (match) {
      for (const part of match[2].match(/[.#][\w-]+/g) || []) {
        if (part[0] === ".") el.classList.add(part.slice(1));
        else el.id = part.slice(1);
      }
    }
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") {
        el.addEventListener(key.slice(2), value);
      } else if (key === "text") {
        el.textContent = value;
      } else if (key === "value") {
        el.value = value;
      } else if (key === "checked") {
        el.checked = !!value;
      } else if (key === "test") {
        el.setAttribute("data-test", value);
      } else {
        el.setAttribute(key, value === true ? "" : String(value));
      }
    }
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
    append(el, children);
    return el;
  }

  const $ = (selector) => document.querySelector(selector);

  function view() {
    return $("#view");
  }

  function render(...children) {
    const main = view();
    main.replaceChildren();
    append(main, children);
  }

  // ----- formatting --------------------------------------------------------

  const nf = new Intl.NumberFormat();
  const num = (n) => (n === null || n === undefined ? "–" : nf.format(n));
  const pct = (part, whole) => (whole > 0 ? (100 * part / whole).toFixed(1) + " %" : "–");

  function time(ms) {
    if (!ms) return "–";
    const d = new Date(ms);
    return d.toLocaleString();
  }

  // Time of day for today, date and time otherwise.
  function when(ms) {
    const d = new Date(ms);
    return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function ago(ms) {
    if (!ms) return "never";
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  function duration(secs) {
    if (secs === null || secs === undefined) return "–";
    const d = Math.floor(secs / 86400), hrs = Math.floor(secs % 86400 / 3600),
      m = Math.floor(secs % 3600 / 60), s = Math.floor(secs % 60);
    if (d) return d + "d " + hrs + "h";
    if (hrs) return hrs + "h " + m + "m";
    if (m) return m + "m " + s + "s";
    return s + "s";
  }

  function micros(us) {
    if (us === null || us === undefined || !isFinite(us)) return "–";
    if (us >= 1000000) return (us / 1000000).toFixed(2) + " s";
    if (us >= 1000) return (us / 1000).toFixed(1) + " ms";
    return Math.round(us) + " µs";
  }

  // ----- messages ----------------------------------------------------------

  function showError(message) {
    const box = $("#error");
    box.replaceChildren(h("span", { text: message }),
      h("button.quiet", { type: "button", "aria-label": "Dismiss", text: "×", onclick: clearError }));
    box.hidden = false;
  }

  function clearError() {
    const box = $("#error");
    box.hidden = true;
    box.replaceChildren();
  }

  let noticeTimer = null;
  function notice(message) {
    const box = $("#notice");
    box.textContent = message;
    box.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { box.hidden = true; }, 4000);
  }

  // ----- the API -----------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, response) {
      super(message);
      this.status = status;
      this.response = response;
    }
  }

  // Calls the API; resolves to the parsed JSON (or null for 204), rejects
  // with an ApiError carrying the server's {"error": ...} message.
  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, "cannot reach the appliance: " + err.message);
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = null; }
    }
    if (!response.ok) {
      const message = data && typeof data.error === "string" ? data.error
        : response.status + " " + response.statusText + (text && !data ? ": " + text.slice(0, 200) : "");
      if (response.status === 401 && !path.startsWith("/api/v1/auth")) {
        go("login");
      }
      throw new ApiError(response.status, message, response);
    }
    return data;
  }

  // Runs an action, showing any error; returns its result or undefined.
  async function attempt(action) {
    try {
      return await action();
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) showError(err.message || String(err));
      return undefined;
    }
  }

  // ----- routing -----------------------------------------------------------

  const pages = { login, dashboard, querylog, policy, tuning, fleet };

  function go(page) {
    if (location.hash !== "#/" + page) location.hash = "#/" + page;
    else route();
  }

  async function route() {
    const token = ++app.route;
    clearInterval(app.refresh);
    app.refresh = null;
    clearError();
    const name = (location.hash.replace(/^#\/?/, "").split("?")[0]) || "dashboard";
    const page = pages[name] ? name : "dashboard";
    document.body.dataset.page = page;
    for (const link of document.querySelectorAll("#nav a")) {
      link.classList.toggle("active", link.dataset.page === page);
    }
    if (page === "login") {
      $("#top").hidden = true;
      await login(token);
      return;
    }
    if (!app.status) {
      // Ask first, so a fresh page never provokes a 401 (a console error).
      let auth;
      try {
        auth = await api("GET", "/api/v1/auth");
      } catch (err) {
        $("#top").hidden = true;
        showError(err.message);
        return;
      }
      if (!current(token)) return;
      if (!auth.authenticated) {
        go("login");
        return;
      }
    }
    if (!(await loadStatus())) return;
    if (token !== app.route) return;
    $("#top").hidden = false;
    render(h("p.muted", { text: "Loading…" }));
    await pages[page](token);
  }

  const current = (token) => token === app.route;

  // Loads /status for the header; false (and to the login page) when not
  // logged in.
  async function loadStatus() {
    try {
      app.status = await api("GET", "/api/v1/status");
    } catch (err) {
      if (err.status === 401) {
        go("login");
      } else {
        $("#top").hidden = false;
        showError(err.message);
      }
      return false;
    }
    header();
    return true;
  }

  function header() {
    const s = app.status;
    $("#instance-name").textContent = s.name;
    const role = $("#role-badge");
    role.textContent = s.role;
    role.className = "badge role-" + s.role;
    const safe = $("#safe-mode-badge");
    safe.hidden = !s.safe_mode;
    safe.title = s.safe_mode ? "Started in safe mode: saved settings ignored, serving the last good bundle (" + s.safe_mode + ")" : "";
    const pause = s.pause || { state: "blocking" };
    const state = $("#pause-state");
    state.className = "badge pause-" + pause.state;
    if (pause.state === "blocking") state.textContent = "blocking";
    else if (pause.state === "paused_until") state.textContent = "paused until " + clock(pause.unix_secs * 1000);
    else state.textContent = "paused";
    $("#pause-button").hidden = pause.state !== "blocking";
    $("#pause-duration").hidden = pause.state !== "blocking";
    $("#resume-button").hidden = pause.state === "blocking";
    $("#nav a[data-page=fleet]").textContent = s.role === "replica" ? "Primary" : "Fleet";
  }

  // ----- login -------------------------------------------------------------

  async function login(token) {
    let auth;
    try {
      auth = await api("GET", "/api/v1/auth");
    } catch (err) {
      render(h("section.card.narrow", {}, h("h1", { text: "Moat" })));
      showError(err.message);
      return;
    }
    if (!current(token)) return;
    if (auth.authenticated) {
      go("dashboard");
      return;
    }
    const first = !auth.password_set;
    const code = first ? h("input#setup-code", {
      type: "text", name: "code", required: true, autocomplete: "one-time-code", test: "setup-code",
      placeholder: "XXXX-XXXX", spellcheck: "false", autocapitalize: "characters",
    }) : null;
    const password = h("input#login-password", {
      type: "password", name: "password", required: true, autocomplete: first ? "new-password" : "current-password",
      test: "password", minlength: first ? 8 : undefined,
    });
    const confirm = first ? h("input#login-confirm", {
      type: "password", name: "confirm", required: true, autocomplete: "new-password", test: "confirm", minlength: 8,
    }) : null;
    const submit = h("button#login-submit.primary", { type: "submit", test: "login-submit", text: first ? "Set password" : "Log in" });
    const form = h("form#login-form.card.narrow", { test: first ? "setup-form" : "login-form", onsubmit: onSubmit },
      h("h1", { text: first ? "Set the admin password" : "Log in to Moat" }),
      first ? h("p.muted", { text: "This appliance has no admin password yet. Type the setup code it shows on its console " +
        "(and in moat-setup-code.txt on its boot partition, or its log), then choose a password (at least 8 characters)." }) : null,
      code ? h("label", {}, "Setup code", code) : null,
      // For password managers: the one account there is.
      h("input", { type: "text", name: "username", autocomplete: "username", value: "admin", hidden: true, "aria-hidden": "true" }),
      h("label", {}, "Password", password),
      confirm ? h("label", {}, "Repeat password", confirm) : null,
      submit);
    render(form);
    (code || password).focus();

    async function onSubmit(event) {
      event.preventDefault();
      clearError();
      if (first && password.value !== confirm.value) {
        showError("The two passwords differ.");
        return;
      }
      submit.disabled = true;
      try {
        if (first) await api("POST", "/api/v1/auth/setup", { code: code.value, password: password.value });
        else await api("POST", "/api/v1/auth/login", { password: password.value });
        go("dashboard");
      } catch (err) {
        let message = err.message;
        if (err.status === 429) {
          const wait = err.response && err.response.headers.get("Retry-After");
          if (wait) message += " (try again in " + wait + " s)";
        }
        showError(message);
        password.select();
      } finally {
        submit.disabled = false;
      }
    }
  }

  async function logout() {
    await attempt(() => api("POST", "/api/v1/auth/logout"));
    app.status = null;
    go("login");
  }

  // ----- pause / resume ----------------------------------------------------

  async function pauseBlocking() {
    const value = $("#pause-duration").value;
    const state = await attempt(() => api("POST", "/api/v1/pause", { duration: value || null }));
    if (state) {
      app.status.pause = state.pause || state;
      header();
      notice(value ? "Blocking paused for " + value : "Blocking paused until resumed");
    }
  }

  async function resumeBlocking() {
    const state = await attempt(() => api("POST", "/api/v1/resume"));
    if (state) {
      app.status.pause = state.pause || state;
      header();
      notice("Blocking resumed");
    }
  }

  // ----- dashboard ---------------------------------------------------------

  async function dashboard(token) {
    async function load() {
      const stats = await attempt(() => api("GET", "/api/v1/stats?top=10"));
      if (!stats || !current(token)) return;
      if (app.refresh) await attempt(async () => { app.status = await api("GET", "/api/v1/status"); header(); });
      if (!current(token)) return;
      render(dashboardView(stats, app.status));
    }
    await load();
    if (current(token)) app.refresh = setInterval(load, 10000);
  }

  function dashboardView(stats, status) {
    const answered = stats.queries || 0;
    const lookups = (stats.cache_hits || 0) + (stats.cache_misses || 0);
    const latency = latencySummary(stats.upstream_latency);
    return [
      h("div.cards", { test: "totals" },
        tile("Queries", num(answered), "stat-queries"),
        tile("Blocked", num(stats.blocked), "stat-blocked"),
        tile("Blocked %", pct(stats.blocked || 0, answered), "stat-blocked-pct"),
        tile("Cache hit rate", pct(stats.cache_hits || 0, lookups), "stat-cache-hit"),
        tile("Upstream p50 / p95", latency.count ? micros(latency.p50) + " / " + micros(latency.p95) : "–", "stat-latency",
          latency.count ? "mean " + micros(latency.mean) + " over " + num(latency.count) + " answers" : "no upstream answers yet"),
        tile("Forwarded · local · failed", num(stats.forwarded) + " · " + num(stats.local) + " · " + num(stats.failed), "stat-outcomes",
          num(stats.upstream_errors) + " upstream errors, " + num(stats.stale_served) + " stale"),
      ),
      h("section.card", { test: "chart-card" },
        h("h2", { text: "Queries and blocked % per minute" }),
        chart(stats.series || [])),
      h("div.grid3",
        topTable("Top queried", "Name", stats.top_names, "top-names"),
        topTable("Top blocked", "Name", stats.top_blocked, "top-blocked"),
        topTable("Top clients", "Client", stats.top_clients, "top-clients")),
      statusCard(status),
    ];
  }

  function tile(label, value, test, detail) {
    return h("div.tile", { test },
      h("div.label", { text: label }),
      h("div.value", { text: value, test: test + "-value" }),
      detail ? h("div.detail", { text: detail }) : null);
  }

  // p50/p95 by linear interpolation inside the histogram bucket, and mean.
  function latencySummary(histogram) {
    if (!histogram || !histogram.counts) return { count: 0 };
    const counts = histogram.counts, bounds = histogram.bounds_us || [];
    const count = counts.reduce((a, b) => a + b, 0);
    if (!count) return { count: 0 };
    const quantile = (q) => {
      const target = q * count;
      let seen = 0;
      for (let i = 0; i < counts.length; i++) {
        if (seen + counts[i] >= target && counts[i] > 0) {
          const low = i === 0 ? 0 : bounds[i - 1];
          const high = i < bounds.length ? bounds[i] : low * 2;
          return low + (high - low) * ((target - seen) / counts[i]);
        }
        seen += counts[i];
      }
      return bounds[bounds.length - 1];
    };
    return { count, p50: quantile(0.5), p95: quantile(0.95), mean: histogram.sum_us / count };
  }

  // Bars: queries per minute; line: blocked % (right axis, 0–100).
  function chart(series) {
    const W = 720, H = 220, L = 44, R = 40, T = 12, B = 26;
    if (!series.length) {
      return h("p.muted", { test: "chart-empty", text: "No queries in the last 24 hours yet." });
    }
    const max = Math.max(1, ...series.map((p) => p.queries));
    const top = niceCeil(max);
    // At least half an hour wide, so a young appliance's few minutes are
    // narrow bars on the right rather than one wide block.
    const last = series[series.length - 1].unix_secs;
    const span = Math.max(30 * 60, last - series[0].unix_secs + 60);
    const first = last + 60 - span;
    const x = (t) => L + (t - first) / span * (W - L - R);
    const barW = Math.max(1, (W - L - R) * 60 / span - 1);
    const y = (v) => T + (H - T - B) * (1 - v / top);
    const yPct = (p) => T + (H - T - B) * (1 - p / 100);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "data-test": "chart",
      "aria-label": `Queries per minute (up to ${max}) and blocked percentage over ${series.length} minutes` });
    for (let i = 0; i <= 4; i++) {
      const v = top * i / 4, yy = y(v);
      root.append(svg("line", { x1: L, x2: W - R, y1: yy, y2: yy, class: "grid" }),
        svg("text", { x: L - 6, y: yy + 4, class: "axis", "text-anchor": "end" }, short(v)),
        svg("text", { x: W - R + 6, y: yPct(25 * i) + 4, class: "axis pct" }, 25 * i + "%"));
    }
    const bars = svg("g", { class: "bars" });
    const points = [];
    for (const p of series) {
      const bx = x(p.unix_secs);
      const bar = svg("rect", { x: bx, y: y(p.queries), width: barW, height: Math.max(0, H - B - y(p.queries)), "data-queries": p.queries });
      bar.append(svg("title", {}, `${clock(p.unix_secs * 1000)}: ${p.queries} queries, ${p.blocked} blocked`));
      bars.append(bar);
      if (p.queries > 0) points.push(`${(bx + barW / 2).toFixed(1)},${yPct(100 * p.blocked / p.queries).toFixed(1)}`);
    }
    root.append(bars);
    if (points.length) {
      root.append(points.length > 1
        ? svg("polyline", { points: points.join(" "), class: "blocked-line" })
        : svg("circle", { cx: points[0].split(",")[0], cy: points[0].split(",")[1], r: 3, class: "blocked-dot" }));
    }
    const ticks = Math.min(6, series.length);
    for (let i = 0; i < ticks; i++) {
      const t = first + Math.round((span - 60) * i / Math.max(1, ticks - 1) / 60) * 60;
      root.append(svg("text", { x: x(t), y: H - 8, class: "axis", "text-anchor": i === 0 ? "start" : i === ticks - 1 ? "end" : "middle" }, clock(t * 1000)));
    }
    return h("div.chart-wrap", {}, root,
      h("div.legend", {}, h("span.key.key-queries"), "queries / min", h("span.key.key-blocked"), "blocked %"));
  }

  function niceCeil(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function short(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(v % 1e6 ? 1 : 0) + "M";
    if (v >= 1e3) return (v / 1e3).toFixed(v % 1e3 ? 1 : 0) + "k";
    return String(Math.round(v * 10) / 10);
  }

  function topTable(title, column, rows, test) {
    rows = rows || [];
    return h("section.card", { test },
      h("h2", { text: title }),
      rows.length ? table([column, "Count"], rows.map(([name, count]) => [h("span.name", { text: name }), num(count)]), "top")
        : h("p.muted", { text: "Nothing yet." }));
  }

  function statusCard(s) {
    if (!s) return null;
    const rows = [
      ["Version", s.version],
      ["Uptime", duration(s.uptime_secs)],
      ["Role", s.role + (s.primary ? " of " + s.primary.name + " (" + (s.primary.address || "") + ")" : "")],
      ["Policy bundle", s.bundle_version === null || s.bundle_version === undefined ? "none" : "v" + s.bundle_version +
        (s.bundle_expires_unix ? ", expires " + time(s.bundle_expires_unix * 1000) : "")],
      ["Cache entries", num(s.cache_entries)],
      ["Policy faults", num(s.policy_faults)],
      ["Query log lost", num(s.query_log_lost)],
    ];
    if (s.safe_mode) rows.unshift(["Safe mode", "saved settings ignored, serving the last good bundle: " + s.safe_mode]);
    if (s.query_log_disk_limit) rows.push(["Query log stopped", s.query_log_disk_limit]);
    for (const u of s.upstreams || []) {
      rows.push(["Upstream " + (u.upstream || u.address || u.url || u.name || ""), upstreamHealth(u)]);
    }
    for (const p of s.plugins || []) rows.push(["Plugin " + p.name, pluginSummary(p)]);
    return h("section.card", { test: "status" }, h("h2", { text: "This appliance" }),
      h("dl.facts", {}, rows.map(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })])));
  }

  // A configured plugin: calls, time per decision, verdicts that said something, faults.
  function pluginSummary(p) {
    const v = p.verdicts || {};
    const said = ["allow", "block", "answer", "refuse"].filter((k) => v[k]).map((k) => k + " " + num(v[k]));
    return [num(p.calls) + " calls", p.calls ? Math.round(p.decision_ns / p.calls) + " ns per decision" : null,
      said.length ? said.join(", ") : "no verdicts yet", num(p.faults) + " faults (" + p.fail_mode + ")",
      p.switched_off ? "SWITCHED OFF" : null].filter(Boolean).join(" · ");
  }

  function upstreamHealth(u) {
    const parts = [];
    for (const [key, value] of Object.entries(u)) {
      if (["upstream", "address", "url", "name"].includes(key) || value === null || typeof value === "object") continue;
      parts.push(key.replace(/_/g, " ") + ": " + value);
    }
    return parts.join(", ") || "–";
  }

  // ----- tables ------------------------------------------------------------

  function table(headings, rows, cls, test) {
    return h("div.table-wrap", {},
      h("table" + (cls ? "." + cls : ""), { test },
        h("thead", {}, h("tr", {}, headings.map((t) => h("th", { text: t })))),
        h("tbody", {}, rows.map((cells) => cells instanceof Node ? cells : h("tr", {}, cells.map((c) => h("td", {}, c)))))));
  }

  // ----- query log ---------------------------------------------------------

  async function querylog(token) {
    const params = new URLSearchParams(location.hash.split("?")[1] || "");
    const filters = {
      name: params.get("name") || "", client: params.get("client") || "",
      qtype: params.get("qtype") || "", verdict: params.get("verdict") || "",
    };
    const offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
    const limit = 50;
    const query = new URLSearchParams({ limit: String(limit), offset: String(offset) });
    for (const [k, v] of Object.entries(filters)) if (v) query.set(k, v);
    const [log, pol] = await Promise.all([
      attempt(() => api("GET", "/api/v1/querylog?" + query)),
      api("GET", "/api/v1/policy").catch(() => null),
    ]);
    if (!current(token)) return;
    const editable = !!(pol && pol.editable);

    const input = (id, key, placeholder) => h("input#" + id, { name: key, value: filters[key], placeholder, test: id, type: "search" });
    const verdict = h("select#ql-verdict", { name: "verdict", test: "ql-verdict" },
      h("option", { value: "", text: "any verdict" }),
      OUTCOMES.map((o) => h("option", { value: o, text: o, selected: filters.verdict === o })));
    const qtype = h("select#ql-qtype", { name: "qtype", test: "ql-qtype" },
      h("option", { value: "", text: "any type" }),
      ["A", "AAAA", "CNAME", "MX", "TXT", "PTR", "SRV", "NS", "SOA", "HTTPS", "SVCB", "ANY"].map((t) =>
        h("option", { value: t, text: t, selected: filters.qtype === t })));
    const form = h("form#ql-filters.filters.card", { test: "ql-filters", onsubmit: (event) => {
      event.preventDefault();
      const next = new URLSearchParams();
      for (const el of form.querySelectorAll("input, select")) if (el.value) next.set(el.name, el.value);
      location.hash = "#/querylog" + (next.toString() ? "?" + next : "");
    } },
      input("ql-name", "name", "name contains"),
      input("ql-client", "client", "client IP"),
      qtype, verdict,
      h("button#ql-apply", { type: "submit", test: "ql-apply", text: "Filter" }),
      h("a.button.quiet", { href: "#/querylog", text: "Clear" }));

    const entries = (log && (Array.isArray(log) ? log : log.entries)) || [];
    const more = !!(log && log.more);
    const page = (to) => {
      const next = new URLSearchParams();
      for (const [k, v] of Object.entries(filters)) if (v) next.set(k, v);
      if (to > 0) next.set("offset", String(to));
      return "#/querylog" + (next.toString() ? "?" + next : "");
    };
    const rows = entries.map((e) => h("tr", { "data-name": e.name },
      h("td.nowrap", { text: when(e.unix_ms), title: time(e.unix_ms) }),
      h("td", { text: e.client }),
      h("td.name", { text: e.name }),
      h("td", { text: QTYPES[e.qtype] || "TYPE" + e.qtype }),
      h("td", {}, h("span.badge.outcome-" + e.outcome, { text: e.outcome })),
      h("td", { text: RCODES[e.rcode] || String(e.rcode) }),
      h("td.num", { text: micros(e.elapsed_us) }),
      editable ? h("td.nowrap", {},
        e.outcome === "blocked"
          ? h("button.small", { type: "button", test: "allow-this", text: "Allow", onclick: () => listName("allow", e.name) })
          : h("button.small.danger", { type: "button", test: "block-this", text: "Block", onclick: () => listName("deny", e.name) }))
        : null));
    render(
      h("h1", { text: "Query log" }),
      form,
      h("section.card", {},
        entries.length ? table(["Time", "Client", "Name", "Type", "Verdict", "Rcode", "Took"].concat(editable ? [""] : []), rows, "log", "ql-table")
          : h("p.muted", { test: "ql-empty", text: "No queries match." }),
        h("div.pager", {},
          h("a.button" + (offset > 0 ? "" : ".disabled"), { href: offset > 0 ? page(Math.max(0, offset - limit)) : undefined, test: "ql-prev", text: "← Newer" }),
          h("span.muted", { test: "ql-range", text: entries.length ? `${offset + 1}–${offset + entries.length}` : "" }),
          h("a.button" + (more ? "" : ".disabled"), { href: more ? page(offset + limit) : undefined, test: "ql-next", text: "Older →" }))));
  }

  // Adds `name` to the policy's allow or deny list (and takes it off the
  // other one), read-modify-write of the whole policy.
  async function listName(list, name) {
    const other = list === "allow" ? "deny" : "allow";
    const done = await attempt(async () => {
      const current = await api("GET", "/api/v1/policy");
      const p = current.policy;
      p[list] = p[list] || [];
      if (!p[list].includes(name)) p[list].push(name);
      p[other] = (p[other] || []).filter((n) => n !== name);
      await api("PUT", "/api/v1/policy", p);
      return true;
    });
    if (done) notice((list === "deny" ? "Blocking " : "Allowing ") + name);
  }

  // ----- policy ------------------------------------------------------------

  async function policy(token) {
    const data = await attempt(() => api("GET", "/api/v1/policy"));
    if (!current(token) || !data) return;
    const p = data.policy;
    const editable = !!data.editable;
    const ro = !editable;
    const sources = new Map((data.sources || []).map((s) => [s.source, s]));

    const lines = (id, values, placeholder) => h("textarea#" + id, {
      rows: Math.min(12, Math.max(3, (values || []).length + 1)), readonly: ro, test: id, placeholder, spellcheck: "false",
      value: (values || []).join("\n"),
    });
    const upstreams = lines("policy-upstreams", p.upstreams, "udp://9.9.9.9:53");
    const allow = lines("policy-allow", p.allow, "name.example or *.example");
    const deny = lines("policy-deny", p.deny, "ads.example or *.tracker.example");

    const sel = (id, options, value) => h("select#" + id, { disabled: ro, test: id },
      [...new Set(options.concat(typeof value === "string" ? [value] : []))].map((o) => h("option", { value: o, text: o, selected: o === value })));
    const strategy = sel("policy-strategy", ["parallel", "round_robin", "fastest"], p.strategy);
    const failMode = sel("policy-fail-mode", ["open", "closed"], p.fail_mode);
    const blockedResponse = h("input#policy-blocked-response", {
      readonly: ro, test: "policy-blocked-response",
      value: Array.isArray(p.blocked_response) ? p.blocked_response.join(", ") : (p.blocked_response || ""),
    });
    const blockedTtl = h("input#policy-blocked-ttl", { readonly: ro, test: "policy-blocked-ttl", value: p.blocked_ttl === undefined ? "" : p.blocked_ttl });

    // When a source was last fetched (URLs) or read and compiled.
    const updated = (info) => {
      const at = info.downloaded_unix || info.updated_unix || info.compiled_unix;
      return at ? ago(at * 1000) : "–";
    };
    // What a source's lines gave: rules taken, and lines left out by reason.
    const linesSummary = (info) => {
      const l = info.lines;
      if (!l) return { text: "–", title: "" };
      const parts = [l.format];
      if (l.allowed) parts.push(num(l.allowed) + " exceptions");
      if (l.rejected) parts.push(num(l.rejected) + " rejected");
      if (l.unsupported) parts.push(num(l.unsupported) + " unsupported");
      const title = (l.notes || []).map((n) =>
        n.kind + ": " + n.reason + " × " + n.count + " (first at line " + n.line + ": " + n.example + ")").join("\n");
      return { text: parts.join(", "), title };
    };
    // Blocklist sources, one row each.
    const listBody = h("tbody");
    const addList = (entry) => {
      const info = sources.get(entry.source) || {};
      const row = h("tr.blocklist", {},
        h("td", {}, h("input.source", { value: entry.source || "", readonly: ro, "aria-label": "Source", placeholder: "path or URL" })),
        h("td", {}, h("input.refresh.short", { value: entry.refresh || "", readonly: ro, "aria-label": "Refresh", placeholder: "1day" })),
        h("td.num", { text: info.domains === null || info.domains === undefined ? "–" : num(info.domains) }),
        h("td.lines", Object.assign({ test: "blocklist-lines" }, linesSummary(info))),
        h("td.nowrap", { text: updated(info) }),
        h("td", { class: info.error ? "bad" : "", text: info.error || "ok" }),
        editable ? h("td", {}, h("button.small.quiet", { type: "button", text: "Remove", onclick: () => row.remove() })) : null);
      row._extra = entry;
      listBody.append(row);
    };
    (p.blocklists || []).forEach(addList);

    // Local records.
    const recordBody = h("tbody");
    const addRecord = (r) => {
      const type = h("select.rtype", { disabled: ro, "aria-label": "Type" },
        [...new Set(RECORD_TYPES.concat([r.type || "A"]))].map((t) => h("option", { value: t, text: t, selected: t === (r.type || "A") })));
      const row = h("tr.record", {},
        h("td", {}, h("input.rname", { value: r.name || "", readonly: ro, "aria-label": "Name", placeholder: "nas.lan" })),
        h("td", {}, type),
        h("td", {}, h("input.rvalue", { value: r.value === undefined ? "" : String(r.value), readonly: ro, "aria-label": "Value", placeholder: "192.168.1.10" })),
        h("td", {}, h("input.rttl.short", { value: r.ttl === undefined || r.ttl === null ? "" : String(r.ttl), readonly: ro, "aria-label": "TTL", placeholder: "300" })),
        editable ? h("td", {}, h("button.small.quiet", { type: "button", text: "Remove", onclick: () => row.remove() })) : null);
      row._extra = r;
      recordBody.append(row);
    };
    (p.local_records || []).forEach(addRecord);

    // A number where the API gave a number, text otherwise ("1m").
    const typed = (was, text) => (typeof was === "number" && /^\d+$/.test(text) ? Number(text) : text);
    const splitLines = (el) => el.value.split(/[\n,]/).map((s) => s.trim()).filter(Boolean);
    async function save(event) {
      event.preventDefault();
      clearError();
      const next = Object.assign({}, p);
      next.upstreams = splitLines(upstreams);
      next.allow = splitLines(allow);
      next.deny = splitLines(deny);
      next.strategy = strategy.value;
      next.fail_mode = failMode.value;
      const br = blockedResponse.value.split(",").map((s) => s.trim()).filter(Boolean);
      next.blocked_response = br.length === 1 && /^[a-z]+$/.test(br[0]) ? br[0] : br;
      next.blocked_ttl = typed(p.blocked_ttl, blockedTtl.value.trim());
      next.blocklists = [...listBody.rows].map((row) => {
        const entry = Object.assign({}, row._extra, { source: row.querySelector(".source").value.trim() });
        const refresh = row.querySelector(".refresh").value.trim();
        if (refresh) entry.refresh = refresh; else delete entry.refresh;
        return entry;
      }).filter((e) => e.source);
      next.local_records = [...recordBody.rows].map((row) => {
        const r = Object.assign({}, row._extra, {
          name: row.querySelector(".rname").value.trim(),
          type: row.querySelector(".rtype").value,
          value: row.querySelector(".rvalue").value.trim(),
        });
        const ttl = row.querySelector(".rttl").value.trim();
        if (ttl) r.ttl = typed(row._extra.ttl === undefined ? 0 : row._extra.ttl, ttl); else delete r.ttl;
        return r;
      }).filter((r) => r.name);
      const button = $("#policy-save");
      button.disabled = true;
      const result = await attempt(() => api("PUT", "/api/v1/policy", next));
      button.disabled = false;
      if (result) {
        notice("Policy saved" + (result.config_generation !== undefined ? " (generation " + result.config_generation + ")" : ""));
        if (current(app.route)) policy(app.route);
      }
    }

    const synced = data.synced_from;
    render(
      h("div.title-row", {},
        h("h1", { text: "Policy" }),
        synced ? h("span#synced-badge.badge.synced", { test: "synced-badge",
          text: "synced from " + synced.name + (synced.address ? " (" + synced.address + ")" : "") }) : null,
        ro && !synced ? h("span.badge", { test: "readonly-badge", text: "read-only" }) : null),
      ro ? h("p.muted", { test: "readonly-note", text: synced
        ? "This appliance is a replica: its policy comes signed from " + synced.name + ". Change it there."
        : "This policy cannot be changed here." }) : null,
      h("form#policy-form", { test: "policy-form", class: ro ? "readonly" : "", onsubmit: save },
        h("section.card", { test: "blocklists" },
          h("h2", { text: "Blocklist sources" }),
          h("div.table-wrap", {}, h("table", { test: "blocklist-table" },
            h("thead", {}, h("tr", {}, ["Source", "Refresh", "Domains", "Lines", "Updated", "Status"].concat(editable ? [""] : []).map((t) => h("th", { text: t })))),
            listBody)),
          editable ? h("button.small", { type: "button", test: "add-blocklist", text: "Add source", onclick: () => addList({ source: "", refresh: "1day" }) }) : null),
        h("div.grid2",
          h("section.card", {}, h("h2", {}, h("label", { for: "policy-deny", text: "Deny (always blocked)" })), deny),
          h("section.card", {}, h("h2", {}, h("label", { for: "policy-allow", text: "Allow (never blocked by lists)" })), allow)),
        h("section.card", { test: "local-records" },
          h("h2", { text: "Local records" }),
          h("div.table-wrap", {}, h("table", { test: "records-table" },
            h("thead", {}, h("tr", {}, ["Name", "Type", "Value", "TTL"].concat(editable ? [""] : []).map((t) => h("th", { text: t })))),
            recordBody)),
          editable ? h("button.small", { type: "button", test: "add-record", text: "Add record", onclick: () => addRecord({ type: "A" }) }) : null),
        h("section.card", {},
          h("h2", {}, h("label", { for: "policy-upstreams", text: "Upstreams" })),
          upstreams,
          h("div.fields",
            h("label", {}, "Strategy", strategy),
            h("label", {}, "Blocked response", blockedResponse),
            h("label", {}, "Blocked TTL", blockedTtl),
            h("label", {}, "If a policy plugin faults", failMode))),
        editable ? h("div.actions", {}, h("button#policy-save.primary", { type: "submit", test: "save", text: "Save policy" })) : null));
  }

  // ----- tuning ------------------------------------------------------------

  async function tuning(token) {
    const data = await attempt(() => api("GET", "/api/v1/tuning"));
    if (!current(token) || !data) return;
    const t = data.tuning || data;
    const inputs = [];
    const sections = Object.entries(t).map(([section, values]) => {
      if (!values || typeof values !== "object" || Array.isArray(values)) {
        return null;
      }
      return h("section.card", { test: "tuning-" + section },
        h("h2", { text: section.replace(/_/g, " ") }),
        h("div.fields", {}, Object.entries(values).map(([key, value]) => {
          const id = "tuning-" + section + "-" + key;
          let el;
          if (typeof value === "boolean") el = h("input#" + id, { type: "checkbox", checked: value, test: id });
          else if (typeof value === "number") el = h("input#" + id, { type: "number", value: String(value), test: id, step: "any" });
          else if (typeof value === "string") el = h("input#" + id, { value, test: id });
          else el = h("textarea#" + id, { value: JSON.stringify(value), test: id, rows: 2, spellcheck: "false" });
          inputs.push({ section, key, value, el });
          return h("label" + (typeof value === "boolean" ? ".check" : ""), {}, key.replace(/_/g, " "), el);
        })));
    });
    async function save(event) {
      event.preventDefault();
      clearError();
      const next = JSON.parse(JSON.stringify(t));
      try {
        for (const { section, key, value, el } of inputs) {
          if (typeof value === "boolean") next[section][key] = el.checked;
          else if (typeof value === "number") next[section][key] = el.value === "" ? value : Number(el.value);
          else if (typeof value === "string") next[section][key] = el.value.trim();
          else next[section][key] = JSON.parse(el.value);
        }
      } catch (err) {
        showError("Invalid value: " + err.message);
        return;
      }
      const result = await attempt(() => api("PUT", "/api/v1/tuning", next));
      if (result) {
        notice("Tuning saved" + (result.config_generation !== undefined ? " (generation " + result.config_generation + ")" : ""));
        if (current(app.route)) tuning(app.route);
      }
    }
    render(h("h1", { text: "Tuning" }),
      h("p.muted", { text: "Cache, refresh and query-log settings of this appliance only; they are never synced." }),
      h("form#tuning-form", { test: "tuning-form", onsubmit: save }, sections,
        h("div.actions", {}, h("button#tuning-save.primary", { type: "submit", test: "tuning-save", text: "Save tuning" }))),
      applianceCard());
  }

  /** A button that asks once more before it acts. */
  function confirmed(label, again, test, action) {
    const button = h("button.danger", { type: "button", test, text: label, onclick: async () => {
      if (button.dataset.armed !== "1") {
        button.dataset.armed = "1";
        button.textContent = again;
        return;
      }
      button.disabled = true;
      await action();
      button.disabled = false;
    } });
    return button;
  }

  function applianceCard() {
    const reboot = confirmed("Reboot", "Confirm reboot", "reboot", async () => {
      if (await attempt(() => api("POST", "/api/v1/reboot")) !== undefined) notice("Rebooting; this page comes back in a minute");
    });
    const reset = confirmed("Factory reset", "Erase everything and reboot", "factory-reset", async () => {
      if (await attempt(() => api("POST", "/api/v1/factory-reset", { confirm: "erase everything" })) !== undefined) {
        notice("Erasing and rebooting: the appliance comes back as freshly flashed, with a new setup code on its console");
      }
    });
    return h("section.card", { test: "appliance" },
      h("h2", { text: "Appliance" }),
      h("p.muted", { text: "A factory reset erases every setting, key, pairing and log; only the image stays. Without the web UI, put a file named moat-factory-reset on the boot partition instead." }),
      h("div.row", {}, h("a.button", { href: "/api/v1/support-bundle", download: "", test: "support-bundle", text: "Download support bundle" }), reboot, reset));
  }

  // ----- fleet -------------------------------------------------------------

  async function fleet(token) {
    const s = app.status;
    if (s.role === "replica") {
      const p = s.primary || {};
      const rows = Object.entries(p).filter(([, v]) => v === null || typeof v !== "object")
        .map(([k, v]) => [h("dt", { text: k.replace(/_/g, " ") }), h("dd", { text: /unix_ms$/.test(k) && v ? time(v) + " (" + ago(v) + ")" : v === null ? "–" : String(v) })]);
      render(h("h1", { text: "Primary" }),
        h("section.card", { test: "primary-card" },
          h("p", {}, "This appliance is a replica of ", h("strong", { text: p.name || "its primary" }), ". Its policy is synced from there; pairing and the fleet are managed on the primary."),
          p.revoked ? h("p.bad", { test: "revoked", text: "The primary has revoked this replica: it keeps serving its last bundle and asks again only hourly. Pair it again to rejoin." }) : null,
          h("dl.facts", {}, rows)));
      return;
    }
    async function load() {
      const replicas = await attempt(() => api("GET", "/api/v1/replicas"));
      const status = await attempt(() => api("GET", "/api/v1/status"));
      if (!current(token) || !replicas) return;
      if (status) app.status = status;
      for (const [id, fresh] of [["#failed-pairings-card", failedPairingsCard(app.status.failed_pairings || [])],
        ["#replicas-card", replicasCard(replicas, load)]]) {
        const shown = $(id);
        if (shown) shown.replaceWith(fresh); else view().append(fresh);
      }
    }
    const valid = h("select#pairing-valid", { "aria-label": "Code valid for", test: "pairing-valid" },
      [["5m", "5 min"], ["10m", "10 min"], ["30m", "30 min"], ["1h", "1 hour"]].map(([v, t]) => h("option", { value: v, text: t, selected: v === "10m" })));
    const codeBox = h("div#pairing-result", { test: "pairing-result" });
    const button = h("button#pairing-code-button.primary", { type: "button", test: "pairing-code-button", text: "Pairing code", onclick: async () => {
      button.disabled = true;
      const code = await attempt(() => api("POST", "/api/v1/pairing-code", { valid: valid.value }));
      button.disabled = false;
      if (!code) return;
      const expires = code.expires_unix ? code.expires_unix * 1000 : Date.now() + code.valid_secs * 1000;
      codeBox.replaceChildren(
        h("div.code", { id: "pairing-code", test: "pairing-code", text: code.code }),
        h("p.muted", { test: "pairing-expiry", text: "Single use; expires at " + clock(expires) + " (in " + duration(code.valid_secs) + "). It is shown only once." }),
        h("p.muted", {}, "On the replica: ", h("code", { text: "moat join " + code.code }),
          " (it finds this primary on the LAN by mDNS), or its web UI's “Join a primary”."));
    } });
    render(h("h1", { text: "Fleet" }),
      h("section.card", { test: "pairing" },
        h("h2", { text: "Add a replica" }),
        h("div.row", {}, button, h("label.inline", {}, "valid for", valid)),
        codeBox),
      joinCard());
    await load();
    if (current(token)) app.refresh = setInterval(load, 10000);
  }

  function joinCard() {
    const address = h("input#join-address", { type: "text", placeholder: "found on the LAN when empty", "aria-label": "Primary address", test: "join-address" });
    const code = h("input#join-code", { type: "text", placeholder: "XXXX-XXXX", "aria-label": "Pairing code", test: "join-code" });
    const button = h("button#join-button", { type: "button", test: "join-button", text: "Join", onclick: async () => {
      button.disabled = true;
      const body = { code: code.value.trim() };
      if (address.value.trim()) body.address = address.value.trim();
      const pin = await attempt(() => api("POST", "/api/v1/join", body));
      button.disabled = false;
      if (!pin) return;
      notice("Paired with " + pin.name + " at " + pin.address + "; now its replica");
      app.status = await attempt(() => api("GET", "/api/v1/status")) || app.status;
      route();
    } });
    return h("section.card", { test: "join" },
      h("h2", { text: "Join a primary" }),
      h("p.muted", { text: "Make this appliance a replica of another: its policy is then the primary's, and its own is set aside. Get a code on the primary's Fleet page." }),
      h("div.row", {}, h("label.inline", {}, "Primary (HOST:PORT)", address), h("label.inline", {}, "Code", code), button));
  }

  function failedPairingsCard(failed) {
    const rows = failed.slice().reverse().map((f) => [h("span.nowrap", { text: ago(f.unix_ms), title: time(f.unix_ms) }),
      h("code", { text: f.from }), h("span", { text: f.reason })]);
    return h("section#failed-pairings-card.card", { test: "failed-pairings", hidden: !failed.length },
      h("h2", { text: "Failed pairings" }),
      h("p.muted", { text: "Wrong codes burn the code after three tries. If these are not yours, a device on the network is guessing." }),
      table(["When", "From", "Why"], rows, "failed-pairings", "failed-pairings-table"));
  }

  function replicasCard(replicas, reload) {
    const rows = replicas.map((r) => {
      const st = r.stats;
      const revoke = confirmed("Revoke", "Confirm revoke", "revoke", async () => {
        const done = await attempt(() => api("POST", "/api/v1/replicas/" + encodeURIComponent(r.name) + "/revoke"));
        if (done !== undefined) { notice("Revoked " + r.name); reload(); }
      });
      revoke.classList.add("small");
      revoke.disabled = r.revoked;
      return h("tr", { "data-replica": r.name },
        h("td", {}, h("strong", { text: r.name }), h("div.muted.small", { text: r.address || "" })),
        h("td", {}, h("span.badge.status-" + (r.revoked ? "revoked" : r.status), { test: "replica-status", text: r.revoked ? "revoked" : r.status }),
          r.connected ? h("div.muted.small", { text: "connected" }) : h("div.muted.small", { text: "not connected" })),
        h("td.num", { text: r.bundle_version === null || r.bundle_version === undefined ? "–" : "v" + r.bundle_version }),
        h("td.nowrap", { text: ago(r.last_seen_unix_ms), title: time(r.last_seen_unix_ms) }),
        h("td", { class: r.last_error ? "bad" : "", text: r.last_error || "–" }),
        h("td", {}, st
          ? [h("div", { text: num(st.queries) + " queries, " + num(st.blocked) + " blocked (" + pct(st.blocked, st.queries) + ")" }),
            h("div.muted.small", { text: "cache hits " + pct(st.cache_hits, (st.cache_hits || 0) + (st.cache_misses || 0)) + " · updated " + ago(r.stats_updated_unix_ms) }),
            st.shed || st.limited ? h("div.small.bad", { test: "replica-load", text: num(st.shed) + " shed, " + num(st.limited) + " rate-limited" }) : null]
          : h("span.muted", { text: "no stats yet" })),
        h("td", {}, r.revoked ? null : revoke));
    });
    return h("section#replicas-card.card", { test: "replicas" },
      h("h2", { text: "Replicas" }),
      replicas.length ? table(["Name", "Status", "Bundle", "Last seen", "Last error", "Stats", ""], rows, "replicas", "replicas-table")
        : h("p.muted", { test: "no-replicas", text: "No replicas yet. Press “Pairing code” and run moat join on the new appliance." }));
  }

  // ----- start -------------------------------------------------------------

  window.addEventListener("hashchange", route);
  document.addEventListener("DOMContentLoaded", () => {
    $("#pause-button").addEventListener("click", pauseBlocking);
    $("#resume-button").addEventListener("click", resumeBlocking);
    $("#logout-button").addEventListener("click", logout);
    route();
  });
})();
