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
  const pq = Object.entries(h.groups).filter(([g]) => g.includes("MLKEM")).reduce((a, [, n]) => a + n, 0);
  if (established > 0) {
    const share = Math.round((100 * pq) / established);
    box.append(card(pq === established ? "ok" : pq > 0 ? "warn" : "bad", "Post-quantum key exchange",
      `${share}%`, `${pq} of ${established} sessions used a hybrid ML-KEM group`));
  } else {
    box.append(card("", "Post-quantum key exchange", "–", "no sessions yet"));
  }
  let soonest = null;
  for (const c of certificates(status)) {
    if (soonest === null || c.days_left < soonest.days_left) soonest = c;
  }
  if (soonest) {
    box.append(card(level(soonest.days_left), "Next certificate expiry", `${soonest.days_left} days`,
      `${soonest.subject} (${ROLES[soonest.role] || soonest.role})`));
  }
  box.append(card(refused > 0 ? "warn" : "ok", "Refused connections", String(refused),
    `${established} established since start`));
}

function upstreamText(u) {
  if (!u) return "plaintext (loopback or unix socket)";
  const parts = [`TLS ≥ ${u.min_version}, ${u.mode}`, `name ${u.server_name}`];
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
        el("td", {}, `TLS ≥ ${p.min_version}`),
        el("td", {}, p.client_auth + (p.crl ? ", CRL checked" : "")),
        el("td", {}, p.allow.length ? p.allow.join(", ") : "any trusted certificate"),
        el("td", {}, r.db_users_enforced ? "enforced" : "not enforced"),
        el("td", {}, upstreamText(r.upstream_tls))));
    });
  }
  fill(document.querySelector("#listeners tbody"), rows, 9, "no listeners");
}

// What each certificate role means, for people.
const ROLES = {
  server: "served",
  client_ca: "client CA",
  upstream_client: "presented to the database",
  upstream_ca: "database CA",
  upstream_peer: "database's certificate",
};

// Every certificate in use: listeners' own, their upstream legs', and
// client-mode listeners' upstream legs'.
function certificates(status) {
  const certs = [];
  for (const l of status.listeners) for (const r of l.routes) {
    for (const c of r.certificates) certs.push({ ...c, where: `${l.name} / ${r.route}` });
    if (r.upstream_tls) for (const c of r.upstream_tls.certificates) {
      certs.push({ ...c, where: `${l.name} / ${r.route} upstream` });
    }
  }
  for (const l of status.client_listeners || []) for (const c of l.upstream_tls.certificates) {
    certs.push({ ...c, where: `${l.name} (client mode)` });
  }
  return certs;
}

function expiry(status) {
  const box = document.getElementById("expiry");
  box.replaceChildren();
  const certs = certificates(status);
  certs.sort((a, b) => a.days_left - b.days_left);
  const horizon = Math.max(90, ...certs.map((c) => Math.min(c.days_left, 3650)));
  for (const c of certs) {
    const width = Math.max(1, Math.min(100, (100 * Math.max(c.days_left, 0)) / horizon));
    const bar = el("div", { class: "bar " + level(c.days_left) });
    bar.style.width = width + "%";
    box.append(el("div", { class: "row", "data-serial": c.serial },
      el("div", { class: "name" }, c.subject, el("small", {}, `${ROLES[c.role] || c.role} · ${c.where} · serial ${c.serial}`)),
      el("div", { class: "track", title: `expires ${c.not_after}` }, bar),
      el("div", { class: "days" }, c.days_left < 0 ? "expired" : `${c.days_left} days left`)));
  }
  if (certs.length === 0) box.append(el("p", { class: "empty" }, "no certificates loaded"));
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
    ...Object.entries(h.tls_versions).map(([k, n]) => ["TLS version", k, n]),
    ...Object.entries(h.groups).map(([k, n]) => ["key exchange", k, n]),
  ].map(([kind, k, n]) => el("tr", {}, el("td", {}, kind), el("td", {}, el("code", {}, k)), el("td", { class: "num" }, n)));
  fill(document.querySelector("#negotiated tbody"), neg, 3, "no established sessions yet");
}

function refusals(status) {
  const rows = status.recent_refusals.slice().reverse().map((r) => {
    const cert = r.client_cert ? (r.client_cert.cn || r.client_cert.sans.join(", ") || r.client_cert.sha256) : "none";
    return el("tr", {},
      el("td", {}, r.time.replace("T", " ").slice(0, 19)),
      el("td", {}, r.listener),
      el("td", {}, el("code", {}, r.peer)),
      el("td", {}, cert),
      el("td", {}, r.db_user || ""),
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
    verdicts(status);
    listeners(status);
    clientListeners(status);
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
