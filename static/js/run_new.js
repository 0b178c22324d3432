// The new-run page. As the YAML is typed, it is checked the way creating the run
// would check it (POST /api/v1/runs?dry_run=true: nothing is created), and what is
// wrong is listed by field and line beside the editor. The editor's text is never
// changed by a check. "line N" selects that line; the example picker fills the editor.

const DEBOUNCE_MS = 500;
const form = document.querySelector("form.new-run");
const area = document.getElementById("spec");
const panel = document.getElementById("spec-check");
const state = document.getElementById("spec-check-state");
const csrfToken = form.querySelector("input[name=csrfmiddlewaretoken]").value;
const team = form.dataset.team;

let timer = null;
let inFlight = null; // the AbortController of the check under way
let sequence = 0; // only the answer to the latest text is shown

function selectLine(line) {
  const lines = area.value.split("\n");
  const start = lines.slice(0, line - 1).reduce((sum, text) => sum + text.length + 1, 0);
  area.focus();
  area.setSelectionRange(start, start + (lines[line - 1] || "").length);
}

panel.addEventListener("click", (event) => {
  const link = event.target.closest(".goto-line");
  if (!link) return;
  event.preventDefault();
  selectLine(Number(link.dataset.line));
});

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

function problemItem(problem) {
  const item = element("li");
  if (problem.line) {
    item.append(element("a", { href: "#spec", class: "goto-line", "data-line": String(problem.line) }, `line ${problem.line}`), " ");
  }
  item.append(element("code", { class: "loc" }, problem.loc || "spec"), " ", problem.msg);
  return item;
}

function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

function pinnedLines(spec) {
  // What the check resolved: a git ref to its commit, a dataset or model to its version.
  const lines = [];
  for (const [path, source] of Object.entries(spec.import || {})) {
    const git = source.git || (source.remote && source.remote.git);
    if (git && git.commit) lines.push(`${path} ← ${(source.remote && source.remote.url) || git.url} ${git.ref} = ${git.commit.slice(0, 12)}`);
    else if (source.dataset) lines.push(`${path} ← dataset ${source.dataset.name} version ${source.dataset.version}`);
    else if (source.model) lines.push(`${path} ← model ${source.model.name} version ${source.model.version}`);
    else if (source.run_files) lines.push(`${path} ← run ${source.run_files.run}'s files under ${source.run_files.path}`);
  }
  return lines;
}

function show(answer) {
  const parts = [];
  const errors = answer.errors || [];
  const warnings = answer.warnings || [];
  if (answer.valid) {
    const spec = answer.spec || {};
    const valid = element("div", { class: "message", id: "spec-valid", role: "status" },
      element("h2", {}, "Valid"),
      `Creating it now starts run “${spec.name}” with ${spec.image}, preset ${spec.resources.preset} on cluster ${spec.resources.cluster}.`);
    const pinned = pinnedLines(spec);
    if (pinned.length) {
      valid.append(element("ul", { class: "pinned" }, ...pinned.map((line) => element("li", {}, line))));
    }
    parts.push(valid);
  } else {
    parts.push(element("div", { class: "error-box", role: "alert", id: "spec-errors" },
      element("h2", {}, `The spec has ${plural(errors.length, "problem")}`),
      element("ul", {}, ...errors.map(problemItem))));
  }
  if (warnings.length) {
    parts.push(element("div", { class: "notice", id: "spec-warnings" },
      element("h2", {}, plural(warnings.length, "warning")),
      element("ul", {}, ...warnings.map(problemItem))));
  }
  area.setAttribute("aria-invalid", answer.valid ? "false" : "true");
  panel.replaceChildren(state, ...parts);
}

function showRefusal(detail) {
  // The request itself was refused (signed out, not allowed, too large): say why.
  panel.replaceChildren(state, element("div", { class: "error-box", role: "alert", id: "spec-errors" },
    element("h2", {}, "Could not check the spec"), element("p", {}, detail)));
}

async function check() {
  const text = area.value;
  const mine = ++sequence;
  if (inFlight) inFlight.abort();
  if (!text.trim()) {
    state.textContent = "Checked as you type: write or paste a run file.";
    panel.replaceChildren(state);
    return;
  }
  inFlight = new AbortController();
  state.textContent = "Checking…";
  const query = new URLSearchParams({ dry_run: "true" });
  if (team) query.set("team", team);
  try {
    const response = await fetch(`/api/v1/runs?${query}`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/yaml", "X-CSRFToken": csrfToken, Accept: "application/json" },
      body: text,
      signal: inFlight.signal,
    });
    const body = await response.json().catch(() => ({}));
    if (mine !== sequence) return;
    if (response.ok) {
      state.textContent = `Checked as you type (${new Date().toLocaleTimeString()}): nothing was created.`;
      show(body);
    } else {
      state.textContent = "Checked as you type.";
      showRefusal(body.detail || `the check answered HTTP ${response.status}`);
    }
  } catch (error) {
    if (error.name === "AbortError" || mine !== sequence) return;
    state.textContent = "Could not reach the console to check the spec; it is checked again when you press Create run.";
  }
}

function checkSoon() {
  clearTimeout(timer);
  timer = setTimeout(check, DEBOUNCE_MS);
}

area.addEventListener("input", checkSoon);

document.getElementById("example").addEventListener("change", (event) => {
  const examples = JSON.parse(event.target.dataset.examples);
  if (examples[event.target.value]) {
    area.value = examples[event.target.value];
    check();
  }
});

// A page that was just refused on submit already shows the server's answer; else check what is there.
if (form.dataset.canLaunch === "true" && !document.getElementById("spec-errors") && area.value.trim()) check();
