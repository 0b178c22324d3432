// Every run page: a confirm before Terminate, the header (status badge, actions,
// grace countdown) kept live from /ws/runs/ status messages, which it re-fetches
// from /runs/ID/head/. Other modules hear "run-status" and "run-progress" events on document.
const head = () => document.getElementById("run-head");
const runId = head().dataset.run;

document.addEventListener("submit", (event) => {
  if (event.target.id !== "terminate-form") return;
  const button = document.getElementById("terminate");
  if (!window.confirm(button.dataset.confirm)) event.preventDefault();
});

async function refreshHead() {
  const response = await fetch(`/runs/${runId}/head/`);
  if (!response.ok) return;
  const holder = document.createElement("div");
  holder.innerHTML = (await response.text()).trim();
  head().replaceWith(holder.firstElementChild);
  tick();
  watchStall();
}

// A running run whose progress stops turns `stalled` without any message: the
// header says how many seconds that is away (data-stalls-in), and is read again then.
let stallTimer;
function watchStall() {
  clearTimeout(stallTimer);
  const left = Number(head().querySelector("[data-stalls-in]")?.dataset.stallsIn ?? NaN);
  if (Number.isFinite(left)) stallTimer = setTimeout(refreshHead, Math.min(2 ** 31 - 1, left * 1000 + 1000));
}
watchStall();

function tick() {
  const countdown = document.getElementById("stop-countdown");
  const deadline = head().dataset.stopDeadline;
  if (!deadline) { countdown.textContent = ""; return; }
  const left = Math.ceil((Date.parse(deadline) - Date.now()) / 1000);
  countdown.textContent = left > 0
    ? `Stopping the container: SIGTERM sent, SIGKILL in ${left} s.`
    : "Stopping the container: collecting its last output.";
}
setInterval(tick, 500);
// While a container is being stopped no status changes: look again now and then.
setInterval(() => { if (head().dataset.stopDeadline) refreshHead(); }, 2000);
tick();

// Progress may be reported many times a second: show it at most every 2 s.
let progressPending = false;
function progressed(message) {
  if (progressPending) return;
  progressPending = true;
  setTimeout(() => {
    progressPending = false;
    refreshHead();
    document.dispatchEvent(new CustomEvent("run-progress", { detail: message }));
  }, 2000);
}

const scheme = location.protocol === "https:" ? "wss" : "ws";
function watch() {
  const socket = new WebSocket(`${scheme}://${location.host}/ws/runs/`);
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (String(message.run) !== runId) return;
    if (message.type === "status") {
      refreshHead();
      document.dispatchEvent(new CustomEvent("run-status", { detail: message }));
    } else if (message.type === "progress") {
      progressed(message);
    }
  };
  socket.onclose = () => setTimeout(watch, 2000);
}
watch();
