// The runs list. Its rows and table follow the runs live through htmx and
// live_runs.js (see _run_row.html, _runs_table.html); this only opens Compare.
// Compare opens /compare/?runs=1,2,3 (without this script the form sends runs=1&runs=2).
document.addEventListener("submit", (event) => {
  if (event.target.id !== "compare-form") return;
  event.preventDefault();
  const picked = [...document.querySelectorAll("input[name=runs]:checked")].map((box) => box.value);
  const hint = document.getElementById("compare-hint");
  if (picked.length < 2) { hint.textContent = "Tick two or more runs to compare."; return; }
  location.href = `${event.target.action}?runs=${picked.join(",")}`;
});
