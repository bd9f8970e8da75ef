(function () {
"use strict";
performance.mark("tje-start");
const D = JSON.parse(document.getElementById("tje-index").textContent);
const main = document.getElementById("main"), bar = document.getElementById("bar");
const tip = document.getElementById("tje-tip"), live = document.getElementById("tje-live");
const SEG = ["reasoning", "answer", "header"];
// Threshold colours come from the payload (tje_hf.analysis.style.palette: the report's plots use the same);
// an unknown name or a value that is not a #rrggbb colour gets grey.
const own = (o, k) => o !== null && typeof o === "object" && Object.prototype.hasOwnProperty.call(o, k);
const tauColor = t => { const c = own(D.colors, t.name) ? D.colors[t.name] : null;
  return typeof c === "string" && /^#[0-9a-fA-F]{6}$/.test(c) ? c : "#57606a"; };
const tauLabel = t => own(D.labels, t.name) && typeof D.labels[t.name] === "string" ? D.labels[t.name] : String(t.name);
const recon = t => own(D.reconstructed, t.name) ? String(D.reconstructed[t.name]) : null;
const G = D.gate_run && typeof D.gate_run === "object" ? D.gate_run : null;  // a policy: gate run (its own tau)
const isRun = t => G !== null && t.name === "run" && D.thresholds[0] === t;
const STOPS = D.scale.stops.map(c => c.map(Number)), HMAX = Number(D.scale.max), CHUNK = Number(D.chunk) || 512;
const byId = new Map(D.problems.map((p, i) => [p.id, i]));
// Every value from the run that reaches innerHTML goes through esc() (or fmt(), which prints numbers only),
// whatever its JSON type: a crafted records.jsonl may hold markup where a number is expected (index, step, counts).
const esc = s => String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const fmt = (x, d = 3) => (typeof x !== "number" || !isFinite(x)) ? "—" : x.toFixed(d);
const mark = c => c === true ? '<span class="ok" title="correct">✓</span>' : c === false
  ? '<span class="bad" title="incorrect">✗</span>' : '<span class="unk" title="unknown (unparseable)">?</span>';
const markWord = c => c === true ? "correct" : c === false ? "incorrect" : "unknown";
const sigLabel = D.label + " (" + D.unit + ")";

// The colour scale: the same piecewise-linear interpolation as tje_hf.viewer.payload.entropy_color.
function color(h) {
  if (typeof h !== "number" || !isFinite(h)) return null;
  let t = h / HMAX; t = t < 0 ? 0 : t > 1 ? 1 : t;
  const n = STOPS.length, x = t * (n - 1);
  const i = Math.min(Math.floor(x), n - 2), f = x - i, a = STOPS[i], b = STOPS[i + 1];
  return "rgb(" + Math.floor(a[0] + (b[0] - a[0]) * f + 0.5) + "," + Math.floor(a[1] + (b[1] - a[1]) * f + 0.5)
    + "," + Math.floor(a[2] + (b[2] - a[2]) * f + 0.5) + ")";
}
function f16(bits) {  // an IEEE half-precision bit pattern -> its exact value
  const s = bits & 0x8000 ? -1 : 1, e = (bits >> 10) & 0x1f, m = bits & 0x3ff;
  if (e === 0) return s * m * Math.pow(2, -24);
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * Math.pow(2, e - 15);
}
function legendHtml() {
  const grad = "linear-gradient(90deg," + STOPS.map((c, i) => "rgb(" + c.join(",") + ") "
    + (100 * i / (STOPS.length - 1)).toFixed(2) + "%").join(",") + ")";
  const ticks = [];
  for (let v = 0; v < HMAX - 0.45; v += 1) ticks.push([v, String(v)]);
  ticks.push([HMAX, HMAX.toFixed(2)]);
  return '<div class="legend" role="img" aria-label="Colour scale: ' + esc(sigLabel) + ' from 0 (lightest, confident) to '
    + HMAX.toFixed(2) + ' bits (darkest, uncertain)"><span>' + esc(D.label) + '</span><div><div class="grad" style="background:'
    + grad + '"></div><div class="ticks">' + ticks.map(([v, l]) => '<span style="left:' + (100 * v / HMAX).toFixed(2)
    + '%">' + l + '</span>').join("") + '</div></div><span class="muted">bits</span></div>';
}
function segLegendHtml() {
  return '<div class="seglegend" aria-label="segments"><span class="badge b0">reasoning</span>'
    + '<span class="badge b1">answer</span><span class="badge b2">header</span>'
    + '<span class="muted">answer tokens underlined</span></div>';
}

// ------------------------------------------------------------------ index
const tauList = D.thresholds.filter(t => t.tau !== null && !isRun(t));
function stopsOf(p) {
  if (G) return p.gate ? (p.gate.stopped ? 1 : 0) : null;  // the run's own decision
  return p.h1 === null ? null : tauList.filter(t => p.h1 <= t.tau).length;
}
function totalTokens(p) { return p.steps.reduce((a, s) => a + (Number(s.n) || 0), 0); }
const SORT_KEYS = {
  index: p => p.index, id: p => p.id, correct: p => p.steps.length ? p.steps.map(s => s.correct === true ? 2
    : s.correct === false ? 0 : 1).reduce((a, v) => a * 3 + v, 0) : null,
  h1: p => p.h1, stops: p => stopsOf(p), tokens: p => totalTokens(p),
};
let sortState = {key: "index", dir: 1}, lastProblem = null;
function sorted() {
  const f = SORT_KEYS[sortState.key], d = sortState.dir;
  const rows = D.problems.map((p, i) => [i, f(p)]);
  rows.sort((a, b) => {
    const x = a[1], y = b[1];
    if (x === null || x === undefined) return (y === null || y === undefined) ? a[0] - b[0] : 1;
    if (y === null || y === undefined) return -1;
    const c = typeof x === "string" ? x.localeCompare(y, undefined, {numeric: true}) : x - y;
    return c ? c * d : a[0] - b[0];
  });
  return rows.map(r => r[0]);
}
let gaugeLo = 0, gaugeHi = 1;
const gaugeOf = p => G ? (p.gate ? p.gate.u : null) : p.h1;
const gaugeTaus = () => G ? (typeof G.tau === "number" ? [{name: "run", tau: G.tau}] : []) : tauList;
(function () {
  const vs = D.problems.map(gaugeOf).concat(gaugeTaus().map(t => t.tau)).filter(v => typeof v === "number");
  if (vs.length) { gaugeLo = Math.min(...vs); gaugeHi = Math.max(...vs); }
  const pad = Math.max((gaugeHi - gaugeLo) * 0.06, 0.02); gaugeLo -= pad; gaugeHi += pad;
})();
const gx = v => (100 * (v - gaugeLo) / (gaugeHi - gaugeLo)).toFixed(2) + "%";
function gaugeHtml(h) {
  if (typeof h !== "number") return "";
  return '<span class="gauge" aria-hidden="true">' + gaugeTaus().map(t => '<i style="left:' + gx(t.tau)
    + ';background:' + tauColor(t) + '"></i>').join("") + '<b style="left:' + gx(h) + '"></b></span>';
}
function stopCell(p, st) {
  if (G) {
    if (!p.gate) return "—";
    return p.gate.stopped ? '<b>stopped after step 1</b>' : 'ran all ' + esc(G.n_steps) + ' steps';
  }
  const stopNames = tauList.filter(t => p.h1 !== null && p.h1 <= t.tau).map(t => t.name).join(", ");
  return st === null ? "—" : st + " of " + tauList.length + (stopNames ? ' <span class="muted">(' + esc(stopNames) + ')</span>' : "");
}
function rowHtml(i) {
  const p = D.problems[i], st = stopsOf(p);
  const marks = p.steps.map(s => mark(s.correct)).join("");
  const marksLabel = p.steps.map(s => "step " + s.step + " " + markWord(s.correct)).join(", ");
  const link = p.embedded ? '<a href="#p=' + encodeURIComponent(p.id) + '">' + esc(p.id) + '</a>'
    : esc(p.id) + ' <span class="muted">(tokens not embedded)</span>';
  return '<tr data-i="' + i + '"><td class="num">' + esc(p.index ?? "") + '</td><td>' + link + '</td><td class="marks" aria-label="'
    + esc(marksLabel) + '">' + marks + '</td><td class="num" style="white-space:nowrap">' + fmt(p.h1) + gaugeHtml(gaugeOf(p)) + '</td><td>'
    + stopCell(p, st) + '</td><td class="num">' + p.steps.map(s => esc(s.n ?? "—")).join(" · ") + '</td><td class="num">' + totalTokens(p) + '</td></tr>';
}
const COLS = [["index", "#", "num"], ["id", "problem", ""], ["correct", "correct by step", ""],
  ["h1", "step-1 mean " + D.label + " (bits)", "num"], ["stops", G ? "the run's gate" : "gate stops after step 1", ""],
  ["tokens", "tokens per step", "num", true], ["tokens", "total tokens", "num"]];
function showIndex() {
  teardown();
  document.title = "tje viewer: " + (D.model || "run") + " on " + (D.task || "?");
  bar.innerHTML = '<span class="brand">tje viewer</span><span>' + esc(D.model || "?") + ' · ' + esc(D.task || "?")
    + ' · ' + D.problems.length + ' problems</span><span class="muted">' + esc(D.run) + '</span>';
  const nStop = t => isRun(t) ? D.problems.filter(p => p.gate && p.gate.stopped).length
    : D.problems.filter(p => p.h1 !== null && p.h1 <= t.tau).length;
  const noteOf = t => [t.note || "", recon(t) ? "reconstruction: " + recon(t) : ""].filter(Boolean).join("; ");
  const anyNote = D.thresholds.some(noteOf);
  const kind = G ? "the run's threshold" : D.threshold_kind === "in-sample" ? "thresholds calibrated in-sample on this run" : "thresholds";
  let h = '<h1 tabindex="-1">Problems</h1><div class="cards"><div class="card"><table class="tbl" id="taus"><caption>' + esc(kind) + '</caption>'
    + '<thead><tr><th>threshold</th><th class="num">τ' + (G ? "" : " (bits)") + '</th><th class="num">stops after step 1</th>' + (anyNote ? '<th>note</th>' : '')
    + '</tr></thead><tbody>';
  D.thresholds.forEach(t => {
    const unit = isRun(t) ? ' <span class="muted">' + esc(G.unit) + '</span>' : "";
    h += '<tr data-name="' + esc(t.name) + '"><td><span class="sw" style="background:' + tauColor(t) + '"></span>' + esc(tauLabel(t))
      + (recon(t) ? ' <span class="recon" title="' + esc(recon(t)) + '">reconstruction</span>' : "")
      + '</td><td class="num">' + fmt(t.tau) + unit + '</td><td class="num">' + (t.tau === null ? "—" : nStop(t) + " of " + D.problems.length
      + (isRun(t) ? " (the run's decisions)" : "")) + '</td>'
      + (anyNote ? '<td class="note">' + esc(noteOf(t)) + '</td>' : '') + '</tr>';
  });
  if (!D.thresholds.length) h += '<tr><td colspan="3" class="muted">no thresholds</td></tr>';
  h += '</tbody></table><p class="note">' + (G ? "The τ above is " : "Thresholds ") + esc(D.threshold_note) + '. The gate stops after step 1 when the step-1 mean '
    + (G ? esc(G.column) + ' (segment ' + esc(G.segment) + (G.negated ? ', negated' : '') + ')' : esc(D.label) + ' (' + esc(D.signal) + ')')
    + ' ≤ τ.</p></div></div>';
  h += '<table class="tbl idx" id="idx"><caption class="sr-only">Problems; column headers are buttons that sort the table</caption><thead><tr>';
  COLS.forEach(([key, label, cls, nosort]) => {
    if (nosort) { h += '<th class="' + cls + '" scope="col">' + esc(label) + '</th>'; return; }
    h += '<th class="' + cls + '" scope="col" data-key="' + key + '" aria-sort="none"><button type="button" class="sort" data-key="'
      + key + '">' + esc(label) + '<span class="arrow" aria-hidden="true"></span></button></th>';
  });
  h += '</tr></thead><tbody></tbody></table>';
  main.innerHTML = h;
  fillRows();
  main.querySelector("#idx thead").addEventListener("click", e => {
    const b = e.target.closest("button.sort"); if (!b) return;
    const key = b.dataset.key;
    sortState = sortState.key === key ? {key, dir: -sortState.dir} : {key, dir: 1};
    fillRows();
  });
  const back = lastProblem !== null && main.querySelector('tr[data-i="' + lastProblem + '"] a');
  if (back) { back.focus(); } else { window.scrollTo(0, 0); }
}
function fillRows() {
  const tb = main.querySelector("#idx tbody");
  tb.innerHTML = sorted().map(rowHtml).join("");
  main.querySelectorAll("#idx thead th[data-key]").forEach(th => {
    const on = th.dataset.key === sortState.key && th.querySelector("button");
    th.setAttribute("aria-sort", on ? (sortState.dir > 0 ? "ascending" : "descending") : "none");
    const arrow = th.querySelector(".arrow"); if (arrow) arrow.textContent = on ? (sortState.dir > 0 ? "▲" : "▼") : "";
  });
}

// ------------------------------------------------------------------ problem view
let cur = null;
function teardown() {
  hideTip();
  if (!cur) return;
  if (cur.io) cur.io.disconnect();
  if (cur.idle) (window.cancelIdleCallback || clearTimeout)(cur.idle);
  cur = null;
}
const textCache = new Map();
function tokText(V, id) { const s = V[id]; return (s === undefined || s === "") ? "⟨" + id + "⟩" : s; }
function tokHtml(V, id) {
  let s = textCache.get(id);
  if (s === undefined) { s = esc(tokText(V, id)).replace(/\n/g, "↵\n"); textCache.set(id, s); }
  return s;
}
const visible = s => s.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥");
function chunkBounds(S, V) {
  const out = []; let a = 0;
  for (let i = 0; i < S.n; i++) {
    const len = i - a + 1;
    if ((len >= CHUNK && tokText(V, S.tok[i]).endsWith("\n")) || len >= 2 * CHUNK) { out.push([a, i + 1]); a = i + 1; }
  }
  if (a < S.n) out.push([a, S.n]);
  return out;
}
function renderChunk(st, c) {
  const ch = st.chunks[c];
  if (ch.done) return;
  const S = st.S, V = cur.V, seg = S.seg;
  let h = "";
  for (let i = ch.a; i < ch.b; i++) {
    const g = seg.charCodeAt(i) - 48;
    if (i === 0 || seg.charCodeAt(i - 1) !== seg.charCodeAt(i)) h += '<span class="badge b' + g + '">' + SEG[g] + '</span>';
    const col = color(S.h[i]);
    h += '<span class="t s' + g + (col ? "" : " nan") + '" tabindex="' + (i === st.roving ? 0 : -1) + '" data-i="' + i + '"'
      + (col ? ' style="background:' + col + '"' : "") + '>' + tokHtml(V, S.tok[i]) + '</span>';
  }
  ch.el.innerHTML = h;
  ch.el.classList.remove("ph"); ch.el.classList.add("r");
  ch.el.style.height = "";
  ch.el.style.containIntrinsicSize = "auto " + ch.est + "px";
  ch.done = true; cur.pending--;
  if (c === 0) st.toks.removeAttribute("tabindex");
  if (cur.io) cur.io.unobserve(ch.el);
}
function chunkOf(st, i) {
  let lo = 0, hi = st.chunks.length - 1;
  while (lo < hi) { const m = (lo + hi + 1) >> 1; if (st.chunks[m].a <= i) lo = m; else hi = m - 1; }
  return lo;
}
function tokenEl(st, i) {
  const c = chunkOf(st, i); renderChunk(st, c);
  return st.chunks[c].el.querySelector('[data-i="' + i + '"]');
}
function scheduleIdle() {
  const ric = window.requestIdleCallback || (cb => setTimeout(() => cb({timeRemaining: () => 8}), 16));
  const me = cur;
  const work = dl => {
    if (cur !== me) return;
    while (cur.queue.length && dl.timeRemaining() > 2) { const [s, c] = cur.queue.shift(); renderChunk(cur.steps[s], c); }
    while (cur.queue.length && cur.steps[cur.queue[0][0]].chunks[cur.queue[0][1]].done) cur.queue.shift();
    if (cur.queue.length) cur.idle = ric(work, {timeout: 300});
    else { cur.idle = null; window.__tjeAllRendered = performance.now(); document.documentElement.dataset.allRendered = "1"; }
  };
  cur.idle = ric(work, {timeout: 300});
}
function measureChars(toks) {  // characters per line and pixels per line of the token font
  const probe = document.createElement("span"); probe.textContent = "0123456789".repeat(10);
  toks.appendChild(probe);
  const w = probe.getBoundingClientRect().width / 100, lh = parseFloat(getComputedStyle(toks).lineHeight) || 28;
  probe.remove();
  return [Math.max(20, Math.floor(toks.clientWidth / (w || 9))), lh];
}
function loadProblem(i) {
  const el = document.getElementById("tje-p-" + i);
  return el ? JSON.parse(el.textContent) : null;
}
function runGateRow(p, t) {
  const last = p.steps[p.steps.length - 1], first = p.steps[0], g = p.gate;
  const sw = '<span class="sw" style="background:' + tauColor(t) + '"></span>';
  if (!g) return '<tr><td>' + sw + esc(tauLabel(t)) + '</td><td class="num">' + fmt(t.tau) + '</td><td colspan="3" class="muted">no record of the decision</td></tr>';
  const res = g.stopped ? first : last;
  return '<tr class="run"><td>' + sw + esc(tauLabel(t)) + '</td><td class="num">' + fmt(t.tau) + '</td><td>' + fmt(g.u)
    + (typeof g.u === "number" ? (g.stopped ? " ≤ " : " > ") + fmt(t.tau) : "") + '</td><td><b>'
    + (g.stopped ? "stopped after step 1" : "ran all " + esc(G.n_steps) + " steps") + '</b> <span class="muted">(the run\'s decision)</span></td><td>'
    + (res ? 'answer ' + esc(res.answer ?? "none") + ' (step ' + esc(res.step) + ') ' + mark(res.correct) : "—") + '</td></tr>';
}
function gateRows(p) {
  const last = p.steps[p.steps.length - 1], first = p.steps[0];
  const full = p.policy === "all" || p.steps.length > 1;
  return D.thresholds.map(t => {
    if (isRun(t)) return runGateRow(p, t);
    const sw = '<span class="sw" style="background:' + tauColor(t) + '"></span>';
    const name = esc(tauLabel(t)) + (recon(t) ? ' <span class="recon" title="' + esc(recon(t)) + '">reconstruction</span>' : "");
    if (t.tau === null || p.h1 === null) return '<tr><td>' + sw + name + '</td><td class="num">' + fmt(t.tau)
      + '</td><td colspan="3" class="muted">' + (p.h1 === null ? "no step-1 value" : esc(t.note || "no threshold")) + '</td></tr>';
    const stop = p.h1 <= t.tau;
    const res = stop ? first : (full ? last : null);
    return '<tr><td>' + sw + name + '</td><td class="num">' + fmt(t.tau) + '</td><td>' + fmt(p.h1) + (stop ? " ≤ " : " > ") + fmt(t.tau)
      + '</td><td><b>' + (stop ? "stop after step 1" : "run all " + esc(D.n_steps_config || p.n_steps) + " steps") + '</b></td><td>'
      + (res ? 'answer ' + esc(res.answer ?? "none") + ' (step ' + esc(res.step) + ') ' + mark(res.correct) : '<span class="muted">not run (gated run)</span>')
      + '</td></tr>';
  }).join("");
}
function showProblem(i) {
  teardown();
  performance.mark("tje-open");
  const p = D.problems[i], data = loadProblem(i);
  performance.mark("tje-parsed");
  lastProblem = i;
  document.title = "Problem " + p.id + " · tje viewer";
  const prev = i > 0 ? '<a href="#p=' + encodeURIComponent(D.problems[i - 1].id) + '">‹ previous</a>' : "";
  const next = i + 1 < D.problems.length ? '<a href="#p=' + encodeURIComponent(D.problems[i + 1].id) + '">next ›</a>' : "";
  bar.innerHTML = '<nav class="nav" aria-label="problems"><a href="#">← all problems</a>' + prev + next + '</nav>'
    + '<div class="steps" role="group" aria-label="jump to step">' + p.steps.map((s, k) => '<button type="button" class="btn" data-jump="'
    + k + '">step ' + esc(s.step) + '</button>').join("") + '</div>' + legendHtml() + segLegendHtml();
  let h = '<h1 tabindex="-1">Problem ' + esc(p.id) + '</h1><p class="meta">' + esc(D.task || "") + (p.index !== null ? ' #' + esc(p.index) : "")
    + ' · gold answer <b>' + esc(p.gold ?? "?") + '</b> · ' + p.steps.length + ' step' + (p.steps.length === 1 ? "" : "s") + ' recorded (policy '
    + esc(p.policy || "?") + ') · model ' + esc(D.model || "?") + '</p>';
  if (p.question != null) {
    h += '<section aria-labelledby="q-h"><h2 id="q-h">Question</h2><blockquote class="question">' + esc(p.question) + '</blockquote>'
      + (p.prompt != null ? '<details><summary>the rendered step-1 prompt</summary><pre class="prompt">' + esc(p.prompt) + '</pre></details>' : "")
      + '</section>';
  }
  h += '<section aria-labelledby="gate-h"><h2 id="gate-h">Gate</h2><p class="note">' + (G
    ? "This run (policy gate) used τ = <b>" + fmt(G.tau) + "</b> on the step-1 mean " + esc(G.column) + " (" + esc(G.unit)
      + (G.negated ? ", negated" : "") + ", segment " + esc(G.segment) + "): H₁ = <b>" + fmt(p.gate ? p.gate.u : null) + "</b>. "
      + "The first row is what the run did. "
    : D.threshold_kind === "in-sample" ? "Thresholds calibrated in-sample on this run (for inspection, not an evaluation). " : "")
    + 'Step-1 mean ' + esc(D.label) + ' H₁ = <b>' + fmt(p.h1)
    + '</b> bits. Stop after step 1 when H₁ ≤ τ, else run all steps and return the last answer.</p>'
    + '<table class="tbl gate"><thead><tr><th>threshold</th><th class="num">τ</th><th>H₁ vs τ</th><th>decision</th><th>returned</th></tr></thead><tbody>'
    + (D.thresholds.length ? gateRows(p) : '<tr><td colspan="5" class="muted">no thresholds</td></tr>') + '</tbody></table></section>';
  p.steps.forEach((s, k) => {
    const m = s.means, cnt = s.counts || {};
    const meanTxt = ["all", "reasoning", "answer"].map(g => g + " <b>" + fmt(m[g]) + "</b>" + (cnt[g] !== undefined ? ' <span class="muted">(' + esc(cnt[g]) + ')</span>' : "")).join(" · ");
    h += '<section class="step" data-s="' + k + '" aria-labelledby="st-' + k + '"><div class="stephead"><h2 id="st-' + k + '">Step ' + esc(s.step) + '</h2>'
      + '<span class="meta">answer <b>' + esc(s.answer ?? "none") + '</b> ' + mark(s.correct) + ' · ' + esc(s.n ?? 0) + ' tokens · stop: ' + esc(s.stop || "?")
      + '</span><span class="meta">mean ' + esc(D.label) + ' (bits): ' + meanTxt + '</span></div>';
    const S = data && data.steps[k];
    if (!S || !S.n) { h += '<p class="muted">' + (data ? "No per-token trace recorded for this step (signals.trace was off)." : "Tokens not embedded in this file.") + '</p></section>'; return; }
    h += '<div class="strip" aria-hidden="true"></div><div class="toks" tabindex="0" role="group" aria-label="Step ' + esc(s.step) + ' tokens, ' + esc(S.n)
      + '. Arrow keys move between tokens; Home and End jump to the first and last."></div></section>';
  });
  main.innerHTML = h;
  cur = {i, V: data ? data.vocab : {}, steps: [], queue: [], pending: 0, io: null, idle: null};
  window.__tjeReady = undefined; window.__tjeAllRendered = undefined;
  delete document.documentElement.dataset.ready; delete document.documentElement.dataset.allRendered;
  const sections = main.querySelectorAll("section.step");
  let metrics = null;
  sections.forEach(sec => {
    const k = +sec.dataset.s, S = data && data.steps[k];
    const st = {k, S, roving: 0, chunks: [], toks: sec.querySelector(".toks")};
    cur.steps.push(st);
    if (!st.toks) return;
    if (!metrics) metrics = measureChars(st.toks);
    const [cpl, lh] = metrics;
    const runs = []; let a = 0;
    for (let j = 1; j <= S.n; j++) if (j === S.n || S.seg[j] !== S.seg[a]) { runs.push([S.seg.charCodeAt(a) - 48, a, j]); a = j; }
    sec.querySelector(".strip").innerHTML = runs.map(([g, x, y]) => '<span class="g' + g + '" style="width:' + (100 * (y - x) / S.n)
      + '%" title="' + SEG[g] + ': tokens ' + (x + 1) + '–' + y + '"></span>').join("");
    const frag = document.createDocumentFragment();
    chunkBounds(S, cur.V).forEach(([x, y], c) => {
      let chars = 0, lines = 1;
      for (let j = x; j < y; j++) { const t = tokText(cur.V, S.tok[j]); chars += t.length + 0.3; if (t.indexOf("\n") >= 0) lines++; }
      const est = Math.ceil((chars / cpl + lines) * lh);
      const el = document.createElement("div"); el.className = "chunk ph"; el.style.height = est + "px"; el.dataset.c = c;
      frag.appendChild(el);
      st.chunks.push({a: x, b: y, el, est, done: false}); cur.pending++; if (c) cur.queue.push([k, c]);
    });
    st.toks.appendChild(frag);
  });
  performance.mark("tje-built");
  // First paint: the first chunk of step 1; the IntersectionObserver adds what is near the viewport.
  // Idle time renders the first chunk of every other step next (the keyboard's entry points), then the rest.
  const firsts = cur.steps.filter(st => st.chunks.length).map(st => [st.k, 0]);
  if (firsts.length) renderChunk(cur.steps[firsts[0][0]], 0);
  cur.queue = firsts.slice(1).concat(cur.queue);
  performance.mark("tje-rendered");
  const io = new IntersectionObserver(es => {
    for (const e of es) if (e.isIntersecting) { const sec = e.target.closest("section.step"); renderChunk(cur.steps[+sec.dataset.s], +e.target.dataset.c); }
  }, {rootMargin: "1200px 0px"});
  cur.io = io;
  cur.steps.forEach(st => st.chunks.forEach(ch => { if (!ch.done) io.observe(ch.el); }));
  scheduleIdle();
  window.scrollTo(0, 0);
  main.querySelector("h1").focus({preventScroll: true});
  const me = cur;
  requestAnimationFrame(() => requestAnimationFrame(() => {
    if (cur !== me) return;
    window.__tjeReady = performance.now(); document.documentElement.dataset.ready = "1";
  }));
}

// ------------------------------------------------------------------ tooltip and keyboard
function stepOf(t) { const sec = t.closest("section.step"); return sec && cur ? cur.steps[+sec.dataset.s] : null; }
function describe(st, i) {
  const S = st.S, V = cur.V, id = S.tok[i], g = S.seg.charCodeAt(i) - 48, A = S.A || 0;
  const alts = [];
  let mass = 0;
  for (let r = 0; r < A; r++) {
    const aid = S.alt[i * A + r], p = Math.exp(f16(S.lp16[i * A + r]));
    mass += p; alts.push({id: aid, text: tokText(V, aid), p, chosen: aid === id});
  }
  return {id, text: tokText(V, id), g, h: S.h[i], alts, mass, A, n: S.n};
}
function showTip(t) {
  const st = stepOf(t); if (!st || !st.S) return;
  const i = +t.dataset.i, d = describe(st, i);
  let h = '<div><span class="tok">' + esc(visible(d.text)) + '</span> <span class="muted">id ' + esc(d.id) + ' · token ' + (i + 1) + ' of ' + esc(d.n)
    + ' · ' + SEG[d.g] + '</span></div><div>' + esc(D.label) + ': <b class="h">' + fmt(d.h) + '</b> bits</div>';
  if (d.A) {
    h += '<table aria-hidden="true"><tbody>' + d.alts.map((a, r) => '<tr class="alt' + (a.chosen ? " chosen" : "") + '"><td class="muted">' + (r + 1)
      + '</td><td class="a">' + esc(visible(a.text)) + '</td><td class="p">' + a.p.toFixed(3) + '</td><td class="pb"><span style="width:'
      + Math.min(100, 100 * a.p).toFixed(1) + '%"></span></td></tr>').join("") + '</tbody></table><div class="foot">top ' + esc(d.A)
      + ' alternatives (full-vocabulary probability); together ' + d.mass.toFixed(3) + (d.alts.some(a => a.chosen) ? "" : "; the generated token is not among them") + '</div>';
  } else {
    h += '<div class="foot">no alternatives recorded (signals.trace_alternatives = 0)</div>';
  }
  tip.innerHTML = h; tip.hidden = false;
  tip.style.left = "0px"; tip.style.top = "0px";
  // Below the token, else above, else beside it: never over the token itself.
  const r = t.getBoundingClientRect(), w = tip.offsetWidth, ht = tip.offsetHeight, W = innerWidth, H = innerHeight;
  let x = Math.max(8, Math.min(r.left, W - w - 8)), y;
  if (r.bottom + 6 + ht <= H - 8) y = r.bottom + 6;
  else if (r.top - 6 - ht >= 8) y = r.top - 6 - ht;
  else {
    y = Math.max(8, Math.min(r.top + r.height / 2 - ht / 2, H - ht - 8));
    x = r.right + 12 + w <= W - 8 ? r.right + 12 : Math.max(8, r.left - 12 - w);
  }
  tip.style.left = x + "px"; tip.style.top = y + "px";
}
function hideTip() { tip.hidden = true; }
function announce(t) {
  const st = stepOf(t); if (!st || !st.S) return;
  const i = +t.dataset.i, d = describe(st, i);
  let s = "Token " + JSON.stringify(d.text) + ", " + (i + 1) + " of " + d.n + ", " + SEG[d.g] + ", entropy " + fmt(d.h) + " bits.";
  if (d.A) s += " Alternatives: " + d.alts.map(a => JSON.stringify(a.text) + " " + a.p.toFixed(3)).join(", ") + ".";
  live.textContent = s;
}
function focusToken(st, j) {
  const el = tokenEl(st, Math.max(0, Math.min(st.S.n - 1, j)));
  if (el) el.focus();
}
function vertical(st, t, dir) {  // the token above or below, at the same horizontal position
  const lh = parseFloat(getComputedStyle(st.toks).lineHeight) || 28;
  let r = t.getBoundingClientRect();
  if (dir > 0 && r.bottom + lh > innerHeight - 4) { window.scrollBy(0, lh * 3); r = t.getBoundingClientRect(); }
  if (dir < 0 && r.top - lh < 90) { window.scrollBy(0, -lh * 3); r = t.getBoundingClientRect(); }
  const y = dir > 0 ? r.bottom + lh * 0.5 : r.top - lh * 0.5;
  const box = st.toks.getBoundingClientRect();
  const at = x => { const e = document.elementFromPoint(x, y), u = e && e.closest && e.closest(".t");
    return u && u !== t && stepOf(u) === st ? +u.dataset.i : null; };
  // Nearest token on that line: leftwards first (the line may be shorter), then rightwards (past a label).
  for (let x = r.left + 2; x >= box.left; x -= 6) { const j = at(x); if (j !== null) return j; }
  for (let x = r.left + 8; x <= box.right; x += 6) { const j = at(x); if (j !== null) return j; }
  return +t.dataset.i + dir;
}
main.addEventListener("mouseover", e => { const t = e.target.closest && e.target.closest(".t"); if (t) showTip(t); });
main.addEventListener("mouseout", e => {
  const t = e.target.closest && e.target.closest(".t");
  if (!t || (e.relatedTarget && e.relatedTarget.closest && e.relatedTarget.closest(".t"))) return;
  const f = document.activeElement;
  if (f && f.classList && f.classList.contains("t")) showTip(f); else hideTip();
});
main.addEventListener("focusin", e => {
  const t = e.target;
  if (t.classList && t.classList.contains("toks") && cur) {  // Tab reached a step whose first chunk is not rendered yet
    const st = cur.steps[+t.closest("section.step").dataset.s]; if (st && st.chunks.length) focusToken(st, st.roving);
    return;
  }
  if (!t.classList || !t.classList.contains("t")) return;
  const st = stepOf(t);
  if (st && st.roving !== +t.dataset.i) {
    const old = st.toks.querySelector('.t[tabindex="0"]'); if (old) old.tabIndex = -1;
    t.tabIndex = 0; st.roving = +t.dataset.i;
  }
  showTip(t); announce(t);
});
main.addEventListener("focusout", e => {
  const n = e.relatedTarget;
  if (e.target.classList && e.target.classList.contains("t") && !(n && n.classList && n.classList.contains("t"))) hideTip();
});
main.addEventListener("keydown", e => {
  const t = e.target;
  if (!t.classList || !t.classList.contains("t") || e.altKey || e.ctrlKey || e.metaKey) return;
  const st = stepOf(t), i = +t.dataset.i;
  let j;
  switch (e.key) {
    case "ArrowRight": j = i + 1; break;
    case "ArrowLeft": j = i - 1; break;
    case "ArrowDown": j = vertical(st, t, 1); break;
    case "ArrowUp": j = vertical(st, t, -1); break;
    case "PageDown": j = i + 100; break;
    case "PageUp": j = i - 100; break;
    case "Home": j = 0; break;
    case "End": j = st.S.n - 1; break;
    case "Escape": hideTip(); return;
    default: return;
  }
  e.preventDefault();
  focusToken(st, j);
});
bar.addEventListener("click", e => {
  const b = e.target.closest("button[data-jump]"); if (!b || !cur) return;
  const st = cur.steps[+b.dataset.jump];
  const sec = main.querySelector('section.step[data-s="' + b.dataset.jump + '"]');
  sec.scrollIntoView({block: "start"});
  if (st && st.chunks.length) focusToken(st, st.roving); else sec.querySelector("h2").focus();
});
let scrollQueued = false;
window.addEventListener("scroll", () => {  // keep the focused token's tooltip attached; drop a hover tooltip
  if (tip.hidden || scrollQueued) return;
  scrollQueued = true;
  requestAnimationFrame(() => {
    scrollQueued = false;
    const f = document.activeElement;
    if (f && f.classList && f.classList.contains("t")) showTip(f); else hideTip();
  });
}, {passive: true});
window.addEventListener("resize", () => { if (!tip.hidden) hideTip(); });

function route() {
  const m = /^#p=(.*)$/.exec(location.hash);
  if (m) {
    const id = decodeURIComponent(m[1]);
    if (byId.has(id)) return showProblem(byId.get(id));
  }
  showIndex();
}
window.addEventListener("hashchange", route);
route();
})();
