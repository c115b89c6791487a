// plumb ui's page: draws the stack's graph (/api/topology, the model of `plumb graph`) as SVG
// in layers (the host and what lies outside on top, networks as bars, containers as boxes
// hanging from them, services below), then polls /api/stats each second for every
// container's traffic, health and restarts, the policies' denials and the tracked flows.
// Plain DOM, no library; every text is set with textContent (log lines and names are data).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const BOX_W = 210, GAP = 20, LEFT = 30, BAR_H = 24, BAR_GAP = 12;
const params = new URLSearchParams(location.search);
// How long the capture button captures: ?seconds=N (tests use a short one).
const captureSeconds = Math.max(1, Math.min(60, parseInt(params.get("seconds") || "10", 10) || 10));

let topology = null, topologyText = "", selected = null;
// Where each container's box is, for the flows; address -> container.
let boxes = {}, owners = {};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  const body = await r.json().catch(() => ({ error: `${r.status} ${r.statusText}` }));
  if (!r.ok) throw new Error(body.error || `${r.status}`);
  return body;
}

function status(text, error) {
  const s = $("status");
  s.textContent = text;
  s.className = error ? "status error" : "status";
}

function bytes(n, rate) {
  const units = ["B", "kB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i] + (rate ? "/s" : "");
}

// ---- the drawing --------------------------------------------------------------------------

let BOX_H = 100;

// A box's text lines: its name, an address per network and each published port.
function boxLines(t, links, c) {
  const byId = Object.fromEntries(t.nodes.map((n) => [n.id, n]));
  const lines = links.filter((l) => l.to === c.id).map((l) => `${l.label} (${byId[l.from].name})`);
  for (const e of t.edges) if (e.from === "host" && e.to === c.id) lines.push(e.label.replace(/^publish /, "published "));
  return lines.slice(0, 4);
}

function layout(t) {
  const byId = Object.fromEntries(t.nodes.map((n) => [n.id, n]));
  const nets = t.nodes.filter((n) => n.kind === "network");
  const ctrs = t.nodes.filter((n) => n.kind === "container");
  const links = t.edges.filter((e) => byId[e.from]?.kind === "network" && byId[e.to]?.kind === "container" && !e.dashed);
  const firstNet = (c) => {
    const i = nets.findIndex((n) => links.some((l) => l.from === n.id && l.to === c.id));
    return i < 0 ? nets.length : i;
  };
  ctrs.sort((a, b) => firstNet(a) - firstNet(b) || a.name.localeCompare(b.name, undefined, { numeric: true }));
  BOX_H = 20 + 14 * Math.max(1, ...ctrs.map((c) => boxLines(t, links, c).length)) + 46;
  const pos = {};
  const barsTop = 70;
  const ctrTop = barsTop + nets.length * (BAR_H + BAR_GAP) + 40;
  ctrs.forEach((c, i) => { pos[c.id] = { x: LEFT + i * (BOX_W + GAP), y: ctrTop, w: BOX_W, h: BOX_H }; });
  nets.forEach((n, i) => {
    const xs = links.filter((l) => l.from === n.id).map((l) => pos[l.to].x);
    const x0 = xs.length ? Math.min(...xs) - 8 : LEFT;
    const x1 = xs.length ? Math.max(...xs) + BOX_W + 8 : LEFT + BOX_W;
    pos[n.id] = { x: x0, y: barsTop + i * (BAR_H + BAR_GAP), w: x1 - x0, h: BAR_H };
  });
  // Services under their replicas, pushed apart where they would overlap.
  const svcTop = ctrTop + BOX_H + 70;
  let nextFree = LEFT;
  const svcs = t.nodes.filter((n) => n.kind === "service").map((s) => {
    const xs = t.edges.filter((e) => e.from === s.id && pos[e.to]).map((e) => pos[e.to].x + BOX_W / 2);
    return { s, cx: xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : LEFT + 90 };
  }).sort((a, b) => a.cx - b.cx);
  for (const { s, cx } of svcs) {
    const x = Math.max(cx, nextFree + 100);
    pos[s.id] = { x: x - 100, y: svcTop, w: 200, h: 70, cx: x };
    nextFree = x + 100 + GAP;
  }
  // The host and what lies outside the stack, along the top.
  t.nodes.filter((n) => n.kind === "host" || n.kind === "elsewhere").forEach((n, i) => {
    pos[n.id] = { x: LEFT + i * (150 + GAP), y: 10, w: 150, h: 34 };
  });
  const right = Math.max(...Object.values(pos).map((p) => p.x + p.w)) + LEFT;
  return { pos, links, width: Math.max(right, 600), height: svcTop + 70 + 60 };
}

function center(p) {
  return { x: p.cx ?? p.x + p.w / 2, y: p.y + p.h / 2 };
}

function draw(t) {
  const svg = $("graph");
  svg.replaceChildren();
  const { pos, links, width, height } = layout(t);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const byId = Object.fromEntries(t.nodes.map((n) => [n.id, n]));
  const flows = el("svg:g", { id: "flow-layer" });
  const under = el("svg:g");
  const over = el("svg:g");
  svg.append(under, flows, over);
  boxes = {};
  owners = {};
  // Networks and the lines down to their containers.
  t.nodes.filter((n) => n.kind === "network").forEach((n, i) => {
    const p = pos[n.id];
    const g = el("svg:g", { class: "net", "data-network": n.name });
    g.append(el("svg:rect", { x: p.x, y: p.y, width: p.w, height: p.h, rx: 3 }));
    g.append(el("svg:text", { x: p.x + 6, y: p.y + 16 }, n.lines.join(" · ")));
    over.append(g);
    for (const l of links.filter((l) => l.from === n.id)) {
      const c = pos[l.to];
      const x = c.x + 14 + i * 10;
      under.append(el("svg:line", { class: "link", x1: x, y1: p.y + p.h, x2: x, y2: c.y }));
    }
  });
  for (const n of t.nodes.filter((n) => n.kind === "container")) {
    const p = pos[n.id];
    boxes[n.name] = p;
    const g = el("svg:g", { class: "ctr", "data-container": n.name, tabindex: 0 });
    g.append(el("svg:rect", { x: p.x, y: p.y, width: p.w, height: p.h, rx: 4 }));
    for (const l of links.filter((l) => l.to === n.id)) owners[l.label.split(" ")[1].split("/")[0]] = n.name;
    let y = p.y + 15;
    g.append(el("svg:text", { x: p.x + 8, y, class: "name" }, n.lines.join(" ")));
    for (const line of boxLines(t, links, n)) g.append(el("svg:text", { x: p.x + 8, y: (y += 14) }, line));
    y = p.y + p.h - 34;
    g.append(el("svg:text", { x: p.x + 8, y, class: "health", "data-counter": "health" }, "…"));
    g.append(el("svg:text", { x: p.x + 8, y: y + 14, class: "traffic rate", "data-counter": "rate" }, ""));
    g.append(el("svg:text", { x: p.x + 8, y: y + 28, class: "traffic rx-total", "data-counter": "rx_bytes", "data-value": 0 }, ""));
    g.addEventListener("click", () => select(n.name));
    g.addEventListener("keydown", (ev) => { if (ev.key === "Enter") select(n.name); });
    if (n.name === selected) g.classList.add("selected");
    over.append(g);
  }
  for (const n of t.nodes.filter((n) => n.kind === "service")) {
    const p = pos[n.id];
    const g = el("svg:g", { class: "svc", "data-service": n.name });
    g.append(el("svg:ellipse", { cx: p.cx, cy: p.y + p.h / 2, rx: p.w / 2, ry: p.h / 2 }));
    n.lines.forEach((line, i) => g.append(el("svg:text", { x: p.cx, y: p.y + 18 + i * 12, "text-anchor": "middle" }, line)));
    g.append(el("svg:text", { x: p.cx, y: p.y + 18 + n.lines.length * 12, "text-anchor": "middle", class: "ready" }, ""));
    g.append(el("svg:text", { x: p.cx, y: p.y + p.h + 14, "text-anchor": "middle", class: "denial" }, ""));
    over.append(g);
    for (const e of t.edges.filter((e) => e.from === n.id && pos[e.to])) {
      const c = pos[e.to];
      under.append(el("svg:path", { class: "replica", d: `M${p.cx},${p.y} L${c.x + c.w / 2},${c.y + c.h}` }));
    }
  }
  for (const n of t.nodes.filter((n) => n.kind === "host" || n.kind === "elsewhere")) {
    const p = pos[n.id];
    const g = el("svg:g", { class: "other", "data-node": n.name });
    const pts = n.kind === "host"
      ? `${p.x},${p.y + 10} ${p.x + p.w / 2},${p.y} ${p.x + p.w},${p.y + 10} ${p.x + p.w},${p.y + p.h} ${p.x},${p.y + p.h}`
      : `${p.x + 8},${p.y} ${p.x + p.w - 8},${p.y} ${p.x + p.w},${p.y + p.h / 2} ${p.x + p.w - 8},${p.y + p.h} ${p.x + 8},${p.y + p.h} ${p.x},${p.y + p.h / 2}`;
    g.append(el("svg:polygon", { points: pts }));
    g.append(el("svg:text", { x: p.x + p.w / 2, y: p.y + 22, "text-anchor": "middle" }, n.lines.join(" ")));
    over.append(g);
  }
  // What the policies allow: arrows between the nodes their selectors name.
  const defs = el("svg:defs");
  const marker = el("svg:marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" });
  marker.append(el("svg:path", { d: "M0,0 L10,5 L0,10 z", fill: "#2a6" }));
  defs.append(marker);
  svg.prepend(defs);
  t.edges.filter((e) => e.label.startsWith("allow ") && pos[e.from] && pos[e.to]).forEach((e, i) => {
    const a = center(pos[e.from]), b = center(pos[e.to]);
    const bend = 60 + 25 * i;
    const mx = (a.x + b.x) / 2, my = Math.max(a.y, b.y) + bend;
    under.append(el("svg:path", { class: "policy", d: `M${a.x},${a.y} Q${mx},${my} ${b.x},${b.y}`, "marker-end": "url(#arrow)" }));
    over.append(el("svg:text", { class: "policy-label", x: mx, y: (Math.max(a.y, b.y) + my) / 2 + 4, "text-anchor": "middle" }, e.label));
  });
  const from = $("trace-from");
  const previous = from.value;
  from.replaceChildren(...Object.keys(boxes).map((name) => el("option", { value: name }, name)));
  if (previous in boxes) from.value = previous;
}

// ---- live numbers -------------------------------------------------------------------------

function showStats(s) {
  const svg = $("graph");
  for (const r of s.containers) {
    const g = svg.querySelector(`g.ctr[data-container="${CSS.escape(r.container)}"]`);
    if (!g) continue;
    const health = r.health === "-" ? "no process" : r.health;
    g.querySelector(".health").textContent = `${health} · restarts ${r.restarts} · ${r.established} estab`;
    g.querySelector(".rate").textContent = `in ${bytes(r.rx_bytes_per_s, true)} · out ${bytes(r.tx_bytes_per_s, true)}`;
    const total = g.querySelector(".rx-total");
    total.textContent = `rx ${bytes(r.rx_bytes)} · tx ${bytes(r.tx_bytes)} · drops ${r.drops}`;
    total.setAttribute("data-value", r.rx_bytes);
    g.classList.toggle("unhealthy", r.health === "unhealthy" || r.health === "failed");
  }
  for (const v of s.services || []) {
    const g = svg.querySelector(`g.svc[data-service="${CSS.escape(v.service)}"]`);
    if (!g) continue;
    const ready = v.endpoints.filter((e) => e.ready).length;
    const conns = v.endpoints.reduce((n, e) => n + (e.connections ?? 0), 0);
    const line = `ready ${ready}/${v.endpoints.length}` + (v.vip ? ` · ${conns} via VIP` : "");
    const t = g.querySelector(".ready");
    if (t) t.textContent = line;
    g.classList.toggle("degraded", ready < v.endpoints.length);
  }
  const list = $("denials");
  list.replaceChildren();
  for (const d of s.denials) {
    const text = `${d.service} ${d.direction}: ${d.packets} packets dropped · isolated by ${d.policies.join(", ")}`;
    list.append(el("li", { class: d.packets > 0 ? "denied" : "", "data-service": d.service, "data-direction": d.direction, "data-packets": d.packets }, text));
    const g = svg.querySelector(`g.svc[data-service="${CSS.escape(d.service)}"]`);
    if (g && d.packets > 0) {
      g.classList.add("denied");
      g.querySelector(".denial").textContent = `${d.direction} denied ${d.packets} (${d.policies.map((p) => p.split(" ").pop()).join(", ")})`;
    }
  }
  if (!s.denials.length) list.append(el("li", { class: "quiet" }, "no policy isolates a service"));
  const body = $("flows").querySelector("tbody");
  const { open, closed } = splitFlows(s.flows);
  body.replaceChildren(...open.map((f) => {
    const tr = el("tr");
    for (const v of flowRow(f)) tr.append(el("td", {}, v));
    return tr;
  }));
  if (closed) {
    const tr = el("tr", { class: "quiet" });
    tr.append(el("td", { colspan: 5 }, `and ${closed} closed (TIME_WAIT)`));
    body.append(tr);
  }
  // Flows between two containers, as arcs under the boxes.
  const layer = $("flow-layer");
  layer.replaceChildren();
  const seen = new Set();
  for (const f of s.flows) {
    const a = owners[f.original.src], b = owners[f.dnat ? f.dnat.split(":")[0] : f.original.dst];
    if (!a || !b || a === b || seen.has(a + ">" + b)) continue;
    seen.add(a + ">" + b);
    const pa = boxes[a], pb = boxes[b];
    const y = pa.y + pa.h, x1 = pa.x + pa.w / 2 + 10, x2 = pb.x + pb.w / 2 - 10;
    layer.append(el("svg:path", { class: "flow", d: `M${x1},${y} Q${(x1 + x2) / 2},${y + 50} ${x2},${y}`, "data-flow": `${a}>${b}` }));
  }
}

// Flows still open, and how many closed ones conntrack still remembers (TIME_WAIT).
function splitFlows(flows) {
  const open = flows.filter((f) => f.state !== "TIME_WAIT");
  return { open, closed: flows.length - open.length };
}

function flowRow(f) {
  const nat = [f.dnat && `dnat ${f.dnat}`, f.snat && `snat ${f.snat}`].filter(Boolean).join(", ");
  return [f.protocol, f.state || (f.unreplied ? "unreplied" : ""), `${f.original.src}:${f.original.sport}`, `${f.original.dst}:${f.original.dport}`, nat];
}

async function pollStats() {
  try {
    const s = await api("/api/stats");
    showStats(s);
    status(`live · ${new Date().toLocaleTimeString()}`);
  } catch (e) {
    status(`cannot read the stack: ${e.message}`, true);
  }
  setTimeout(pollStats, 1000);
}

async function pollTopology() {
  try {
    const t = await api("/api/topology");
    const text = JSON.stringify(t);
    if (text !== topologyText) {
      topology = t;
      topologyText = text;
      $("stack").textContent = t.stack;
      document.title = `plumb ui · ${t.stack}`;
      draw(t);
    }
  } catch (e) {
    status(`cannot read the stack: ${e.message}`, true);
  }
  setTimeout(pollTopology, 5000);
}

// ---- one container ------------------------------------------------------------------------

function table(headers, rows) {
  const t = el("table");
  const head = el("tr");
  headers.forEach((h) => head.append(el("th", {}, h)));
  t.append(head);
  for (const r of rows) {
    const tr = el("tr");
    r.forEach((v) => tr.append(el("td", {}, v ?? "")));
    t.append(tr);
  }
  return t;
}

async function select(name) {
  selected = name;
  for (const g of $("graph").querySelectorAll("g.ctr")) g.classList.toggle("selected", g.dataset.container === name);
  $("detail-title").textContent = `Container ${name}`;
  const body = $("detail-body");
  body.className = "";
  body.replaceChildren(el("p", { class: "quiet" }, "reading…"));
  let c;
  try {
    c = await api(`/api/container/${encodeURIComponent(name)}`);
  } catch (e) {
    body.replaceChildren(el("p", { class: "refused" }, e.message));
    return;
  }
  if (selected !== name) return;
  const parts = [];
  const st = c.status;
  parts.push(el("p", {}, `service ${c.service}` + (st ? ` · ${st.state}${st.health ? " (" + st.health + ")" : ""} · pid ${st.pid ?? "-"} · restarts ${st.restarts}` : c.has_process ? "" : " · no process")));
  parts.push(table(["iface", "network", "address", "host end"], c.interfaces.map((i) => [i.name, i.network, i.address, i.host_veth])));
  if (c.ports.length) parts.push(el("p", {}, `published: ${c.ports.join(", ")}`));
  const link = el("a", { id: "capture", class: "button", href: `/api/capture?container=${encodeURIComponent(name)}&seconds=${captureSeconds}`, download: `${name}.pcapng` }, `capture ${captureSeconds} s`);
  link.addEventListener("click", () => {
    link.classList.add("busy");
    link.textContent = `capturing ${captureSeconds} s…`;
    setTimeout(() => { link.classList.remove("busy"); link.textContent = `capture ${captureSeconds} s`; }, captureSeconds * 1000 + 500);
  });
  parts.push(el("p", {}, ""), link);
  parts.push(el("h2", {}, "Sockets"));
  // Closed connections waiting out TIME-WAIT are many and say little: counted, not listed.
  const waiting = c.connections.sockets.filter((s) => s.state === "TIME-WAIT").length;
  const live = c.connections.sockets.filter((s) => s.state !== "TIME-WAIT");
  parts.push(table(["proto", "state", "local", "peer", "process"], live.map((s) => [s.protocol, s.state, s.local, s.peer, s.processes.map((p) => `${p.command}[${p.pid}]`).join(",")])));
  if (waiting) parts.push(el("p", { class: "quiet" }, `and ${waiting} closed connections in TIME-WAIT`));
  parts.push(el("h2", {}, "Flows"));
  const flows = splitFlows(c.connections.flows);
  parts.push(table(["proto", "state", "from", "to", "NAT"], flows.open.map(flowRow)));
  if (flows.closed) parts.push(el("p", { class: "quiet" }, `and ${flows.closed} closed (TIME_WAIT)`));
  parts.push(el("h2", {}, "Events"));
  parts.push(table(["time", "event", "detail"], c.events.map((e) => [new Date(e.ts_ms).toLocaleTimeString(), e.event, e.detail])));
  parts.push(el("h2", {}, "Log"));
  parts.push(el("pre", { id: "log" }, c.log.length ? c.log.join("\n") : c.has_process ? "(nothing yet)" : "(no process: nothing to log)"));
  body.replaceChildren(...parts);
}

// ---- trace --------------------------------------------------------------------------------

function hook(at) {
  return at && typeof at === "object" ? `${at.family} ${at.table} ${at.chain}` : String(at ?? "");
}

$("trace-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const from = $("trace-from").value, to = $("trace-to").value.trim();
  const out = $("trace-result");
  out.replaceChildren(el("p", { class: "quiet" }, `tracing ${from} → ${to}…`));
  let r;
  try {
    r = await api(`/api/trace?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`);
  } catch (e) {
    out.replaceChildren(el("p", { class: "refused" }, e.message));
    return;
  }
  const parts = [el("p", { class: r.answered ? "allowed" : "refused", id: "trace-outcome" }, `${r.from} → ${r.to} (${r.address}:${r.port}/${r.protocol}): ${r.outcome}`)];
  const path = el("ol", { id: "trace-path" });
  for (const s of r.steps) {
    const where = [s.in && `in ${s.in}`, s.out && `out ${s.out}`].filter(Boolean).join(", ");
    const li = el("li", {}, `${hook(s.at)}${where ? " (" + where + ")" : ""}${s.times > 1 ? " ×" + s.times : ""}`);
    const rules = (s.rules || []).map((m) => `${m.comment || m.expr}${m.verdict ? " → " + m.verdict : ""}`);
    if (s.policy) rules.push(`chain policy ${s.policy}`);
    if (rules.length) li.append(el("div", { class: "quiet" }, rules.join("; ")));
    path.append(li);
  }
  parts.push(path);
  const d = r.decided_by;
  if (d) parts.push(el("p", { class: "refused" }, `decided by: ${d.verdict} in ${hook(d.at)}${d.rule ? " (" + (d.rule.comment || d.rule.expr) + ")" : " (the chain's policy)"}`));
  if (r.policy) parts.push(el("p", { class: r.policy.allowed ? "allowed" : "refused" }, `the stack's policies ${r.policy.allowed ? "allow" : "deny"} it: ${r.policy.summary}`));
  out.replaceChildren(...parts);
});

pollTopology();
pollStats();
