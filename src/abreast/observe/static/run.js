// The run page: a snapshot from /api/runs/RUN, redrawn whenever the journal says
// something happened (server-sent events). Every string from the run is set with
// textContent or setAttribute, never parsed as HTML.
"use strict";
const runId = document.body.dataset.run;
const api = "/api/runs/" + encodeURIComponent(runId);
const SVG = "http://www.w3.org/2000/svg";
let lastSeq = 0;
let pending = null;
window.abreastRefreshes = 0;

function el(tag, attrs, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4))
                                      : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 60) return seconds.toFixed(1) + "s";
  const m = Math.floor(seconds / 60), s = Math.round(seconds % 60);
  return m < 60 ? `${m}m${s}s` : `${Math.floor(m / 60)}h${m % 60}m`;
}

// Where a time axis over `span` seconds is marked: from 0, at the smallest step that needs
// no more than `most` marks (as report.ticks).
const STEPS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60,
               120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
function ticks(span, most = 8) {
  const step = STEPS.find(x => span / x <= most) || span;
  return Array.from({length: Math.floor(span / step + 1e-9) + 1}, (_, i) => i * step);
}

// An axis mark's time, as the report writes it (format_duration): 500ms, 1.5s, 1m30s, 2h.
function mark(t) {
  if (t < 1) return t ? `${Math.round(t * 1000)}ms` : "0s";
  if (t < 60) return `${+t.toFixed(3)}s`;
  const h = Math.floor(t / 3600), m = Math.floor(t % 3600 / 60), s = Math.round(t % 60);
  return (h ? `${h}h` : "") + (m ? `${m}m` : "") + (s ? `${s}s` : "");
}

// A time left, as precise as an estimate is (as `abreast status` says it: eta.py).
function about(seconds) {
  if (seconds < 1) return "<1s";
  if (seconds < 60) return `about ${Math.round(seconds)}s`;
  const m = Math.round(seconds / 60);
  return m < 60 ? `about ${m}m` : `about ${Math.floor(m / 60)}h${m % 60 ? `${m % 60}m` : ""}`;
}

// The rows of each wave put in an order that crosses few edges (the barycentre heuristic of
// layered drawing): a task moves near the mean row of the tasks it needs, then of those
// that need it, sweeping down and up the waves a few times. Ties keep the id order.
function orderWaves(byWave, edges) {
  const waves = [...byWave.keys()].sort((a, b) => a - b);
  const needs = new Map(), neededBy = new Map();
  for (const [a, b] of edges) {
    if (!needs.has(b)) needs.set(b, []);
    if (!neededBy.has(a)) neededBy.set(a, []);
    needs.get(b).push(a);
    neededBy.get(a).push(b);
  }
  const row = new Map();
  const place = w => byWave.get(w).forEach((t, i) => row.set(t.id, i));
  waves.forEach(place);
  const sweep = (order, near) => {
    for (const w of order) {
      const key = new Map(byWave.get(w).map((t, i) => {
        const rows = (near.get(t.id) || []).map(n => row.get(n)).filter(r => r !== undefined);
        return [t.id, rows.length ? rows.reduce((sum, r) => sum + r, 0) / rows.length : i];
      }));
      byWave.get(w).sort((p, q) => key.get(p.id) - key.get(q.id));
      place(w);
    }
  };
  for (let i = 0; i < 4; i++) {
    sweep(waves.slice(1), needs);
    sweep(waves.slice(0, -1).reverse(), neededBy);
  }
  sweep(waves.slice(1), needs);
}

// How wide `text` is drawn in the page's font at `px` pixels: boxes and label columns are
// made to fit the longest task id (up to 63 characters) rather than cut it off.
const measurer = document.createElement("canvas").getContext("2d");
function textWidth(text, px) {
  measurer.font = `${px}px ${getComputedStyle(document.body).fontFamily}`;
  return measurer.measureText(text).width;
}

const clipped = (text, most) => text.length > most ? text.slice(0, most - 1) + "\u2026" : text;

function drawDag(snap) {
  const box = document.getElementById("dag");
  const wasOpen = box.querySelector("details")?.open || false;  // kept across refreshes
  box.replaceChildren();
  if (!snap.draw) {  // too many to draw: counted, and listed, those at rest folded away
    const counts = new Map();
    for (const t of snap.tasks) counts.set(t.state, (counts.get(t.state) || 0) + 1);
    box.append(el("p", {id: "counts"}, `${snap.tasks.length} tasks: ` +
                  [...counts].map(([state, n]) => `${n} ${state}`).join(", ")));
    const atRest = t => t.state === "succeeded" || t.state === "skipped" ||
                        ((t.state === "pending" || t.state === "ready") && !t.attempts);
    const table = tasks => {
      const rows = el("table", {class: "tasks"});
      for (const t of tasks) {
        const row = el("tr", {"data-task": t.id, "data-state": t.state});
        row.append(el("td", {}, t.id), el("td", {class: "state " + t.state}, t.state));
        row.addEventListener("click", () => showLog(t.id));
        rows.append(row);
      }
      return rows;
    };
    box.append(table(snap.tasks.filter(t => !atRest(t))));
    const rest = snap.tasks.filter(atRest);
    if (rest.length) {
      const more = el("details", wasOpen ? {open: ""} : {});
      more.append(el("summary", {}, `${rest.length} succeeded, skipped or not started`),
                  table(rest));
      box.append(more);
    }
    return;
  }
  // Two lines a box: the task's id, and its state (and the lock it waits for now).
  const waitsFor = new Map((snap.waits || []).filter(w => w.until === null)
                           .map(w => [w.task, w.lock]));
  const merging = new Map((snap.queue_now || []).map(q => [q.task, q.phase]));
  const stateLine = t => t.state + (t.attempts > 1 ? ` ×${t.attempts}` : "") +
                         (waitsFor.has(t.id) ? `, waits for ${waitsFor.get(t.id)}` : "") +
                         (t.waits_for ? `: ${clipped(t.waits_for, 32)}` : "") +
                         (merging.has(t.id) ? `: ${clipped(merging.get(t.id), 32)}` : "");
  const widest = Math.max(0, ...snap.tasks.map(t => Math.max(textWidth(t.id, 12),
                                                              textWidth(stateLine(t), 11))));
  const W = Math.max(110, Math.ceil(widest) + 18), H = 34, GX = 60, GY = 16;
  const byWave = new Map();
  for (const t of snap.tasks) {
    if (!byWave.has(t.wave)) byWave.set(t.wave, []);
    byWave.get(t.wave).push(t);
  }
  orderWaves(byWave, snap.edges);
  const pos = new Map();
  let rows = 0;
  for (const [wave, tasks] of byWave) {
    tasks.forEach((t, i) => pos.set(t.id, {x: 10 + wave * (W + GX), y: 10 + i * (H + GY)}));
    rows = Math.max(rows, tasks.length);
  }
  const svg = el("svg:svg", {width: 20 + byWave.size * (W + GX), height: 20 + rows * (H + GY)});
  const critical = new Set(snap.tasks.filter(t => t.critical).map(t => t.id));
  for (const [a, b] of snap.edges) {
    const p = pos.get(a), q = pos.get(b);
    if (!p || !q) continue;
    const cls = critical.has(a) && critical.has(b) ? "edge critical" : "edge";
    svg.append(el("svg:path", {class: cls, d: `M${p.x + W} ${p.y + H / 2} C${p.x + W + GX / 2} ` +
      `${p.y + H / 2} ${q.x - GX / 2} ${q.y + H / 2} ${q.x} ${q.y + H / 2}`}));
  }
  for (const t of snap.tasks) {
    const p = pos.get(t.id);
    const g = el("svg:g", {class: "node" + (t.critical ? " critical" : ""), "data-task": t.id,
                           "data-state": t.state, transform: `translate(${p.x},${p.y})`});
    g.append(el("svg:rect", {width: W, height: H}));
    g.append(el("svg:text", {x: 9, y: H / 2 - 7}, t.id));
    g.append(el("svg:text", {x: 9, y: H / 2 + 8, class: "sub"}, stateLine(t)));
    const c = t.changes;  // what its work changed (worktrees)
    const title = el("svg:title", {}, (t.reason || t.waits_for || t.state) +
                     (c ? `\n${c.files} file${c.files === 1 ? "" : "s"} +${c.added} -${c.deleted}` : "") +
                     (t.tokens_text ? `\ntokens: ${t.tokens_text}` : ""));
    g.append(title);
    g.addEventListener("click", () => showLog(t.id));
    svg.append(g);
  }
  box.append(svg);
}

function drawTimeline(snap) {
  const box = document.getElementById("timeline");
  box.replaceChildren();
  const start = snap.run.started_at, end = snap.run.finished_at || snap.run.until || snap.now;
  // The run's own time since its start: the pauses before resumes are left out.
  const at = t => (t - start) - (snap.run.pauses || []).reduce(
    (sum, [a, b]) => sum + Math.max(0, Math.min(t, b) - Math.max(start, a)), 0);
  const span = Math.max(1, at(end)), width = 900, row = 18;
  const ids = [...new Set(snap.attempts.map(a => a.task))];
  const top = 24, bottom = top + ids.length * row;  // the time axis's marks above the rows
  const left = Math.max(60, Math.ceil(Math.max(0, ...ids.map(id => textWidth(id, 12)))) + 12);
  const vw = left + width + 20, vh = bottom + 10;  // scales down to a narrow window
  const svg = el("svg:svg", {width: vw, height: vh, viewBox: `0 0 ${vw} ${vh}`, class: "fit"});
  svg.append(stripes());
  for (const t of ticks(span)) {  // as the report's (report.ticks)
    const x = left + t / span * width;
    svg.append(el("svg:text", {class: "tick", x, y: top - 12, "text-anchor": "middle"}, mark(t)));
    svg.append(el("svg:line", {class: "tick", x1: x, y1: top - 4, x2: x, y2: bottom}));
  }
  ids.forEach((id, i) => svg.append(el("svg:text", {x: 0, y: top + i * row + row / 2}, id)));
  for (const a of snap.attempts) {
    if (!a.started_at) continue;
    const x = left + at(a.started_at) / span * width;
    const w = Math.max(2, (at(a.ended_at || snap.run.until || snap.now) - at(a.started_at)) / span * width);
    const bar = el("svg:rect", {class: "bar " + a.state, x, y: top + ids.indexOf(a.task) * row,
                                width: w, height: row - 4, "data-attempt": `${a.task}.${a.attempt}`});
    const why = a.reason ? ` (${a.reason})` : "";
    const where = a.host ? `, on ${a.host}` : "";  // a Ray node's host
    bar.append(el("svg:title", {}, `${a.task} attempt ${a.attempt}: ${a.state}${where}${why}`));
    svg.append(bar);
  }
  for (const w of snap.waits || []) {  // waits for locks, over their attempts' bars
    const i = ids.indexOf(w.task), until = w.until ?? snap.now;  // null: it waits now
    if (i < 0) continue;
    const x = left + at(w.since) / span * width, w_px = (at(until) - at(w.since)) / span * width;
    if (w_px < 1) continue;  // too short to see
    const wait = el("svg:rect", {class: "bar waiting", x, y: top + i * row, height: row - 4,
                                 width: w_px,
                                 "data-wait": `${w.task}.${w.attempt}`});
    wait.append(el("svg:title", {}, w.until === null
      ? `${w.task} attempt ${w.attempt}: waiting for the lock ${w.lock} (held by ` +
        `${w.held_by}) for ${fmt(until - w.since)}`
      : `${w.task} attempt ${w.attempt}: waited ${fmt(w.until - w.since)} for the lock ` +
        `${w.lock}, ` + (w.granted ? "then got it"
                         : w.attempt_ended ? "until its attempt ended" : "and gave up")));
    svg.append(wait);
  }
  box.append(svg);
}

// The pattern a wait for a lock is filled with: pale stripes (as the report draws it).
function stripes() {
  const defs = el("svg:defs");
  const p = el("svg:pattern", {id: "waiting", width: 6, height: 6,
                               patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)"});
  p.append(el("svg:rect", {width: 6, height: 6, fill: "#e0e0e0"}),
           el("svg:rect", {width: 3, height: 6, fill: "#bdbdbd"}));
  defs.append(p);
  return defs;
}

// What did not finish, in words, without hovering: the failed tasks with why (as the
// run's summary says it), then those that did not run for them, each reason once with the
// tasks it is (as the summary groups forty agents that failed alike); a click on a task
// that failed alone shows its log.
const DID_NOT_FINISH = ["failed", "timed_out", "blocked", "cancelled"];
const NAMED = 10;  // tasks named in one line, then "and N more"
function drawFailures(snap) {
  const box = document.getElementById("failures");
  const shown = [];
  for (const state of DID_NOT_FINISH) {
    const byReason = new Map();
    for (const t of snap.tasks.filter(t => t.state === state)) {
      const key = t.reason || "";
      if (!byReason.has(key)) byReason.set(key, []);
      byReason.get(key).push(t);
    }
    for (const tasks of byReason.values()) {
      const ids = tasks.map(t => t.id);
      const li = el("li", {"data-state": state, "data-tasks": ids.join(" ")});
      const who = el("span", {class: "who"}, ids.slice(0, NAMED).join(", ") +
                     (ids.length > NAMED ? ` and ${ids.length - NAMED} more` : ""));
      if (tasks.length === 1) who.addEventListener("click", () => showLog(tasks[0].id));
      li.append(who, el("span", {class: "state " + state}, ` (${state.replace("_", " ")})`));
      if (tasks[0].reason) li.append(el("div", {class: "why"}, tasks[0].reason));
      shown.push(li);
    }
  }
  box.replaceChildren(...shown);
  document.getElementById("failures-box").hidden = !shown.length;
}

// What the run said as warnings (a flaky check, a check that rewrote the work it checked,
// files tools generate left out, ...), as its summary and `abreast report` list them.
function drawWarnings(snap) {
  const warnings = snap.warnings || [];
  document.getElementById("warnings").replaceChildren(...warnings.map(w =>
    el("li", {"data-task": w.task || ""}, w.text)));
  document.getElementById("warnings-box").hidden = !warnings.length;
}

function list(id, items, line) {
  const box = document.getElementById(id);
  box.replaceChildren(...items.map(x => el("li", {}, line(x))));
  if (!items.length) box.append(el("li", {class: "none"}, "none"));
}

function render(snap) {
  const r = snap.run;
  // One task at a time, each task's work would be checked before the next too.
  const saved = r.busy_s + (r.checks_s || 0) - r.wall_s;
  document.getElementById("summary").textContent =
    `${r.workflow}: ${r.state}${r.stopping ? ` (${r.stopping})` : ""}, ` +
    `${fmt(r.wall_s)} wall, ${fmt(r.busy_s)} of work` +
    (r.lock_waited_s >= 0.05 ? ` (${fmt(r.lock_waited_s)} waiting for locks left out)` : "") +
    (r.checks_s ? `, ${fmt(r.checks_s)} of checks` : "") + (saved > 0 ? `, ${fmt(saved)} saved` : "") +
    (r.time_left_s != null ? `, ${about(r.time_left_s)} left` : "");
  document.getElementById("summary").setAttribute("data-state", r.state);
  document.getElementById("summary").setAttribute("data-stopping", r.stopping || "");
  // Where its work is once it ended, as its summary says it: the result branch, and
  // landed, or how to bring it in (`abreast land RUN`).
  const landing = ((r.summary && r.summary.landing) || "").split("\n").map(l => l.trim())
    .filter(l => l);
  document.getElementById("result").replaceChildren(...landing.map(l => el("li", {}, l)));
  document.getElementById("result").hidden = !landing.length;
  drawFailures(snap);
  drawWarnings(snap);
  drawDag(snap);
  drawTimeline(snap);
  // The queue as it stands ("api: checking, 12s"), then its latest steps.
  const queueNow = snap.queue_now || [];
  document.getElementById("queue-now").replaceChildren(...queueNow.map(q =>
    el("li", {"data-task": q.task}, `${q.task}: ${q.phase}, ${fmt(snap.now - q.since)}`)));
  document.getElementById("queue-now").hidden = !queueNow.length;
  // Newest first (the latest 50): "api: landed 3f2c…", "web: conflict in src/app.ts".
  list("merges", snap.merges.slice().reverse(),
       m => `${m.task ? `${m.task}: ` : ""}${m.type.replace("merge.", "").replace(/_/g, " ")}` +
            (m.detail ? ` ${m.detail}` : ""));
  list("locks", snap.locks, l => `${l.name}: token ${l.token}, held by ` +
       `${l.holder.task || l.holder.run || "abreast lock"} (pid ${l.holder.pid}); ` +
       `${l.waiters.length} waiting`);
  list("keys", snap.keys, k => `${k.fingerprint}: ${k.requests} requests, ${k.limited} limited`);
  document.getElementById("resources").textContent = resources(snap);
}

// The machine now, while the run runs, and what the resource monitor did to its cap
// (cap 4, lowered to 2 by "memory 85% >= 80%"); of an ended run, only the latter.
function resources(snap) {
  const c = snap.cap, running = snap.run.state === "running";
  const now = `cpu ${snap.resources.cpu_pct.toFixed(0)}%, ` +
              `memory ${snap.resources.memory_pct.toFixed(0)}%`;
  if (!c) return running ? now : "the run has ended";
  const times = c.lowered === 1 ? "once" : `${c.lowered} times`;
  const story = c.lowest < c.first
    ? `cap ${c.first}, lowered ${times}, to ${c.lowest} at the lowest` +
      (c.lowest_reason ? ` (${c.lowest_reason})` : "")
    : `cap ${c.first}, never lowered`;
  if (!running) return story;
  return `${now}; cap ${c.now} now` + (c.now < c.first && c.reason ? ` (${c.reason})` : "") +
         (c.lowest < c.first ? `; ${story}` : "");
}

async function refresh() {
  pending = null;
  const res = await fetch(api, {credentials: "same-origin"});
  if (!res.ok) return;
  const snap = await res.json();
  lastSeq = Math.max(lastSeq, snap.last_seq);
  render(snap);
  window.abreastRefreshes += 1;
}

function soon() { if (!pending) pending = setTimeout(refresh, 150); }

async function showLog(task) {
  const res = await fetch(`${api}/tasks/${encodeURIComponent(task)}/log`,
                          {credentials: "same-origin"});
  document.getElementById("log-task").textContent = task;
  document.getElementById("log").textContent = await res.text();
  document.getElementById("log-box").hidden = false;
  const told = await fetch(`${api}/tasks/${encodeURIComponent(task)}/prompt`,
                           {credentials: "same-origin"});
  const box = document.getElementById("prompt-box");
  if (document.getElementById("log-task").textContent !== task) return;  // another click
  document.getElementById("prompt").textContent = told.ok ? await told.text() : "";
  box.hidden = !told.ok;
}

refresh().then(() => {
  const events = new EventSource(`${api}/events?after=${lastSeq}`);
  events.onmessage = soon;
  events.addEventListener("end", () => { events.close(); refresh(); });
});
