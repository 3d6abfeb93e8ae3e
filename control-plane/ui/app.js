// Tether topology page: polls /v1/topology and draws the service graph
// (layered: callers left, callees right), a table view, a problems panel
// and a service's instances. Vanilla JS, no dependencies: served from the
// tether-control binary itself.
"use strict";

/** How often the page asks for fresh figures. */
const POLL_MS = 2000;
/** Success rate under which an edge or service is drawn red. */
const THRESHOLD = 0.99;
/** Fewest requests in the window before a success rate is judged. */
const MIN_REQUESTS = 5;
/** Layout: column width, node size, vertical gap. */
const COL_W = 380, NODE_W = 200, NODE_H = 40, ROW_GAP = 14, PAD = 20;
/** A layer taller than this many services wraps into more columns. */
const MAX_ROWS = 30;
/** More edges than this are drawn fainter. */
const DENSE_EDGES = 100;
/** Edge labels are drawn only for graphs this small (the table has them all). */
const MAX_LABELLED_EDGES = 40;

const SVG_NS = "http://www.w3.org/2000/svg";
const windowParam = new URLSearchParams(location.search).get("window");
const endpoint = "/v1/topology" + (windowParam ? "?window=" + encodeURIComponent(windowParam) : "");

let latest = null;
let selected = null;
let view = "graph";
let polls = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const fmtRps = (f) => (f ? (f.rps >= 100 ? f.rps.toFixed(0) : f.rps.toFixed(1)) : "–");
const fmtSuccess = (f) => (f && f.requests > 0 ? (f.success_rate * 100).toFixed(1) + " %" : "–");
const fmtP99 = (f) => (f && f.p99_ms !== undefined && f.p99_ms !== null ? f.p99_ms + " ms" : "–");
const bad = (f) => !!f && f.requests >= MIN_REQUESTS && f.success_rate < THRESHOLD;

function expiresIn(unix) {
  if (!unix) return "–";
  const s = unix - Date.now() / 1000;
  if (s <= 0) return "expired";
  const h = Math.floor(s / 3600);
  return h >= 48 ? Math.floor(h / 24) + " d" : h + " h " + Math.floor((s % 3600) / 60) + " m";
}

/** The services and edges the filter keeps: matches and their neighbours. */
function visible(topology) {
  const q = document.getElementById("filter").value.trim().toLowerCase();
  if (!q) {
    return { services: topology.services, edges: topology.edges, matched: null };
  }
  const matched = new Set(topology.services.filter((s) => s.name.toLowerCase().includes(q)).map((s) => s.name));
  const keep = new Set(matched);
  for (const e of topology.edges) {
    if (matched.has(e.from)) keep.add(e.to);
    if (matched.has(e.to)) keep.add(e.from);
  }
  return {
    services: topology.services.filter((s) => keep.has(s.name)),
    edges: topology.edges.filter((e) => (matched.has(e.from) || matched.has(e.to))),
    matched,
  };
}

function drawGraph(topology) {
  const { services, edges, matched } = visible(topology);
  const graph = document.getElementById("graph");
  graph.replaceChildren();
  // Many edges: fainter, so the nodes and the red ones stand out.
  graph.setAttribute("class", edges.length > DENSE_EDGES ? "dense" : "");
  // Columns by layer; within a column, by name (the API sorts that way).
  const columns = new Map();
  for (const s of services) {
    if (!columns.has(s.depth)) columns.set(s.depth, []);
    columns.get(s.depth).push(s);
  }
  const layers = [...columns.keys()].sort((a, b) => a - b);
  const pos = new Map();
  let height = 0;
  let col = 0;
  for (const layer of layers) {
    // A tall layer wraps into several columns (narrower gap between them),
    // so 200 services stay on a screen or two rather than a long scroll.
    const members = columns.get(layer);
    const wraps = Math.ceil(members.length / MAX_ROWS);
    const rows = Math.ceil(members.length / wraps);
    members.forEach((s, i) => {
      const sub = Math.floor(i / rows), row = i % rows;
      const x = PAD + col * COL_W + sub * (NODE_W + 24), y = PAD + row * (NODE_H + ROW_GAP);
      pos.set(s.name, { x, y });
      height = Math.max(height, y + NODE_H + PAD);
    });
    col += 1;
    // The wrapped columns take room of their own.
    if (wraps > 1) col += ((wraps - 1) * (NODE_W + 24)) / COL_W;
  }
  const width = PAD * 2 + Math.max(1, col) * COL_W - (COL_W - NODE_W);
  graph.setAttribute("width", width);
  graph.setAttribute("height", Math.max(height, 120));
  graph.setAttribute("viewBox", `0 0 ${width} ${Math.max(height, 120)}`);
  graph.append(svg("defs", {},
    svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 9, markerHeight: 9, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" },
      svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }))));

  const edgeLayer = svg("g", { class: "edges" });
  const labelLayer = svg("g", { class: "edge-labels" });
  const labelled = edges.length <= MAX_LABELLED_EDGES;
  for (const e of edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    if (!a || !b) continue;
    const f = e.figures;
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
    const back = x2 <= x1;
    const bend = back ? 80 : Math.max(40, (x2 - x1) / 2);
    const c1 = back ? [x1 + bend, y1 - 60] : [x1 + bend, y1];
    const c2 = back ? [x2 - bend, y2 - 60] : [x2 - bend, y2];
    const d = `M ${x1} ${y1} C ${c1[0]} ${c1[1]}, ${c2[0]} ${c2[1]}, ${x2} ${y2}`;
    const focus = selected && (e.from === selected || e.to === selected) ? " focus" : selected ? " faded" : "";
    const cls = (f.requests === 0 ? "edge idle" : bad(f) ? "edge bad" : "edge ok") + focus;
    const width = f.rps > 0 ? Math.min(6, 1 + Math.log10(1 + f.rps) * 1.5) : 1;
    const path = svg("path", {
      d, class: cls, "stroke-width": width.toFixed(2), "marker-end": "url(#arrow)",
      "data-edge": `${e.from}->${e.to}`, "data-rps": f.rps, "data-success": f.success_rate,
      "data-requests": f.requests, "data-p99": f.p99_ms ?? "",
    });
    path.append(svg("title", {}, `${e.from} → ${e.to}: ${fmtRps(f)} req/s, ${fmtSuccess(f)} success, p99 ${fmtP99(f)} (${f.requests} requests in ${topology.window_seconds} s)`));
    edgeLayer.append(path);
    if (labelled && f.requests > 0) {
      // Midway along the curve: centred in the gap between the columns.
      const t = 0.5, u = 1 - t;
      const mx = u * u * u * x1 + 3 * u * u * t * c1[0] + 3 * u * t * t * c2[0] + t * t * t * x2;
      const my = u * u * u * y1 + 3 * u * u * t * c1[1] + 3 * u * t * t * c2[1] + t * t * t * y2 - 5;
      labelLayer.append(svg("text", { x: mx, y: my, class: bad(f) ? "edge-label bad" : "edge-label", "text-anchor": "middle" },
        `${fmtRps(f)}/s · ${fmtSuccess(f)} · ${fmtP99(f)}`));
    }
  }
  graph.append(edgeLayer, labelLayer);

  const nodeLayer = svg("g", { class: "nodes" });
  for (const s of services) {
    const p = pos.get(s.name);
    const f = s.inbound;
    const ejected = s.instances.some((i) => i.ejected_by > 0);
    const cls = ["node",
      s.problem || bad(f) ? "bad" : "",
      matched && !matched.has(s.name) ? "neighbour" : "",
      selected === s.name ? "selected" : ""].join(" ").trim();
    const g = svg("g", {
      class: cls, transform: `translate(${p.x},${p.y})`, tabindex: 0,
      "data-service": s.name, "data-rps": f ? f.rps : "", "data-success": f ? f.success_rate : "",
      "data-requests": f ? f.requests : "", "data-problem": s.problem, "data-ejected": ejected,
    });
    const name = s.name.length > 26 ? s.name.slice(0, 25) + "…" : s.name;
    const up = s.instances.filter((i) => i.healthy && i.ejected_by === 0).length;
    g.append(
      svg("title", {}, `${s.name}: ${s.instances.length} instances, ${s.proxies.length} proxies`),
      svg("rect", { width: NODE_W, height: NODE_H, rx: 6 }),
      svg("text", { x: 8, y: 16, class: "node-name" }, name),
      svg("text", { x: NODE_W - 8, y: 16, class: "node-instances", "text-anchor": "end" }, `${up}/${s.instances.length}`),
      svg("text", { x: 8, y: 32, class: "node-figures" },
        f ? `${fmtRps(f)}/s · ${fmtSuccess(f)} · p99 ${fmtP99(f)}` : s.outbound ? `out ${fmtRps(s.outbound)}/s` : "no traffic"),
    );
    g.addEventListener("click", () => select(s.name));
    g.addEventListener("keydown", (ev) => { if (ev.key === "Enter") select(s.name); });
    nodeLayer.append(g);
  }
  graph.append(nodeLayer);
  if (services.length === 0) {
    graph.append(svg("text", { x: PAD, y: PAD + 20, class: "muted" }, matched ? "no service matches the filter" : "no services yet"));
  }
}

function drawTables(topology) {
  const { services, edges, matched } = visible(topology);
  const rows = services.map((s) => {
    const ejected = s.instances.filter((i) => i.ejected_by > 0).length;
    const tr = el("tr", { "data-service": s.name, class: s.problem || bad(s.inbound) ? "bad" : "" },
      el("td", {}, el("a", { href: "#" }, s.name)), el("td", {}, s.depth),
      el("td", {}, fmtRps(s.inbound)), el("td", {}, fmtSuccess(s.inbound)), el("td", {}, fmtP99(s.inbound)),
      el("td", {}, fmtRps(s.outbound)),
      el("td", {}, `${s.instances.length}` + (ejected ? ` (${ejected} ejected)` : "")),
      el("td", {}, s.proxies.length));
    tr.querySelector("a").addEventListener("click", (ev) => { ev.preventDefault(); select(s.name); });
    return tr;
  });
  document.querySelector("#services-table tbody").replaceChildren(...rows);
  document.querySelector("#edges-table tbody").replaceChildren(...edges.map((e) => {
    const f = e.figures;
    return el("tr", { "data-edge": `${e.from}->${e.to}`, class: bad(f) ? "bad" : "" },
      el("td", {}, e.from), el("td", {}, e.to), el("td", {}, fmtRps(f)), el("td", {}, fmtSuccess(f)),
      el("td", {}, fmtP99(f)), el("td", {}, f.requests));
  }));
  const proxies = topology.proxies.filter((p) => !matched || matched.has(p.service));
  document.querySelector("#proxies-table tbody").replaceChildren(...proxies.map((p) => {
    const refused = p.rejected_version ? `${p.rejected_version}: ${p.error || ""}` : "";
    return el("tr", { "data-proxy": p.proxy_id, class: p.rejected_version ? "bad" : "" },
      el("td", {}, p.proxy_id), el("td", {}, p.service), el("td", {}, p.proxy_version || "–"),
      el("td", {}, p.applied_version), el("td", {}, refused), el("td", {}, p.connected ? "yes" : "no"),
      el("td", {}, p.stats_age_ms !== undefined ? (p.stats_age_ms / 1000).toFixed(1) + " s ago" : "–"),
      el("td", {}, expiresIn(p.certificate_not_after_unix)));
  }));
}

function drawProblems(topology) {
  const list = document.getElementById("problem-list");
  if (topology.problems.length === 0) {
    list.replaceChildren(el("li", { class: "muted" }, "none"));
    return;
  }
  list.replaceChildren(...topology.problems.map((p) => {
    const li = el("li", { "data-kind": p.kind, "data-service": p.service, "data-subject": p.subject, class: "problem" },
      el("strong", {}, p.kind.replace(/_/g, " ")), " ", el("a", { href: "#" }, p.service), " ",
      el("code", {}, p.subject), ": ", p.message);
    li.querySelector("a").addEventListener("click", (ev) => { ev.preventDefault(); select(p.service); });
    return li;
  }));
}

function drawDetails(topology) {
  const panel = document.getElementById("details");
  const s = selected && topology.services.find((x) => x.name === selected);
  if (!s) {
    panel.hidden = true;
    panel.replaceChildren();
    return;
  }
  panel.hidden = false;
  const close = el("button", { type: "button", class: "close", "aria-label": "close" }, "×");
  close.addEventListener("click", () => select(null));
  const instances = s.instances.map((i) => el("tr", {
    "data-instance": i.address, "data-ejected": i.ejected_by > 0, "data-healthy": i.healthy,
    class: i.ejected_by > 0 || !i.healthy ? "bad" : "",
  },
  el("td", {}, i.address),
  el("td", {}, i.healthy ? "healthy" : "not in catalog"),
  el("td", {}, i.ejected_by > 0 ? `ejected by ${i.ejected_by}/${i.observed_by}` : i.observed_by ? `ok (${i.observed_by} callers)` : "–"),
  el("td", {}, i.proxy_id || "–"), el("td", {}, i.proxy_version || "–"),
  el("td", {}, i.config_version ?? "–")));
  const callers = topology.edges.filter((e) => e.to === s.name).map((e) => `${e.from} (${fmtRps(e.figures)}/s, ${fmtSuccess(e.figures)})`);
  const callees = topology.edges.filter((e) => e.from === s.name).map((e) => `${e.to} (${fmtRps(e.figures)}/s, ${fmtSuccess(e.figures)})`);
  panel.replaceChildren(close, el("h2", {}, s.name),
    el("p", {}, `in: ${fmtRps(s.inbound)} req/s · success ${fmtSuccess(s.inbound)} · p99 ${fmtP99(s.inbound)}`),
    el("p", {}, `called by: ${callers.join(", ") || "–"}`),
    el("p", {}, `calls: ${callees.join(", ") || "–"}`),
    el("h3", {}, "Instances"),
    el("table", { id: "instances" },
      el("thead", {}, el("tr", {}, el("th", {}, "address"), el("th", {}, "catalog"), el("th", {}, "ejection"),
        el("th", {}, "proxy"), el("th", {}, "proxy version"), el("th", {}, "config"))),
      el("tbody", {}, ...instances)));
}

function render() {
  if (!latest) return;
  if (view === "graph") drawGraph(latest); else drawTables(latest);
  drawProblems(latest);
  drawDetails(latest);
}

function select(name) {
  selected = name;
  render();
}

function setView(next) {
  view = next;
  document.getElementById("graph-view").hidden = next !== "graph";
  document.getElementById("table-view").hidden = next !== "table";
  document.getElementById("show-graph").classList.toggle("active", next === "graph");
  document.getElementById("show-table").classList.toggle("active", next === "table");
  render();
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const response = await fetch(endpoint, { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    latest = await response.json();
    polls += 1;
    const t = latest;
    status.textContent = `${t.services.length} services · ${t.edges.length} edges · ${t.proxies.length} proxies · window ${t.window_seconds} s · updated ${new Date(t.generated_unix_ms).toLocaleTimeString()}`;
    status.className = "muted";
    document.body.dataset.polls = polls;
    render();
  } catch (error) {
    status.textContent = `cannot reach the control plane (${error.message}); retrying`;
    status.className = "error";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.getElementById("filter").addEventListener("input", render);
document.getElementById("show-graph").addEventListener("click", () => setView("graph"));
document.getElementById("show-table").addEventListener("click", () => setView("table"));
poll();
