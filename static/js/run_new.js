// The new-run page: "line N" next to an error selects that line of the YAML, and the
// example picker fills the editor.
for (const link of document.querySelectorAll(".goto-line")) {
  link.addEventListener("click", (event) => {
    event.preventDefault();
    const area = document.getElementById("spec");
    const lines = area.value.split("\n");
    const line = Number(link.dataset.line);
    const start = lines.slice(0, line - 1).reduce((sum, text) => sum + text.length + 1, 0);
    area.focus();
    area.setSelectionRange(start, start + (lines[line - 1] || "").length);
  });
}
document.getElementById("example").addEventListener("change", (event) => {
  const examples = JSON.parse(event.target.dataset.examples);
  if (examples[event.target.value]) document.getElementById("spec").value = examples[event.target.value];
});
