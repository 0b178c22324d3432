// Every run page: a confirm before Terminate, and the grace countdown while the
// container is being stopped. The header itself follows the run live through htmx
// and live_runs.js (see _run_head.html).
document.addEventListener("submit", (event) => {
  if (event.target.id !== "terminate-form") return;
  const button = document.getElementById("terminate");
  if (!window.confirm(button.dataset.confirm)) event.preventDefault();
});

// The header is swapped as the run changes: look it up afresh at every tick.
function tick() {
  const countdown = document.getElementById("stop-countdown");
  const deadline = document.getElementById("run-head").dataset.stopDeadline;
  if (!deadline) { countdown.textContent = ""; return; }
  const left = Math.ceil((Date.parse(deadline) - Date.now()) / 1000);
  countdown.textContent = left > 0
    ? `Stopping the container: SIGTERM sent, SIGKILL in ${left} s.`
    : "Stopping the container: collecting its last output.";
}
setInterval(tick, 500);
tick();
