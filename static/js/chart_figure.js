// A metric's chart as the Plots and Compare pages show it: a figure holding the
// metric's name, the chart (an image to assistive technology) and a note under it.
export function chartFigure(id, key, label) {
  const box = document.createElement("figure");
  box.className = "plot";
  box.id = id;
  box.dataset.key = key;
  const title = document.createElement("h3");
  title.textContent = key;
  const chart = document.createElement("div");
  chart.className = "chart";
  chart.setAttribute("role", "img");
  chart.setAttribute("aria-label", label);
  const note = document.createElement("figcaption");
  note.className = "plot-note muted";
  box.append(title, chart, note);
  return { box, chart, note };
}
