// The Compare page: one Plotly chart per metric, a trace per run in the run's
// colour. Each series comes from /api/v1/runs/ID/metrics/KEY, thinned on the
// server to about two points per pixel; a run without the metric has no trace.
// Smoothing draws each run's moving average over its faint raw line, as on Plots.
import { chartFigure } from "./chart_figure.js";
import { smoothed, smoothingSlider } from "./smoothing.js";

const data = JSON.parse(document.getElementById("compare-data")?.textContent || "null");
const grid = document.getElementById("compare-grid");
const state = document.getElementById("compare-state");
const drawn = new Map();  // key -> { chart, runs, all }: what was read, redrawn as smoothing moves
const smoothing = data && data.keys.length
  ? smoothingSlider(document.getElementById("compare-smooth"), document.getElementById("compare-smooth-value"),
                    () => { for (const key of drawn.keys()) render(key); })
  : () => 0;

function slug(key) { return "compare-" + key.replace(/[^A-Za-z0-9_-]/g, "_"); }

function figureFor(key) {
  const figure = chartFigure(slug(key), key, `Chart of ${key} for each run`);
  grid.append(figure.box);
  return figure;
}

async function series(run, key, maxPoints) {
  const path = encodeURIComponent(key).replace(/%2F/g, "/");
  const response = await fetch(`/api/v1/runs/${run.id}/metrics/${path}?max_points=${maxPoints}`);
  if (!response.ok) throw new Error(`HTTP ${response.status} for run #${run.id}`);
  return response.json();
}

async function draw(key) {
  const { box, chart, note } = figureFor(key);
  const runs = data.runs.filter((run) => run.keys.includes(key));
  const maxPoints = Math.min(4000, Math.max(200, chart.clientWidth || 500) * 2);
  try {
    const all = await Promise.all(runs.map((run) => series(run, key, maxPoints)));
    drawn.set(key, { chart, runs, all });
    await render(key);
    const thinned = all.some((points) => points.downsampled) ? " (thinned for drawing)" : "";
    note.textContent = `${runs.length} of ${data.runs.length} runs report ${key}${thinned}.`;
  } catch (error) {
    note.textContent = `Could not read ${key}: ${error.message}.`;
  }
}

// One trace per run (faint when smoothed), then each run's smoothed line over them.
async function render(key) {
  const { chart, runs, all } = drawn.get(key);
  const weight = smoothing();
  const traces = all.map((points, index) => ({
    x: points.x, y: points.y, type: "scatter", mode: points.y.length > 60 ? "lines" : "lines+markers",
    name: runs[index].name, line: { color: runs[index].colour, width: 1.5 }, marker: { color: runs[index].colour },
    hovertemplate: `${runs[index].name}<br>%{x}: %{y}<extra></extra>`,
    ...(weight > 0 ? { opacity: 0.25, hoverinfo: "skip" } : {}),
  }));
  if (weight > 0) {
    all.forEach((points, index) => traces.push({
      x: points.x, y: smoothed(points.y, weight), type: "scatter", mode: points.y.length > 1 ? "lines" : "markers",
      name: `${runs[index].name} (smoothed)`, line: { color: runs[index].colour, width: 2 },
      hovertemplate: `${runs[index].name}<br>%{x}: %{y} (smoothed)<extra></extra>`,
    }));
  }
  await window.Plotly.react(chart, traces, {
    margin: { l: 50, r: 10, t: 10, b: 40 }, showlegend: false,
    xaxis: { title: { text: "step" } }, yaxis: { autorange: true },
  }, { responsive: true, displaylogo: false });
}

document.getElementById("compare-toolbar")?.addEventListener("submit", (event) => event.preventDefault());

async function start() {
  if (!data || !data.keys.length) return;
  state.textContent = `Reading ${data.keys.length} metric${data.keys.length === 1 ? "" : "s"}…`;
  await Promise.all(data.keys.map(draw));
  state.textContent = "";
}

if (window.Plotly) start();
else window.addEventListener("load", start);
