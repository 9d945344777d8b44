// The journey page: polls the analytics process's JSON and redraws in place. No framework,
// no build step; every value from the topics is set as text, never parsed as HTML.
"use strict";

const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const EXIT_NODES = ["completed", "exited", "inactive"];
let selected = null;
let listIds = "";

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function s(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") el.textContent = v;
    else el.setAttribute(k, v);
  }
  return el;
}

const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en"));
const pct = (r) => (r === null || r === undefined ? "–" : (r * 100).toFixed(1) + "%");

function duration(ms) {
  if (ms === null || ms === undefined) return "–";
  const sec = ms / 1000;
  if (sec <= 1) return "≤ 1 s";
  if (sec < 90) return `${sec.toFixed(0)} s`;
  if (sec < 5400) return `${(sec / 60).toFixed(1)} min`;
  if (sec < 172800) return `${(sec / 3600).toFixed(1)} h`;
  return `${(sec / 86400).toFixed(1)} d`;
}

function clock(ms) {
  return ms ? new Date(ms).toLocaleTimeString("en-GB") : "–";
}

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

// -- the journey list (rebuilt only when the set of journeys changes, so focus stays put) --

function renderList(journeys) {
  const list = document.getElementById("journey-list");
  const ids = journeys.map((j) => j.journey_id).join("|");
  if (ids !== listIds) {
    const focused = document.activeElement && document.activeElement.dataset.journey;
    list.replaceChildren(
      ...journeys.map((j) =>
        h("li", {},
          h("button", {
            type: "button", "data-journey": j.journey_id,
            onclick: () => select(j.journey_id, true),
            onkeydown: (e) => moveFocus(e),
          },
          h("span", { class: "name", text: j.name }),
          h("span", { class: "count", "data-field": "active" }))),
      ),
    );
    listIds = ids;
    if (focused) {
      const again = list.querySelector(`[data-journey="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }
  for (const j of journeys) {
    const button = list.querySelector(`[data-journey="${CSS.escape(j.journey_id)}"]`);
    button.setAttribute("aria-current", String(j.journey_id === selected));
    button.setAttribute("aria-label", `${j.name}: ${j.active} customers in the journey now`);
    button.querySelector(".count").textContent = fmt(j.active);
  }
}

function moveFocus(e) {
  if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
  const buttons = [...document.querySelectorAll("#journey-list button")];
  const i = buttons.indexOf(e.target) + (e.key === "ArrowDown" ? 1 : -1);
  if (i >= 0 && i < buttons.length) { buttons[i].focus(); e.preventDefault(); }
}

function select(id, user) {
  selected = id;
  if (user) history.replaceState(null, "", `#journey=${encodeURIComponent(id)}`);
  refresh();
}

// -- one journey -----------------------------------------------------------------------------

function headline(j) {
  const item = (label, value, field) =>
    h("div", {}, h("dt", { text: label }), h("dd", { "data-field": field, text: value }));
  return h("dl", { class: "headline" },
    item("entries", fmt(j.entries), "entries"),
    item("in the journey now", fmt(j.active), "active"),
    item("completed", fmt(j.completions), "completions"),
    item("conversion", pct(j.conversion_rate), "conversion_rate"),
    item("abandonment", pct(j.abandonment_rate), "abandonment_rate"),
    item("actions", fmt(j.actions_total), "actions_total"));
}

function funnel(j) {
  const top = Math.max(1, ...j.funnel.map((f) => f.reached));
  return h("table", { id: "funnel" },
    h("caption", { text: "Instances that reached each stage; conversion from the step above" }),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col", text: "stage" }), h("th", { scope: "col", text: "", "aria-hidden": "true" }),
      h("th", { scope: "col", class: "num", text: "reached" }),
      h("th", { scope: "col", class: "num", text: "now" }),
      h("th", { scope: "col", class: "num", text: "conversion" }))),
    h("tbody", {}, j.funnel.map((f) =>
      h("tr", { "data-stage": f.stage },
        h("th", { scope: "row", text: f.stage }),
        h("td", { class: "bar-cell", "aria-hidden": "true" },
          h("div", { class: f.stage === "(entry)" ? "bar soft" : "bar",
            style: `width:${(100 * f.reached) / top}%` })),
        h("td", { class: "num", "data-field": "reached", text: fmt(f.reached) }),
        h("td", { class: "num", "data-field": "now", text: f.now === null ? "" : fmt(f.now) }),
        h("td", { class: "num", "data-field": "conversion", text: f.conversion === null ? "" : pct(f.conversion) })))));
}

function sankey(j) {
  // Columns: entry, the stages in their defined order, then the ways out. Widths are counts.
  const order = ["(entry)", ...j.stages];
  const col = (n) => (EXIT_NODES.includes(n) ? order.length : Math.max(0, order.indexOf(n)));
  const nodes = new Map();
  const node = (n) => {
    if (!nodes.has(n)) nodes.set(n, { name: n, col: col(n), in: 0, out: 0 });
    return nodes.get(n);
  };
  for (const f of j.flows) { node(f.from).out += f.count; node(f.to).in += f.count; }
  const width = 880, height = 300, pad = 14, nodeW = 12;
  const columns = order.length + 1;
  const byCol = new Map();
  for (const n of nodes.values()) {
    n.size = Math.max(n.in, n.out);
    if (!byCol.has(n.col)) byCol.set(n.col, []);
    byCol.get(n.col).push(n);
  }
  const busiest = Math.max(1, ...[...byCol.values()].map((ns) => ns.reduce((a, n) => a + n.size, 0)));
  const maxNodes = Math.max(1, ...[...byCol.values()].map((ns) => ns.length));
  const scale = (height - 40 - pad * (maxNodes - 1)) / busiest;
  for (const [c, ns] of byCol) {
    ns.sort((a, b) => order.indexOf(a.name) - order.indexOf(b.name) || a.name.localeCompare(b.name));
    let y = 20;
    for (const n of ns) {
      n.x = 10 + (c * (width - 140)) / Math.max(1, columns - 1);
      n.y = y; n.h = Math.max(3, n.size * scale); n.outY = y; n.inY = y;
      y += n.h + pad;
    }
  }
  const backs = j.flows.some((f) => nodes.get(f.to).col <= nodes.get(f.from).col);
  const svg = s("svg", { class: "sankey", viewBox: `0 0 ${width} ${height + (backs ? 60 : 0)}`, role: "img",
    "aria-label": "Paths between stages; the table below lists every transition" });
  for (const f of [...j.flows].sort((a, b) => b.count - a.count)) {
    const a = nodes.get(f.from), b = nodes.get(f.to), w = Math.max(1, f.count * scale);
    const y1 = a.outY + w / 2, y2 = b.inY + w / 2;
    a.outY += w; b.inY += w;
    const x1 = a.x + nodeW, x2 = b.x;
    const back = b.col <= a.col;
    const d = back
      ? `M${x1},${y1} C${x1 + 80},${height + 40} ${x2 - 80},${height + 40} ${x2},${y2}`
      : `M${x1},${y1} C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}`;
    const path = s("path", { class: back ? "link back" : "link", d, "stroke-width": w });
    path.append(s("title", { text: `${f.from} → ${f.to}: ${f.count}` }));
    svg.append(path);
  }
  for (const n of nodes.values()) {
    const kind = n.name === "completed" ? "node done" : EXIT_NODES.includes(n.name) ? "node exit" : "node";
    svg.append(s("rect", { class: kind, x: n.x, y: n.y, width: nodeW, height: n.h, rx: 2 }));
    svg.append(s("text", { x: n.x + nodeW + 4, y: n.y + Math.min(n.h, 24) / 2 + 4,
      text: `${n.name} ${fmt(n.size)}` }));
  }
  const table = h("table", { id: "flows" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "from" }),
      h("th", { scope: "col", text: "to" }), h("th", { scope: "col", class: "num", text: "transitions" }))),
    h("tbody", {}, j.flows.map((f) => h("tr", { "data-from": f.from, "data-to": f.to },
      h("td", { text: f.from }), h("td", { text: f.to }),
      h("td", { class: "num", "data-field": "count", text: fmt(f.count) })))));
  return [svg, h("details", {}, h("summary", { id: "flows-toggle", text: "every transition as a table" }), table)];
}

function timeInStage(j) {
  const rows = Object.entries(j.time_in_stage);
  if (!rows.length) return h("p", { class: "muted", text: "No customer has left a stage yet." });
  return h("table", { id: "time-in-stage" },
    h("caption", { text: "Time spent in a stage before leaving it (event time)" }),
    h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "stage" }),
      ...["left", "median", "p90", "p99"].map((t) => h("th", { scope: "col", class: "num", text: t })))),
    h("tbody", {}, rows.map(([stage, t]) => h("tr", { "data-stage": stage },
      h("th", { scope: "row", text: stage }),
      h("td", { class: "num", text: fmt(t.count) }),
      h("td", { class: "num", "data-field": "p50", text: duration(t.p50_ms) }),
      h("td", { class: "num", "data-field": "p90", text: duration(t.p90_ms) }),
      h("td", { class: "num", "data-field": "p99", text: duration(t.p99_ms) })))));
}

function exits(j) {
  const rows = Object.entries(j.exits);
  if (!rows.length) return h("p", { class: "muted", text: "No exits yet." });
  const label = { goal: "goal reached", exit: "exit event", inactivity: "inactivity" };
  return h("table", { id: "exits" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "reason" }),
      h("th", { scope: "col", class: "num", text: "exits" }))),
    h("tbody", {}, rows.map(([reason, n]) => h("tr", { "data-reason": reason },
      h("th", { scope: "row", class: reason === "goal" ? "" : "exit-reason", text: label[reason] || reason }),
      h("td", { class: "num", "data-field": "count", text: fmt(n) })))));
}

function actions(j) {
  const parts = [];
  if (!j.actions.length) parts.push(h("p", { class: "muted", text: "No actions yet." }));
  else parts.push(h("table", { id: "actions" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "action" }),
      h("th", { scope: "col", text: "channel" }), h("th", { scope: "col", class: "num", text: "sent" }))),
    h("tbody", {}, j.actions.map((a) => h("tr", { "data-action": a.action, "data-channel": a.channel },
      h("td", { text: a.action }), h("td", {}, h("span", { class: "pill", text: a.channel })),
      h("td", { class: "num", "data-field": "count", text: fmt(a.count) }))))));
  parts.push(h("p", { class: "muted", text: `Deferred by quiet hours, then sent: ${fmt(j.deferred)}.` }));
  if (j.suppressed === null) {
    parts.push(h("p", { class: "muted", text:
      "Suppressed decisions are not on any topic: start the analytics process with --worker-metrics to show them." }));
  } else if (!j.suppressed.length) {
    parts.push(h("p", { class: "muted", text: "No suppressed decisions reported by the workers." }));
  } else {
    parts.push(h("table", { id: "suppressed" },
      h("caption", { text: "Suppressed decisions (workers' counters, since they started)" }),
      h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "action" }),
        h("th", { scope: "col", text: "reason" }), h("th", { scope: "col", class: "num", text: "count" }))),
      h("tbody", {}, j.suppressed.map((x) => h("tr", { "data-reason": x.reason },
        h("td", { text: x.action }), h("td", { text: x.reason }),
        h("td", { class: "num", text: fmt(x.count) }))))));
  }
  return parts;
}

function lastActions(j) {
  if (!j.last_actions.length) return h("p", { class: "muted", text: "No actions yet." });
  return h("table", { id: "last-actions", class: "actions-table" },
    h("caption", { text: "Newest first, with the context the channel received" }),
    h("thead", {}, h("tr", {}, ...["time", "customer", "action", "channel", "context"].map(
      (t) => h("th", { scope: "col", text: t })))),
    h("tbody", {}, j.last_actions.map((a) => h("tr", { "data-action-id": a.action_id, "data-customer": a.customer_id },
      h("td", { text: clock(a.created_at) }),
      h("td", { "data-field": "customer", text: a.customer_id }),
      h("td", { "data-field": "action", text: a.action }),
      h("td", {}, h("span", { class: "pill", text: a.channel }),
        a.not_before ? h("span", { class: "muted", text: " after quiet hours" }) : null),
      h("td", { class: "context", "data-field": "context" },
        h("div", {}, h("b", { text: "stages " }),
          Object.entries(a.context.stages).map(([k, v]) => `${k}=${v}`).join(", ") || "–"),
        h("div", {}, h("b", { text: "recent " }),
          a.context.recent.map((r) => `${r.channel}:${r.type}`).join(" ← ") || "–"),
        Object.keys(a.parameters).length
          ? h("div", {}, h("b", { text: "parameters " }),
            Object.entries(a.parameters).map(([k, v]) => `${k}=${v}`).join(", "))
          : null)))));
}

let lastRendered = "";

function renderJourney(j) {
  const main = document.getElementById("journey");
  // Redraw only when a figure changed, and give focus back to what had it: a keyboard user
  // inside the journey must not be thrown out by the next poll.
  const { generated_at: _, ...figures } = j;
  const key = JSON.stringify(figures);
  if (key === lastRendered) return;
  lastRendered = key;
  const focusedId = main.contains(document.activeElement) ? document.activeElement.id : "";
  const openDetails = main.querySelector("details") && main.querySelector("details").open;
  main.replaceChildren(
    h("h2", { id: "journey-title", text: `${j.name}` }, h("span", { class: "muted", text: ` (${j.journey_id})` })),
    headline(j),
    h("div", { class: "grid" },
      h("section", { "aria-labelledby": "funnel-title" }, h("h2", { id: "funnel-title", text: "Funnel" }), funnel(j)),
      h("section", { "aria-labelledby": "tis-title" }, h("h2", { id: "tis-title", text: "Time in stage" }), timeInStage(j))),
    h("section", { "aria-labelledby": "paths-title" }, h("h2", { id: "paths-title", text: "Paths between stages" }), sankey(j)),
    h("div", { class: "grid" },
      h("section", { "aria-labelledby": "exits-title" }, h("h2", { id: "exits-title", text: "Exits by reason" }), exits(j)),
      h("section", { "aria-labelledby": "actions-title" }, h("h2", { id: "actions-title", text: "Actions by channel" }), actions(j))),
    h("section", { "aria-labelledby": "last-title" }, h("h2", { id: "last-title", text: "Last 20 actions" }), lastActions(j)),
  );
  const details = main.querySelector("details");
  if (details && openDetails) details.open = true;
  main.dataset.journey = j.journey_id;
  if (focusedId && document.getElementById(focusedId)) document.getElementById(focusedId).focus();
}

function renderDeadLetters(d) {
  const box = document.getElementById("dead-letters");
  if (!d.total) { box.replaceChildren(h("p", { class: "muted", text: "none" })); return; }
  box.replaceChildren(
    h("table", { id: "dead-letter-classes" }, h("tbody", {}, Object.entries(d.by_class).map(([c, n]) =>
      h("tr", { "data-class": c }, h("td", { text: c }), h("td", { class: "num", text: fmt(n) }))))),
    h("p", { class: "context", text: `last: ${d.last[0].class}: ${d.last[0].message}` }));
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const overview = await getJSON("/api/journeys");
    const ids = overview.journeys.map((j) => j.journey_id);
    const fromHash = new URLSearchParams(location.hash.slice(1)).get("journey");
    if (!selected) selected = ids.includes(fromHash) ? fromHash : ids[0] || null;
    renderList(overview.journeys);
    renderDeadLetters(overview.dead_letters);
    const st = overview.stream;
    status.textContent = `${fmt(st.events_per_second)} records/s · lag ${fmt(st.lag)} · updated ${clock(overview.generated_at)}`;
    if (selected) renderJourney(await getJSON(`/api/journeys/${encodeURIComponent(selected)}`));
  } catch (err) {
    status.textContent = `not updated: ${err.message}`;
  }
}

window.addEventListener("hashchange", () => {
  const id = new URLSearchParams(location.hash.slice(1)).get("journey");
  if (id && id !== selected) select(id, false);
});
refresh();
setInterval(refresh, POLL_MS);
