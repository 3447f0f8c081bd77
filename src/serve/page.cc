#include "serve/page.h"

namespace mingpt::serve {
namespace {

constexpr char kPage[] = R"PAGE(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mingpt serve</title>
<style>
  :root { --fg:#1d2330; --muted:#6b7280; --line:#d8dce3; --accent:#2f6fdb; --bg:#f6f7f9; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color:var(--fg); background:var(--bg); }
  header { padding:12px 20px; background:#1d2330; color:#fff; display:flex; gap:16px; align-items:baseline; }
  header h1 { font-size:18px; margin:0; }
  header span { color:#aab3c5; }
  nav button { background:none; border:0; color:#cfd6e4; font:inherit; cursor:pointer; padding:4px 8px; }
  nav button.on { color:#fff; border-bottom:2px solid #fff; }
  main { padding:16px 20px; max-width:1100px; }
  section { display:none; background:#fff; border:1px solid var(--line); border-radius:6px; padding:16px; }
  section.on { display:block; }
  label { display:inline-flex; flex-direction:column; gap:2px; margin:0 12px 10px 0; color:var(--muted); font-size:12px; }
  input, select, textarea { font:inherit; padding:4px 6px; border:1px solid var(--line); border-radius:4px; color:var(--fg); }
  textarea { width:100%; min-height:70px; font-family: ui-monospace, monospace; }
  input[type=number] { width:100px; }
  button.go { background:var(--accent); color:#fff; border:0; border-radius:4px; padding:6px 14px; font:inherit; cursor:pointer; }
  button.go:disabled { opacity:.5; cursor:default; }
  pre#out { white-space:pre-wrap; background:#0f1420; color:#e6e9ef; padding:12px; border-radius:6px; min-height:120px; font-family:ui-monospace, monospace; }
  pre#out .prompt { color:#8fb3ff; }
  .err { color:#c0392b; }
  .muted { color:var(--muted); }
  .charts { display:grid; grid-template-columns:repeat(auto-fill, minmax(480px, 1fr)); gap:12px; margin-top:12px; }
  .chart { border:1px solid var(--line); border-radius:6px; padding:8px; }
  .chart h3 { margin:0 0 4px; font-size:13px; }
  svg text { font-size:10px; fill:var(--muted); }
  .legend span { margin-right:12px; font-size:12px; }
  .legend i { display:inline-block; width:10px; height:10px; margin-right:4px; border-radius:2px; }
</style>
</head>
<body>
<header><h1>mingpt serve</h1><span id="root"></span>
  <nav><button data-tab="gen" class="on">Generate</button><button data-tab="runs">Runs</button><button data-tab="bench">Benchmarks</button></nav>
</header>
<main>
<section id="gen" class="on">
  <label>Checkpoint <select id="ckpt"></select></label>
  <label>Steps <input id="steps" type="number" value="200" min="0" max="100000"></label>
  <label>Temperature <input id="temperature" type="number" value="1" step="0.1" min="0.01"></label>
  <label>Top-k <input id="top_k" type="number" value="10" min="0"></label>
  <label>Seed <input id="seed" type="number" value="42" min="0"></label>
  <label>Greedy <input id="greedy" type="checkbox"></label>
  <textarea id="prompt" placeholder="Prompt">O God, O God!</textarea>
  <p><button class="go" id="generate">Generate</button> <button id="stop" disabled>Stop</button> <span id="genstatus" class="muted"></span></p>
  <pre id="out"></pre>
</section>
<section id="runs">
  <label>Run <select id="run"></select></label> <span id="runinfo" class="muted"></span>
  <div class="charts" id="charts"></div>
</section>
<section id="bench">
  <div id="benchinfo" class="muted"></div>
  <div class="charts" id="benchcharts"></div>
</section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;"}[c]));
const COLORS = ["#2f6fdb", "#e07b39", "#3aa675", "#b94fc1", "#c0392b", "#7f8c8d", "#d4ac0d", "#16a085"];

for (const b of document.querySelectorAll("nav button")) {
  b.onclick = () => {
    for (const x of document.querySelectorAll("nav button")) x.classList.toggle("on", x === b);
    for (const s of document.querySelectorAll("section")) s.classList.toggle("on", s.id === b.dataset.tab);
    if (b.dataset.tab === "runs") loadRuns();
    if (b.dataset.tab === "bench") loadBench();
  };
}

async function getJson(url) {
  const r = await fetch(url);
  const j = await r.json().catch(() => ({error: "bad response"}));
  if (!r.ok) throw new Error(j.error || ("HTTP " + r.status));
  return j;
}

// ---- Generate ----
async function loadCheckpoints() {
  try {
    const j = await getJson("/v1/checkpoints");
    const sel = $("ckpt");
    sel.innerHTML = "";
    for (const c of j.checkpoints) {
      const o = document.createElement("option");
      o.value = c.id;
      const cfg = c.config || {};
      o.textContent = c.id + " (step " + c.step + (cfg.n_layer ? ", " + cfg.n_layer + "/" + cfg.n_head + "/" + cfg.n_embd : "") + ")";
      if (c.id === j.default) o.selected = true;
      sel.appendChild(o);
    }
    if (!j.checkpoints.length) $("genstatus").textContent = "no checkpoints found";
  } catch (e) { $("genstatus").innerHTML = '<span class="err">' + esc(e.message) + "</span>"; }
}

let controller = null;
async function generate() {
  const out = $("out");
  const body = {
    prompt: $("prompt").value, steps: parseInt($("steps").value, 10),
    temperature: parseFloat($("temperature").value), top_k: parseInt($("top_k").value, 10),
    greedy: $("greedy").checked, seed: parseInt($("seed").value, 10), stream: true,
  };
  if ($("ckpt").value) body.checkpoint = $("ckpt").value;
  out.innerHTML = '<span class="prompt">' + esc(body.prompt) + "</span>";
  const gen = document.createTextNode("");
  out.appendChild(gen);
  $("generate").disabled = true; $("stop").disabled = false;
  $("genstatus").textContent = "generating...";
  controller = new AbortController();
  const started = performance.now();
  let count = 0;
  try {
    const r = await fetch("/v1/generate", {method: "POST", headers: {"Content-Type": "application/json"},
                                           body: JSON.stringify(body), signal: controller.signal});
    if (!r.ok) {
      const j = await r.json().catch(() => ({}));
      throw new Error(j.error || ("HTTP " + r.status));
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const raw = buf.slice(0, cut); buf = buf.slice(cut + 2);
        let event = "message", data = "";
        for (const line of raw.split("\n")) {
          if (line.startsWith("event: ")) event = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        const d = JSON.parse(data);
        if (event === "message") { gen.appendData(d.text); count += d.text.length; }
        else if (event === "error") throw new Error(d.error);
        else if (event === "done") {
          const s = (performance.now() - started) / 1000;
          $("genstatus").textContent = count + " characters in " + s.toFixed(2) + " s (" + d.checkpoint + ")";
        }
      }
    }
  } catch (e) {
    $("genstatus").innerHTML = '<span class="err">' + esc(e.name === "AbortError" ? "stopped" : e.message) + "</span>";
  } finally {
    $("generate").disabled = false; $("stop").disabled = true; controller = null;
  }
}
$("generate").onclick = generate;
$("stop").onclick = () => { if (controller) controller.abort(); };

// ---- Charts ----
function niceNum(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e6 || a < 1e-3) return v.toExponential(1);
  return +v.toPrecision(3) + "";
}
// series: [{name, xs, ys}] (null ys skipped). Returns an <svg> string.
function lineChart(series, xlabel) {
  const W = 480, H = 220, L = 56, R = 10, T = 10, B = 30;
  let xmin = Infinity, xmax = -Infinity, ymin = Infinity, ymax = -Infinity;
  for (const s of series) s.xs.forEach((x, i) => {
    const y = s.ys[i];
    if (y === null || y === undefined || x === null || !isFinite(y)) return;
    xmin = Math.min(xmin, x); xmax = Math.max(xmax, x); ymin = Math.min(ymin, y); ymax = Math.max(ymax, y);
  });
  if (!isFinite(xmin)) return '<p class="muted">no values yet</p>';
  if (xmax === xmin) xmax = xmin + 1;
  if (ymax === ymin) { ymax += Math.abs(ymax) * 0.05 + 1e-9; ymin -= Math.abs(ymin) * 0.05 + 1e-9; }
  const px = (x) => L + (x - xmin) / (xmax - xmin) * (W - L - R);
  const py = (y) => T + (1 - (y - ymin) / (ymax - ymin)) * (H - T - B);
  let svg = '<svg viewBox="0 0 ' + W + " " + H + '" width="100%" role="img">';
  for (let i = 0; i <= 4; ++i) {
    const y = ymin + (ymax - ymin) * i / 4, yy = py(y);
    svg += '<line x1="' + L + '" x2="' + (W - R) + '" y1="' + yy + '" y2="' + yy + '" stroke="#eceef2"/>';
    svg += '<text x="' + (L - 4) + '" y="' + (yy + 3) + '" text-anchor="end">' + niceNum(y) + "</text>";
  }
  for (let i = 0; i <= 4; ++i) {
    const x = xmin + (xmax - xmin) * i / 4;
    svg += '<text x="' + px(x) + '" y="' + (H - 12) + '" text-anchor="middle">' + niceNum(xmax - xmin >= 8 ? Math.round(x) : x) + "</text>";
  }
  svg += '<text x="' + ((L + W - R) / 2) + '" y="' + (H - 1) + '" text-anchor="middle">' + esc(xlabel) + "</text>";
  series.forEach((s, k) => {
    let d = "", n = 0;
    s.xs.forEach((x, i) => {
      const y = s.ys[i];
      if (y === null || y === undefined || !isFinite(y)) return;
      d += (n++ ? "L" : "M") + px(x).toFixed(1) + " " + py(y).toFixed(1);
      // Points are marked too: a series of sparse values (val_loss) stays visible.
      svg += '<circle cx="' + px(x).toFixed(1) + '" cy="' + py(y).toFixed(1) + '" r="2.5" fill="' + COLORS[k % COLORS.length] + '"/>';
    });
    if (n) svg += '<path d="' + d + '" fill="none" stroke="' + COLORS[k % COLORS.length] + '" stroke-width="1.6"/>';
  });
  return svg + "</svg>";
}
function legend(names) {
  return '<div class="legend">' + names.map((n, k) => '<span><i style="background:' + COLORS[k % COLORS.length] + '"></i>' + esc(n) + "</span>").join("") + "</div>";
}

// ---- Runs ----
let runTimer = null;
async function loadRuns() {
  try {
    const j = await getJson("/v1/runs");
    const sel = $("run"), keep = sel.value;
    sel.innerHTML = "";
    for (const r of j.runs) {
      const o = document.createElement("option");
      o.value = r.id; o.textContent = r.id + " (step " + r.last_step + ")";
      sel.appendChild(o);
    }
    if (keep && j.runs.some((r) => r.id === keep)) sel.value = keep;
    if (!j.runs.length) { $("runinfo").textContent = "no runs with metrics.csv found"; return; }
    showRun();
  } catch (e) { $("runinfo").innerHTML = '<span class="err">' + esc(e.message) + "</span>"; }
}
async function showRun() {
  const id = $("run").value;
  if (!id) return;
  try {
    const j = await getJson("/v1/runs/" + encodeURIComponent(id) + "/metrics");
    if ($("run").value !== id) return;
    const m = j.metrics, xs = m.step || [];
    const col = (c) => m[c] || xs.map(() => null);
    const mib = (ys) => ys.map((v) => (v === null || v === undefined ? null : v / 1048576));
    const charts = [
      ["Loss", [["train_loss", col("train_loss")], ["val_loss", col("val_loss")]]],
      ["Learning rate", [["lr", col("lr")]]],
      ["Tokens per second", [["tokens_per_s", col("tokens_per_s")]]],
      ["Memory per rank (MiB)", [["peak_rss", mib(col("peak_rss_bytes"))],
                                 ["training state", mib(col("state_bytes"))]]],
    ];
    $("charts").innerHTML = charts.map(([title, ss]) =>
      '<div class="chart"><h3>' + esc(title) + "</h3>" + legend(ss.map((s) => s[0])) +
      lineChart(ss.map(([name, ys]) => ({name, xs, ys})), "step") + "</div>").join("");
    $("runinfo").textContent = xs.length + " rows, last step " + (xs.length ? xs[xs.length - 1] : "-") + " (refreshing)";
  } catch (e) { $("runinfo").innerHTML = '<span class="err">' + esc(e.message) + "</span>"; }
}
$("run").onchange = showRun;
runTimer = setInterval(() => { if ($("runs").classList.contains("on")) showRun(); }, 3000);

// ---- Benchmarks ----
// A bench.csv cell as a bar: a number, or one with "+" where the batch
// search stopped at its cap (--max_batch), "256+": drawn as 256, marked capped.
function benchCell(c) {
  if (typeof c === "number") return {v: c, capped: false};
  const m = typeof c === "string" ? /^(\d+(?:\.\d+)?)\+$/.exec(c) : null;
  return {v: m ? parseFloat(m[1]) : NaN, capped: !!m};
}
function barChart(labels, cells, unit) {
  const W = 480, rowH = 20, L = 220, R = 100, H = labels.length * rowH + 10;
  const max = Math.max(...cells.map((c) => c.v).filter((v) => isFinite(v) && v > 0), 1e-12);
  let svg = '<svg viewBox="0 0 ' + W + " " + H + '" width="100%" role="img">';
  labels.forEach((l, i) => {
    const v = cells[i].v, y = 5 + i * rowH;
    svg += '<text x="' + (L - 6) + '" y="' + (y + 13) + '" text-anchor="end">' + esc(l) + "</text>";
    if (isFinite(v) && v > 0) {
      const w = v / max * (W - L - R);
      svg += '<rect x="' + L + '" y="' + (y + 3) + '" width="' + w.toFixed(1) + '" height="' + (rowH - 6) + '" fill="' + COLORS[0] + '"/>';
      svg += '<text x="' + (L + w + 4) + '" y="' + (y + 13) + '">' + niceNum(v) + (cells[i].capped ? "+ (capped)" : "") +
        (unit ? " " + esc(unit) : "") + "</text>";
    } else {
      svg += '<text x="' + (L + 4) + '" y="' + (y + 13) + '">-</text>';
    }
  });
  return svg + "</svg>";
}
async function loadBench() {
  try {
    const j = await getJson("/v1/bench");
    $("benchinfo").textContent = j.path + ": " + j.rows.length + " configurations";
    const labels = j.rows.map((r) => (r["Model"] || "") + " " + (r["Plugin"] || r["Plugin Alias"] || ""));
    const measures = ["Tokens per second", "Time per iteration (s)", "Peak Memory per Rank (MiB)", "Max Per Device Batch Size", "MFU"]
      .filter((c) => j.columns.includes(c));
    $("benchcharts").innerHTML = measures.map((c) => '<div class="chart"><h3>' + esc(c) + "</h3>" +
      barChart(labels, j.rows.map((r) => benchCell(r[c])), "") + "</div>").join("");
  } catch (e) { $("benchinfo").innerHTML = '<span class="err">' + esc(e.message) + "</span>"; }
}

loadCheckpoints();
</script>
</body>
</html>
)PAGE";

}  // namespace

std::string_view IndexPage() { return std::string_view(kPage, sizeof(kPage) - 1); }

}  // namespace mingpt::serve
