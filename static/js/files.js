// The Files tab. htmx swaps a file's preview into #preview; this moves focus
// there and marks the chosen file. The tree follows the run through htmx and
// live_runs.js (see _files_tree_section.html); when it comes back with files,
// the preview pane shows and a screen reader hears how many there are.
const tree = () => document.getElementById("files");
const preview = () => document.getElementById("preview");
let listed = Number(tree()?.dataset.count ?? 0);

document.addEventListener("htmx:afterSwap", (event) => {
  if (event.target === tree()) {
    const count = Number(event.target.dataset.count);
    preview().hidden = count === 0;
    if (count > 0 && count !== listed) document.getElementById("files-live").textContent = `${count} exported file${count === 1 ? "" : "s"} listed.`;
    listed = count;
    return;
  }
  if (event.detail.target !== preview()) return;
  const chosen = event.detail.requestConfig.elt;
  for (const link of tree().querySelectorAll("a[aria-current]")) link.removeAttribute("aria-current");
  chosen.setAttribute("aria-current", "true");
  document.getElementById("preview-title")?.focus();
});
