// The runs list follows status changes and progress live over /ws/runs/: a
// changed or new run's row is fetched from the server (/runs/ID/row/) and
// swapped in place.
const body = () => document.getElementById("runs-body");
const state = document.getElementById("live-state");
let retry = 500;

async function refreshRow(runId) {
  // The list's query names its chosen columns (?columns=...): the row shows the same.
  const response = await fetch(`/runs/${runId}/row/${location.search}`, { headers: { "X-Requested-With": "fetch" } });
  if (!response.ok) return;
  const holder = document.createElement("tbody");
  holder.innerHTML = (await response.text()).trim();
  const fresh = holder.firstElementChild;
  const current = document.getElementById(`run-${runId}`);
  if (current) {
    // A run ticked for Compare stays ticked when its row is swapped.
    const ticked = current.querySelector("input[name=runs]")?.checked;
    if (ticked) fresh.querySelector("input[name=runs]").checked = true;
    current.replaceWith(fresh);
    watchStall(fresh);
  } else if (body() && !new URLSearchParams(location.search).has("before")) {
    body().prepend(fresh);  // a new run: the list is newest first
    body().closest("table").hidden = false;
  }
}

// A running run whose progress stops turns `stalled` without any message: its
// row says how many seconds that is away (data-stalls-in), and is read again then.
const stallTimers = new Map();
function watchStall(row) {
  const runId = Number(row.dataset.run);
  clearTimeout(stallTimers.get(runId));
  const left = Number(row.querySelector("[data-stalls-in]")?.dataset.stallsIn ?? NaN);
  if (Number.isFinite(left)) stallTimers.set(runId, setTimeout(() => refreshRow(runId), Math.min(2 ** 31 - 1, left * 1000 + 1000)));
}
for (const row of document.querySelectorAll("tr[data-run]")) watchStall(row);

function refreshWaiting(except) {
  for (const row of document.querySelectorAll("tr[data-run]")) {
    const runId = Number(row.dataset.run);
    if (runId !== except && row.querySelector(".waiting")) refreshRow(runId);
  }
}

// Progress may be reported many times a second: a row shows it at most every 2 s.
const progressPending = new Set();
function progressed(runId) {
  if (progressPending.has(runId)) return;
  progressPending.add(runId);
  setTimeout(() => { progressPending.delete(runId); refreshRow(runId); }, 2000);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws/runs/`);
  socket.onopen = () => { retry = 500; state.textContent = "Live: status changes appear as they happen."; };
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "status") {
      refreshRow(message.run);
      // A run left the queue, or joined it: the others' places in it change.
      if (message.from === "pending" || message.to === "pending") refreshWaiting(message.run);
    } else if (message.type === "progress") progressed(message.run);
    else if (message.type === "waiting") refreshRow(message.run);
  };
  socket.onclose = () => {
    state.textContent = "Reconnecting…";
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 10000);
  };
}

// Compare opens /compare/?runs=1,2,3 (without this script the form sends runs=1&runs=2).
document.addEventListener("submit", (event) => {
  if (event.target.id !== "compare-form") return;
  event.preventDefault();
  const picked = [...document.querySelectorAll("input[name=runs]:checked")].map((box) => box.value);
  const hint = document.getElementById("compare-hint");
  if (picked.length < 2) { hint.textContent = "Tick two or more runs to compare."; return; }
  location.href = `${event.target.action}?runs=${picked.join(",")}`;
});

connect();
