// The Files tab. htmx swaps a file's preview into #preview; this moves focus
// there and marks the chosen file. While the run's exports are still to come,
// the tree is fetched again on each status change (run_header.js sends
// "run-status"), every few seconds while a stopped run's files are copied, and
// every 15 s whatever happens.
const tree = () => document.getElementById("files");
const preview = () => document.getElementById("preview");

document.addEventListener("htmx:afterSwap", (event) => {
  if (event.detail.target !== preview()) return;
  const chosen = event.detail.requestConfig.elt;
  for (const link of tree().querySelectorAll("a[aria-current]")) link.removeAttribute("aria-current");
  chosen.setAttribute("aria-current", "true");
  document.getElementById("preview-title")?.focus();
});

async function refreshTree() {
  const current = tree();
  if (!current || !("live" in current.dataset)) return;
  const response = await fetch(current.dataset.treeUrl, { headers: { "X-Requested-With": "fetch" } });
  if (!response.ok) return;
  const holder = document.createElement("div");
  holder.innerHTML = (await response.text()).trim();
  const fresh = holder.firstElementChild;
  tree().replaceWith(fresh);
  window.htmx.process(fresh);
  const count = Number(fresh.dataset.count);
  preview().hidden = count === 0;
  if (count > 0) document.getElementById("files-live").textContent = `${count} exported file${count === 1 ? "" : "s"} listed.`;
}

document.addEventListener("run-status", refreshTree);
// A status message can be missed (a socket reconnecting): look again now and then too.
let ticks = 0;
setInterval(() => {
  ticks += 1;
  const current = tree();
  if (current && ("waiting" in current.dataset || ticks % 5 === 0)) refreshTree();
}, 3000);
