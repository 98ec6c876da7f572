// The Speedy dashboard: reads /dashboard/data every REFRESH ms and draws it.
// No build step, no library: plain DOM and inline SVG.
"use strict";
const REFRESH = 2000;

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(Math.round(n))) + " " + units[i];
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function card(label, value, id) {
  return el("div", {class: "card", id: id}, el("div", {class: "label"}, label),
            el("div", {class: "value"}, value));
}

function bar(server) {
  const cap = server.capacity || 1;
  const used = Math.min(100, 100 * server.used / cap);
  const garbage = Math.min(used, 100 * (server.garbage || 0) / cap);
  const b = el("div", {class: "bar" + (used > 90 ? " full" : ""),
                       title: `${bytes(server.used)} used (${bytes(server.garbage || 0)} garbage) of ${bytes(server.capacity)}`});
  b.append(el("div", {class: "used", style: `width:${used}%`}));
  b.append(el("div", {class: "garbage", style: `left:${used - garbage}%;width:${garbage}%`}));
  return b;
}

function drawTotals(data) {
  const t = data.totals, s = t.servers;
  const box = document.getElementById("totals");
  box.replaceChildren(
    card("servers up", `${(s.RW || 0) + (s.RO || 0)} / ${Object.values(s).reduce((a, b) => a + b, 0)}`, "card-up"),
    card("servers down", s.DOWN || 0, "card-down"),
    card("groups writable", `${t.groups_writable} / ${t.groups}`, "card-groups"),
    card("capacity", bytes(t.capacity)),
    card("used", bytes(t.used)),
    card("garbage", bytes(t.garbage)),
    card("free", bytes(t.free)),
    card("chunks", t.chunks),
    card("view version", data.version));
  if (s.DOWN) box.querySelector("#card-down").classList.add("nonzero");
}

function drawGroups(data) {
  const box = document.getElementById("groups");
  const groups = data.groups.map(g => {
    const cls = "group" + (g.degraded ? " degraded" : "") + (g.read_only ? " readonly" : "");
    const head = el("h3", {}, `group ${g.group_id} `,
      el("span", {class: "badge " + (g.writable ? "state-RW" : "state-DOWN")}, g.writable ? "writable" : "not writable"),
      g.read_only ? el("span", {class: "badge state-RO"}, "read-only") : "",
      g.degraded ? el("span", {class: "badge state-RO"}, "degraded") : "");
    const rows = g.servers.map(s => el("tr", {"data-server": s.server_id, class: "server"},
      el("td", {class: "server-id"}, s.server_id),
      el("td", {}, s.address),
      el("td", {}, el("span", {class: "badge state state-" + s.state}, s.state),
         s.lost ? " lost" : "", s.rebuilding ? " rebuilding" : ""),
      el("td", {}, bar(s)),
      el("td", {}, (100 * s.fill).toFixed(1) + " %"),
      el("td", {}, bytes(s.free)),
      el("td", {}, s.chunks),
      el("td", {}, s.heartbeat_age === null ? "never" : s.heartbeat_age + " s ago")));
    const table = el("table", {},
      el("thead", {}, el("tr", {}, ...["server", "address", "state", "fill / garbage", "fill", "free", "chunks", "heartbeat"].map(h => el("th", {}, h)))),
      el("tbody", {}, ...rows));
    return el("div", {class: cls, "data-group": g.group_id}, head, table);
  });
  box.replaceChildren(...(groups.length ? groups : [el("p", {}, "No chunkservers yet.")]));
}

function drawChart(id, values) {
  const svg = document.getElementById(id);
  const max = Math.max(1, ...values);
  const n = Math.max(values.length - 1, 1);
  const points = values.map((v, i) => `${(300 * i / n).toFixed(1)},${(58 - 56 * v / max).toFixed(1)}`).join(" ");
  svg.replaceChildren();
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points);
  svg.append(line);
}

function drawRates(data) {
  const rates = data.rates;
  const last = rates.length ? rates[rates.length - 1] : null;
  for (const [key, fmt] of [["read_bytes", v => bytes(v) + "/s"], ["written_bytes", v => bytes(v) + "/s"],
                            ["reads", v => v.toFixed(1)], ["writes", v => v.toFixed(1)]]) {
    const name = key.replace("_bytes", "");
    drawChart("chart-" + name, rates.map(r => r[key]));
    document.getElementById("rate-" + name).textContent = last ? fmt(last[key]) : "–";
  }
}

function drawCounters(data) {
  const rows = Object.entries(data.counters).sort().map(([k, v]) =>
    el("tr", {"data-counter": k}, el("td", {}, k.replaceAll("_", " ")),
       el("td", {class: v && /error|damaged|failed|failover/.test(k) ? "nonzero" : ""},
          /bytes/.test(k) ? bytes(v) : v)));
  document.getElementById("counters").replaceChildren(...rows);
  const body = document.querySelector("#imageservers tbody");
  body.replaceChildren(...data.imageservers.map(i =>
    el("tr", {class: "imageserver"}, el("td", {}, i.name), el("td", {}, i.address), el("td", {}, i.seen_ago + " s ago"),
       el("td", {class: "failovers"}, (i.counters || {}).read_failovers ?? "–"),
       el("td", {}, (i.counters || {}).bad_replicas ?? "–"),
       el("td", {}, (i.counters || {}).chunk_write_retries ?? "–"))));
}

function kvRows(id, rows) {
  document.getElementById(id).replaceChildren(...rows.map(([k, v]) =>
    el("tr", {"data-row": k}, el("td", {}, k), el("td", {}, v))));
}

function drawWork(data) {
  const gc = data.gc, t = data.transfers;
  if (gc) {
    const round = gc.current ? `${gc.current.chunks_deleted} / ${gc.current.chunks_due} chunks` : "idle";
    kvRows("gc", [["state", gc.running ? "running" : "idle"], ["round in progress", round],
                  ["rounds", gc.runs], ["chunks freed", gc.chunks_freed], ["bytes freed", bytes(gc.bytes_freed)],
                  ["blobs deleted", gc.blobs_deleted], ["pending garbage", `${gc.pending_chunks} chunks, ${bytes(gc.pending_bytes)}`],
                  ["last round took", gc.last_duration === null ? "–" : gc.last_duration.toFixed(1) + " s"]]);
  } else kvRows("gc", [["state", "no collector"]]);
  if (t) {
    kvRows("transfers", [["active", t.active], ["rate", bytes(t.rate) + "/s"], ["chunks left", t.chunks_left],
                         ["chunks moved", t.chunks_moved], ["bytes moved", bytes(t.bytes_moved)],
                         ["old copies deleted", t.old_copies_deleted], ["failures", t.failures]]);
  } else kvRows("transfers", [["active", "no transfer service"]]);
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    // The browser asks for gzip itself.  No conditional request: the
    // chunkmaster serves one rendering for a second at most, the page asks every
    // two, so an If-None-Match would hardly ever match.
    const response = await fetch("/dashboard/data", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    const data = await response.json();
    drawTotals(data); drawGroups(data); drawRates(data); drawCounters(data); drawWork(data);
    status.textContent = "updated " + new Date().toLocaleTimeString() + ", view version " + data.version;
    status.classList.remove("stale");
    document.body.dataset.version = data.version;
    document.body.dataset.loaded = "yes";
  } catch (e) {
    status.textContent = "cannot reach the chunkmaster: " + e.message;
    status.classList.add("stale");
  }
}

refresh();
setInterval(refresh, REFRESH);
