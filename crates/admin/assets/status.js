// The intransit status page: reads /status every five seconds and draws it.
// Self-contained (no libraries, no external resources). Every value from the
// server is inserted as text, never as HTML.
"use strict";

const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function fill(tbody, rows, columns, emptyText) {
  tbody.replaceChildren();
  if (rows.length === 0) {
    tbody.append(el("tr", {}, el("td", { class: "empty", colspan: String(columns) }, emptyText)));
    return;
  }
  for (const row of rows) tbody.append(row);
}

function level(days) {
  if (days <= 7) return "bad";
  if (days <= 30) return "warn";
  return "ok";
}

// A CRL is judged against its own validity period, not the certificate
// thresholds above: /status gives the verdict (`freshness`), so a fresh
// 7-day CRL is green.
const CRL_LEVELS = { fresh: "ok", ageing: "warn", going_stale: "bad", stale: "bad" };
const CRL_NOTES = {
  ageing: ", less than half of its validity period left",
  going_stale: ", less than a seventh of its validity period left",
};

// `TLSv1_3` (how rustls, the metrics and /status name a version) or `1.3`
// (a policy's minimum) as people write it: `TLS 1.3`.
function tlsName(version) {
  const m = /^(?:TLSv)?(\d)[._](\d)$/.exec(String(version));
  return m ? `TLS ${m[1]}.${m[2]}` : String(version);
}

// Whole days from now to `unix`, negative once past, as /status counts
// a certificate's days_left.
function daysUntil(unix, now) {
  return Math.floor((unix - now) / 86400);
}

function sum(map) {
  return Object.values(map || {}).reduce((a, b) => a + b, 0);
}

function verdicts(status) {
  const box = document.getElementById("verdicts");
  box.replaceChildren();
  const card = (cls, title, big, note) =>
    el("div", { class: "verdict " + cls }, el("div", { class: "muted" }, title), el("div", { class: "big" }, big), el("div", { class: "muted" }, note));

  const h = status.handshakes;
  const established = h.outcomes.ok || 0;
  const refused = sum(h.outcomes) - established;
  const tls13 = h.tls_versions.TLSv1_3 || 0;
  if (established === 0) {
    box.append(card("", "Is everything TLS 1.3?", "no sessions yet", "counts start when the proxy starts"));
  } else {
    const all = tls13 === established;
    box.append(card(all ? "ok" : "warn", "Is everything TLS 1.3?", all ? "yes" : "no",
      `${tls13} of ${established} sessions`));
  }
  // Information, never a fault: every listener offers X25519MLKEM768 first,
  // so the share only says which clients can offer it (libpq on OpenSSL
  // older than 3.5 cannot), and no listener setting in /status requires it.
  const pq = Object.entries(h.groups).filter(([g]) => g.includes("MLKEM")).reduce((a, [, n]) => a + n, 0);
  const pqClients = "information: clients on OpenSSL 3.5+, rustls or Go 1.24+ offer ML-KEM; libpq on older OpenSSL cannot";
  if (established > 0) {
    const share = Math.round((100 * pq) / established);
    box.append(card("info", "Post-quantum key exchange", `${share}%`,
      `${pq} of ${established} sessions used hybrid ML-KEM; ${pqClients}`));
  } else {
    box.append(card("info", "Post-quantum key exchange", "–", `no sessions yet; ${pqClients}`));
  }
  let soonest = null;
  for (const c of allCertificates(status)) {
    if (soonest === null || c.days_left < soonest.days_left) soonest = c;
  }
  if (soonest) {
    box.append(card(level(soonest.days_left), "Next certificate expiry", `${soonest.days_left} days`,
      `${soonest.subject} (${soonest.roles.map((r) => ROLES[r] || r).join(", ")})`));
  }
  box.append(card(refused > 0 ? "warn" : "ok", "Refused connections", String(refused),
    `${established} established since start`));
  const pooled = (status.pools || []).flatMap((l) => l.pools);
  if ((status.pools || []).length) {
    const waiting = pooled.reduce((a, p) => a + p.waiting, 0);
    const active = pooled.reduce((a, p) => a + p.active, 0);
    const size = pooled.reduce((a, p) => a + p.size, 0);
    const failed = status.pools.reduce((a, l) => a + l.server_logins_failed, 0);
    box.append(card(waiting > 0 || failed > 0 ? "warn" : "ok", "Pools",
      waiting > 0 ? `${waiting} waiting` : `${active} of ${size} in use`,
      `${pooled.length} pool${pooled.length === 1 ? "" : "s"}; ${failed} failed server login${failed === 1 ? "" : "s"} since start`));
  }
  const refusedReloads = reloadErrors(status);
  const reloads = status.reloads || {};
  const rounds = (reloads.sighup || 0) + (reloads.file_change || 0);
  box.append(refusedReloads.length
    ? card("bad", "TLS material reloads", `${refusedReloads.length} refused`,
      `${refusedReloads[0]}; the previous material keeps serving`)
    : card("ok", "TLS material reloads", "in service", `${rounds} reload round${rounds === 1 ? "" : "s"} since start`));
}

// Why the proxy is not ready and what needs attention, above everything
// else: these are what /readyz answers.
function attention(status) {
  const box = document.getElementById("attention");
  box.replaceChildren();
  const notReady = status.not_ready || [];
  const warnings = status.warnings || [];
  if (notReady.length) {
    box.append(el("div", { class: "alert bad", id: "not-ready" },
      el("strong", {}, "Not ready: /readyz answers 503"),
      el("ul", {}, ...notReady.map((r) => el("li", {}, r)))));
  }
  if (warnings.length) {
    box.append(el("div", { class: "alert warn", id: "warnings" },
      el("strong", {}, `Warning${warnings.length === 1 ? "" : "s"}`),
      el("ul", {}, ...warnings.map((w) => el("li", {}, w)))));
  }
  box.hidden = notReady.length + warnings.length === 0;
}

// Every refused reload still pending, as "where: why".
function reloadErrors(status) {
  const out = [];
  for (const l of status.listeners) for (const r of l.routes) {
    if (r.reload_error) out.push(`${l.name} / ${r.route}: ${r.reload_error.error}`);
    if (r.upstream_tls && r.upstream_tls.reload_error) {
      out.push(`${l.name} / ${r.route} upstream: ${r.upstream_tls.reload_error.error}`);
    }
  }
  for (const l of status.client_listeners || []) {
    if (l.upstream_tls.reload_error) out.push(`${l.name} upstream: ${l.upstream_tls.reload_error.error}`);
  }
  return out;
}

const ROLES = {
  server: "served",
  client_ca: "client CA",
  upstream_client: "presented to the database",
  upstream_ca: "database CA",
  upstream_peer: "database's certificate, seen",
};

// Every certificate in use, once each (by fingerprint), with the roles it
// has and the routes that use it: a CA shared by several routes is one row.
function allCertificates(status) {
  const byFingerprint = new Map();
  const add = (c, where) => {
    let cert = byFingerprint.get(c.fingerprint_sha256);
    if (!cert) {
      cert = { ...c, roles: [], wheres: [] };
      byFingerprint.set(c.fingerprint_sha256, cert);
    }
    if (!cert.roles.includes(c.role)) cert.roles.push(c.role);
    if (!cert.wheres.includes(where)) cert.wheres.push(where);
  };
  for (const l of status.listeners) for (const r of l.routes) {
    for (const c of r.certificates) add(c, `${l.name} / ${r.route}`);
    for (const c of (r.upstream_tls && r.upstream_tls.certificates) || []) add(c, `${l.name} / ${r.route}`);
  }
  for (const l of status.client_listeners || []) {
    for (const c of l.upstream_tls.certificates || []) add(c, l.name);
  }
  return [...byFingerprint.values()];
}

// Every CRL in use, once each (by file and issuer), with the routes that
// check client certificates against it.
function allCrls(status) {
  const byFile = new Map();
  for (const l of status.listeners) for (const r of l.routes) {
    for (const c of r.crls || []) {
      const key = `${c.file}\n${c.issuer}`;
      if (!byFile.has(key)) byFile.set(key, { ...c, wheres: [] });
      const crl = byFile.get(key);
      const where = `${l.name} / ${r.route}`;
      if (!crl.wheres.includes(where)) crl.wheres.push(where);
    }
  }
  return [...byFile.values()];
}

function upstreamText(u) {
  if (!u) return "plaintext (loopback or unix socket)";
  const parts = [`${tlsName(u.min_version)} or later, ${u.mode}`, `name ${u.server_name}`];
  if (u.pins) parts.push(`${u.pins} pin${u.pins === 1 ? "" : "s"}`);
  if (u.client_certificate) parts.push("client certificate");
  return parts.join(", ");
}

function clientListeners(status) {
  const section = document.getElementById("client-section");
  const rows = (status.client_listeners || []).map((l) => el("tr", {},
    el("td", {}, el("strong", {}, l.name), el("div", { class: "muted" }, l.protocol)),
    el("td", {}, el("code", {}, l.listen)),
    el("td", {}, el("code", {}, l.upstream)),
    el("td", {}, upstreamText(l.upstream_tls)),
    el("td", {}, l.allow_remote_plaintext ? "allowed" : "loopback only")));
  section.hidden = rows.length === 0;
  fill(document.querySelector("#client-listeners tbody"), rows, 5, "no client-mode listeners");
}

function pools(status) {
  const section = document.getElementById("pool-section");
  const rows = [];
  for (const l of status.pools || []) {
    if (l.pools.length === 0) {
      rows.push(el("tr", {}, el("td", {}, el("strong", {}, l.listener), el("div", { class: "muted" }, `${l.mode} mode, ${l.server_auth}`)),
        el("td", { colspan: "8", class: "muted" }, "no client yet")));
    }
    l.pools.forEach((p, i) => rows.push(el("tr", { class: p.waiting > 0 ? "warn" : "" },
      el("td", {}, i === 0 ? el("strong", {}, l.listener) : "", i === 0 ? el("div", { class: "muted" }, `${l.mode} mode, ${l.server_auth}`) : null),
      el("td", {}, p.database),
      el("td", {}, p.user),
      el("td", { class: "num" }, String(p.clients)),
      el("td", { class: "num" }, String(p.waiting)),
      el("td", { class: "num" }, String(p.active)),
      el("td", { class: "num" }, String(p.idle)),
      el("td", { class: "num" }, String(p.opening)),
      el("td", { class: "num" }, String(p.size)))));
  }
  section.hidden = (status.pools || []).length === 0;
  fill(document.querySelector("#pools tbody"), rows, 9, "no pooled listeners");
}

function listeners(status) {
  const rows = [];
  for (const l of status.listeners) {
    l.routes.forEach((r, i) => {
      const p = r.policy;
      rows.push(el("tr", {},
        el("td", {}, i === 0 ? el("strong", {}, l.name) : "", i === 0 ? el("div", { class: "muted" }, l.protocol) : null),
        el("td", {}, i === 0 ? el("code", {}, l.listen) : ""),
        el("td", {}, r.route),
        el("td", {}, el("code", {}, r.upstream)),
        el("td", {}, `${tlsName(p.min_version)} or later`),
        el("td", {}, p.client_auth + (p.crl ? ", CRL checked" : "")),
        el("td", {}, p.allow.length ? p.allow.join(", ") : "any trusted certificate"),
        el("td", {}, r.db_users_enforced ? "enforced" : "not enforced"),
        el("td", {}, upstreamText(r.upstream_tls))));
    });
  }
  fill(document.querySelector("#listeners tbody"), rows, 9, "no listeners");
}

// The expiry time axis is logarithmic: a 10-year CA and a 90-day
// certificate share one page, and on a linear axis the 90-day bar would be
// a sliver. Equal widths are equal ratios of time (7 days to 30 is about
// as far as 90 days to 1 year), the ticks name the scale, and every row
// prints its days left, so no bar has to be read for a number. The axis
// ends at 10 years: a CA valid for centuries (rcgen's and many self-made
// CAs' default) fills its bar instead of squeezing every other row.
const AXIS_DAYS = 3650;
const AXIS_TICKS = [[1, "1 d"], [7, "7 d"], [30, "30 d"], [90, "90 d"], [365, "1 y"], [AXIS_DAYS, "10 y+"]];

function axisPosition(days) {
  return (100 * Math.log1p(Math.min(Math.max(days, 0), AXIS_DAYS))) / Math.log1p(AXIS_DAYS);
}

function axisRow() {
  const scale = el("div", { class: "scale", "aria-hidden": "true" });
  for (const [days, label] of AXIS_TICKS) {
    const tick = el("span", { class: "tick" }, label);
    tick.style.left = axisPosition(days) + "%";
    scale.append(tick);
  }
  return el("div", { class: "row axis" }, el("div", { class: "name muted" }, "time left (log scale)"), scale, el("div", {}));
}

function expiryRow(kind, key, name, detail, days, cls, daysText, title) {
  const bar = el("div", { class: "bar " + cls });
  bar.style.width = Math.max(1, Math.min(100, axisPosition(days))) + "%";
  const track = el("div", { class: "track", title }, bar);
  for (const [tickDays] of AXIS_TICKS) {
    const line = el("span", { class: "gridline" });
    line.style.left = axisPosition(tickDays) + "%";
    track.append(line);
  }
  return el("div", { class: "row", "data-kind": kind, "data-key": key, "data-level": cls },
    el("div", { class: "name" }, name, el("small", {}, detail)),
    track,
    el("div", { class: "days " + cls }, daysText));
}

function expiry(status) {
  const box = document.getElementById("expiry");
  box.replaceChildren();
  const certs = allCertificates(status);
  certs.sort((a, b) => a.days_left - b.days_left);
  const crls = allCrls(status).map((c) => ({
    ...c,
    days: c.next_update_unix === null || c.next_update_unix === undefined ? null : daysUntil(c.next_update_unix, status.now),
  }));
  crls.sort((a, b) => (a.days === null ? Infinity : a.days) - (b.days === null ? Infinity : b.days));
  if (certs.length || crls.length) box.append(axisRow());
  for (const c of certs) {
    const roles = c.roles.map((r) => ROLES[r] || r).join(", ");
    box.append(expiryRow("certificate", c.fingerprint_sha256, c.subject,
      `${roles} · ${c.wheres.join(", ")} · serial ${c.serial} · loaded ${c.loaded_at}`,
      c.days_left, level(c.days_left), c.days_left < 0 ? "expired" : `${c.days_left} days left`,
      `expires ${c.not_after}`));
  }
  if (certs.length === 0) box.append(el("p", { class: "empty" }, "no certificates loaded"));

  const crlBox = document.getElementById("crls");
  crlBox.replaceChildren();
  for (const c of crls) {
    const detail = `CRL ${c.file} · ${c.wheres.join(", ")} · issued ${c.this_update}`;
    if (c.days === null) {
      crlBox.append(expiryRow("crl", c.file, c.issuer, detail, AXIS_DAYS, "", "no nextUpdate", "the CRL names no next update"));
    } else if (c.stale) {
      crlBox.append(expiryRow("crl", c.file, c.issuer, detail, 0, "bad", "stale",
        `stale since ${c.next_update} (its nextUpdate)`));
    } else {
      crlBox.append(expiryRow("crl", c.file, c.issuer, detail, c.days, CRL_LEVELS[c.freshness] || "bad",
        `next update in ${c.days} days`, `next update ${c.next_update}${CRL_NOTES[c.freshness] || ""}`));
    }
  }
  document.getElementById("crl-section").hidden = crls.length === 0;
}

function timeline(status) {
  const box = document.getElementById("timeline");
  box.replaceChildren();
  const minutes = 30;
  const nowMinute = status.now - (status.now % 60);
  const buckets = new Map(status.handshakes.minutes.map((b) => [b.minute, b]));
  const series = [];
  for (let i = minutes - 1; i >= 0; i--) {
    const m = nowMinute - 60 * i;
    const b = buckets.get(m) || { ok: 0, refused: 0 };
    series.push({ minute: m, ok: b.ok, refused: b.refused });
  }
  const peak = Math.max(1, ...series.map((s) => s.ok + s.refused));
  const w = 600, h = 150, pad = 18, barW = (w - pad) / minutes;
  const chart = svg("svg", { viewBox: `0 0 ${w} ${h + 14}`, role: "img", "aria-label": "handshakes per minute" });
  series.forEach((s, i) => {
    const x = pad + i * barW + 1;
    const okH = ((h - 10) * s.ok) / peak;
    const badH = ((h - 10) * s.refused) / peak;
    const title = svg("title");
    title.textContent = `${new Date(s.minute * 1000).toISOString().slice(11, 16)} UTC: ${s.ok} established, ${s.refused} refused`;
    const g = svg("g");
    g.append(title);
    g.append(svg("rect", { x, y: h - okH, width: barW - 2, height: okH, fill: "#2e8b57" }));
    g.append(svg("rect", { x, y: h - okH - badH, width: barW - 2, height: badH, fill: "#c23b32" }));
    chart.append(g);
  });
  chart.append(svg("line", { x1: pad, y1: h, x2: w, y2: h, stroke: "#99a" }));
  const peakLabel = svg("text", { x: 0, y: 12, "font-size": 11, fill: "#657080" });
  peakLabel.textContent = String(peak);
  chart.append(peakLabel);
  const axis = svg("text", { x: pad, y: h + 13, "font-size": 11, fill: "#657080" });
  axis.textContent = "30 min ago";
  chart.append(axis);
  const nowLabel = svg("text", { x: w - 24, y: h + 13, "font-size": 11, fill: "#657080" });
  nowLabel.textContent = "now";
  chart.append(nowLabel);
  box.append(chart);
}

function outcomes(status) {
  const h = status.handshakes;
  const rows = Object.entries(h.outcomes)
    .sort((a, b) => b[1] - a[1])
    .map(([k, n]) => el("tr", {}, el("td", {}, el("span", { class: "badge " + (k === "ok" ? "ok" : "bad") }, k)), el("td", { class: "num" }, n)));
  fill(document.querySelector("#outcomes tbody"), rows, 2, "no connections yet");
  const neg = [
    ...Object.entries(h.tls_versions).map(([k, n]) => ["TLS version", tlsName(k), n]),
    ...Object.entries(h.groups).map(([k, n]) => ["key exchange", k, n]),
  ].map(([kind, k, n]) => el("tr", {}, el("td", {}, kind), el("td", {}, el("code", {}, k)), el("td", { class: "num" }, n)));
  fill(document.querySelector("#negotiated tbody"), neg, 3, "no established sessions yet");
}

// The database user a refused login asked for. A refusal during the TLS
// handshake comes before the client names one (it sends the name inside
// TLS), and a `tls` listener does not read its protocol's login at all.
function userCell(r) {
  if (r.db_user) return el("td", { class: "user" }, r.db_user);
  if (r.protocol === "tls") return el("td", { class: "user muted", title: "tls listeners do not read the login" }, "n/a");
  return el("td", { class: "user muted", title: "refused before the client sent a database user" }, "not sent");
}

function refusals(status) {
  const rows = status.recent_refusals.slice().reverse().map((r) => {
    const cert = r.client_cert ? (r.client_cert.cn || r.client_cert.sans.join(", ") || r.client_cert.sha256) : "none";
    return el("tr", {},
      el("td", {}, r.time.replace("T", " ").slice(0, 19)),
      el("td", {}, r.listener),
      el("td", {}, el("code", {}, r.peer)),
      el("td", {}, cert),
      userCell(r),
      el("td", {}, el("span", { class: "badge bad" }, r.outcome)),
      el("td", {}, r.detail || ""));
  });
  fill(document.querySelector("#refusals tbody"), rows, 7, "no refusals since start");
}

async function refresh() {
  const badge = document.getElementById("connection");
  try {
    const response = await fetch("/status", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const status = await response.json();
    document.getElementById("version").textContent = `v${status.version} · started ${status.started_at}`;
    attention(status);
    verdicts(status);
    listeners(status);
    clientListeners(status);
    pools(status);
    expiry(status);
    timeline(status);
    outcomes(status);
    refusals(status);
    document.getElementById("refreshed").textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
    badge.textContent = "live";
    badge.className = "badge ok";
    document.body.dataset.loaded = "true";
  } catch (e) {
    badge.textContent = "cannot reach the proxy";
    badge.className = "badge bad";
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
