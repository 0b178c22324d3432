// The Plots tab: a Plotly chart per metric, read from /api/v1/runs/ID/metrics/KEY.
// The server thins each series to about two points per pixel (keeping every
// bucket's lowest and highest value); zooming in reads that range again at full
// detail. While the run is live, new values and new metrics appear every few
// seconds; only the charts on screen are read again, the others when scrolled to.
import { chartFigure } from "./chart_figure.js";
import { smoothed, smoothingSlider } from "./smoothing.js";

const section = document.getElementById("plots");
const grid = document.getElementById("plots-grid");
const runId = section.dataset.run;
const api = `/api/v1/runs/${runId}/metrics`;
const xSelect = document.getElementById("plots-x");
const logScale = document.getElementById("plots-log");
const filter = document.getElementById("plots-filter");
const state = document.getElementById("plots-state");
const smoothing = smoothingSlider(document.getElementById("plots-smooth"), document.getElementById("plots-smooth-value"),
                                  () => { for (const key of charts.keys()) render(key); });
const REFRESH_MS = 4000;
const X_TITLES = { step: "step", relative: "seconds since start", wall: "" };

let live = section.dataset.live === "true";
const charts = new Map();  // key -> { box, chart, note, range: [min, max] | null, busy, onScreen, stale }
const watcher = new IntersectionObserver((seen) => {
  for (const item of seen) {
    const entry = charts.get(item.target.dataset.key);
    entry.onScreen = item.isIntersecting;
    if (entry.onScreen && entry.stale) draw(entry.box.dataset.key);
  }
}, { rootMargin: "200px" });

function slug(key) { return "plot-" + key.replace(/[^A-Za-z0-9_-]/g, "_"); }

function chartFor(key) {
  if (charts.has(key)) return charts.get(key);
  const { box, chart, note } = chartFigure(slug(key), key, `Chart of ${key}`);
  // Keep the charts in name order, whenever a metric first appears.
  const after = [...grid.children].find((other) => other.dataset.key > key);
  grid.insertBefore(box, after || null);
  const entry = { box, chart, note, range: null, busy: false, onScreen: false, stale: true };
  charts.set(key, entry);
  watcher.observe(box);
  applyFilter();
  return entry;
}

// Plotly gives wall-clock ranges as "2026-11-26 10:00:00.123" in UTC (the x values are UTC).
function toNumber(value) {
  if (xSelect.value !== "wall") return Number(value);
  return Date.parse(String(value).replace(" ", "T") + "Z") / 1000;
}

async function draw(key) {
  const entry = chartFor(key);
  if (entry.busy) return;
  entry.busy = true;
  entry.stale = false;
  try {
    const width = Math.max(200, entry.chart.clientWidth || 500);
    const params = new URLSearchParams({ x: xSelect.value, max_points: String(Math.min(4000, width * 2)) });
    if (entry.range) {
      params.set("x_min", String(toNumber(entry.range[0])));
      params.set("x_max", String(toNumber(entry.range[1])));
    }
    const response = await fetch(`${api}/${encodeURIComponent(key).replace(/%2F/g, "/")}?${params}`);
    if (!response.ok) { entry.note.textContent = `Could not read ${key} (HTTP ${response.status}).`; return; }
    const series = await response.json();
    entry.series = series;
    await render(key);
    if (!entry.chart.dataset.listening) {
      entry.chart.dataset.listening = "yes";
      entry.chart.on("plotly_relayout", (change) => zoomed(key, change));
    }
    const thinned = series.downsampled ? `, drawn as ${series.x.length} (every stretch keeps its lowest and highest)` : "";
    entry.note.textContent = `${series.total_points.toLocaleString()} points${entry.range ? " in this range" : ""}${thinned}.`;
    entry.box.dataset.points = String(series.total_points);
  } finally {
    entry.busy = false;
  }
}

// Draws what was last read: the raw series (faint when smoothed) and its smoothed line over it.
async function render(key) {
  const entry = charts.get(key);
  const series = entry.series;
  if (!series) return;
  const weight = smoothing();
  const raw = { x: series.x, y: series.y, type: "scatter", mode: series.y.length > 60 ? "lines" : "lines+markers",
                line: { width: 1.5, color: "#1f77b4" }, name: key, hovertemplate: "%{x}: %{y}<extra></extra>" };
  const traces = [raw];
  if (weight > 0) {
    raw.opacity = 0.25;
    raw.hoverinfo = "skip";
    traces.push({ x: series.x, y: smoothed(series.y, weight), type: "scatter", mode: series.y.length > 1 ? "lines" : "markers", line: { width: 2, color: "#1f77b4" },
                  name: `${key} (smoothed)`, hovertemplate: "%{x}: %{y} (smoothed)<extra></extra>" });
  }
  // The server may answer on another axis than asked (sys/ metrics have no step: time since start).
  const axis = series.x_axis || xSelect.value;
  const layout = {
    margin: { l: 50, r: 10, t: 10, b: 40 }, showlegend: false, uirevision: `${key}-${xSelect.value}`,
    xaxis: { title: { text: X_TITLES[axis] }, type: axis === "wall" ? "date" : "linear",
             ...(entry.range ? { range: entry.range, autorange: false } : { autorange: true }) },
    yaxis: { type: logScale.checked ? "log" : "linear", autorange: true },
  };
  await window.Plotly.react(entry.chart, traces, layout, { responsive: true, displaylogo: false });
}

function zoomed(key, change) {
  const entry = charts.get(key);
  // A drag-zoom sends "xaxis.range[0]" and "[1]"; Plotly.relayout may send "xaxis.range".
  if (change["xaxis.autorange"]) entry.range = null;
  else if ("xaxis.range[0]" in change) entry.range = [change["xaxis.range[0]"], change["xaxis.range[1]"]];
  else if (Array.isArray(change["xaxis.range"])) entry.range = change["xaxis.range"];
  else return;
  draw(key);
}

async function refresh() {
  const response = await fetch(api);
  if (!response.ok) { state.textContent = `Could not read the metrics (HTTP ${response.status}).`; return; }
  const { keys } = await response.json();
  // Its CPU and memory (sys/...) are Runyard's readings: the hint stays until the run reports its own.
  document.getElementById("plots-empty").hidden = keys.some((key) => !key.startsWith("sys/"));
  for (const key of keys) chartFor(key).stale = true;
  await Promise.all(keys.filter((key) => charts.get(key).onScreen).map(draw));
  state.textContent = live ? "Live: new values appear every few seconds." : "";
}

function applyFilter() {
  const needle = filter.value.trim().toLowerCase();
  for (const [key, entry] of charts) entry.box.hidden = needle !== "" && !key.toLowerCase().includes(needle);
}

function redrawAll() {
  for (const entry of charts.values()) entry.range = null;
  refresh();
}

xSelect.addEventListener("change", redrawAll);
logScale.addEventListener("change", () => { for (const key of charts.keys()) draw(key); });
filter.addEventListener("input", applyFilter);

document.getElementById("plots-toolbar").addEventListener("submit", (event) => event.preventDefault());
// live_runs.js tells every status change of the team's runs: this run's final one ends the refreshing.
document.body.addEventListener("run:status", (event) => {
  if (String(event.detail.run) !== runId) return;
  if (["completed", "failed", "terminated"].includes(event.detail.to)) { live = false; refresh(); }
});

function start() {
  for (const key of JSON.parse(document.getElementById("plots-keys").textContent)) chartFor(key);
  refresh();
  setInterval(() => { if (live && !document.hidden) refresh(); }, REFRESH_MS);
}

if (window.Plotly) start();
else window.addEventListener("load", start);
