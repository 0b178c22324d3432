// The Logs tab: a virtual scroller over the whole log of a run.
//
// Only the rows in view (and a margin) exist in the page, so a log of millions of
// lines stays as light as one of ten. Lines come from two places, both keyed by
// line number so that nothing can show twice:
//   - the log websocket, opened at the tail and resumed after the last line received;
//   - the logs API by range, for whatever is scrolled to, kept in an LRU of pages.
// Log text is only ever put in the page as text nodes, never parsed as HTML.

const LINE_HEIGHT = 19; // px: the height of .log-row in log_viewer.css
const MARGIN_ROWS = 25; // rows kept above and below the visible ones
const PAGE_LINES = 1000; // lines per page fetched from the API
const MAX_PAGES = 200; // at most 200,000 lines kept in memory
const MAX_FETCHES = 3; // pages fetched at once
const TAIL_LINES = 1000; // the socket starts this far before the end
const SEARCH_LIMIT = 200;
const MAX_SHOWN_CHARS = 20_000; // a longer line is cut in the view (the download has all of it)
// Browsers cap an element's height (about 17M px in Firefox, 33M in Chromium):
// past this the scroll position is scaled to the line position.
const MAX_SCROLL_PX = 8_000_000;

const root = document.getElementById("log-viewer");
const runId = root.dataset.run;
const viewport = document.getElementById("log");
const spacer = viewport.querySelector(".log-spacer");
const empty = document.getElementById("log-empty");
const latestButton = document.getElementById("log-latest");
const countLabel = document.getElementById("log-count");
const liveLabel = document.getElementById("log-live");
const searchForm = document.getElementById("log-search-form");
const searchInput = document.getElementById("log-search");
const searchStatus = document.getElementById("log-search-status");
const prevButton = document.getElementById("log-prev");
const jumpForm = document.getElementById("log-jump-form");
const jumpInput = document.getElementById("log-jump");
const permalink = document.getElementById("log-permalink");

const initialLines = Number(root.dataset.lines) || 0;
const state = {
  total: initialLines, // lines known to exist: the page's count, then the highest received
  lastLine: Math.max(0, initialLines - TAIL_LINES), // received over the socket with none missing before
  follow: true, // keep the last line in view
  target: null, // the line asked for (#L123, Go to line)
  status: root.dataset.status,
  ended: false, // the server said the log is complete: no reconnect
  awaited: null, // a line in the URL that is not written yet
};
const stats = { received: 0, duplicates: 0, gaps: 0, connects: 0 };

// ---------------------------------------------------------------- line store

const pages = new Map(); // page index → Array(PAGE_LINES) of {n, t, stream, text}; Map order is the LRU order

function pageOf(n) {
  return Math.floor((n - 1) / PAGE_LINES);
}

function store(line) {
  const index = pageOf(line.n);
  let page = pages.get(index);
  if (!page) {
    page = new Array(PAGE_LINES);
    pages.set(index, page);
    while (pages.size > MAX_PAGES) pages.delete(pages.keys().next().value);
  }
  page[(line.n - 1) % PAGE_LINES] = line;
}

function lineAt(n) {
  const page = pages.get(pageOf(n));
  return page ? page[(n - 1) % PAGE_LINES] : undefined;
}

function touch(index) {
  const page = pages.get(index);
  if (page) {
    pages.delete(index);
    pages.set(index, page);
  }
}

const fetching = new Set();
const fetchedAt = new Map(); // page index → time of its last fetch: a page the server has no more of is not asked again at once
let wantedPages = [];

function fetchPages() {
  for (const index of wantedPages) {
    if (fetching.size >= MAX_FETCHES) return;
    if (fetching.has(index) || Date.now() - (fetchedAt.get(index) || 0) < 2000) continue;
    fetchPage(index);
  }
}

async function fetchPage(index) {
  fetching.add(index);
  try {
    // A response is bounded in bytes too: a page of long lines comes in parts, each from the last one's `next`.
    const end = (index + 1) * PAGE_LINES;
    let after = index * PAGE_LINES;
    while (after < end) {
      const response = await fetch(`/api/v1/runs/${runId}/logs?after=${after}&limit=${end - after}`,
        { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      for (const line of data.lines) store(line);
      const last = data.lines.length ? data.lines[data.lines.length - 1].n : 0;
      if (last > state.total) setTotal(last);
      if (!data.lines.length || data.complete) break;
      after = data.next;
    }
  } catch (error) {
    liveLabel.textContent = `Could not load lines: ${error.message}`;
  } finally {
    fetching.delete(index);
    fetchedAt.set(index, Date.now());
    scheduleRender();
  }
}

// ---------------------------------------------------------------- ANSI colours

const COLOURS = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"];
// CSI sequences (colours are CSI ... m), OSC (titles, links), other escapes; a lone ESC.
const ESCAPE = /\x1b(?:\[([0-9;:?<=>]*)[ -\/]*([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\|$)|[PX^_][^\x1b]*(?:\x1b\\|$)|[ -\/]*[0-~])?/g;
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f]/g;

function colourClass(index, prefix) {
  return index < 8 ? `ansi-${prefix}${COLOURS[index]}` : `ansi-${prefix}bright-${COLOURS[index - 8]}`;
}

function xterm256(n) {
  if (n < 232) {
    const levels = [0, 95, 135, 175, 215, 255];
    const c = n - 16;
    return `rgb(${levels[Math.floor(c / 36)]},${levels[Math.floor(c / 6) % 6]},${levels[c % 6]})`;
  }
  const grey = 8 + 10 * (n - 232);
  return `rgb(${grey},${grey},${grey})`;
}

// An extended colour (38;5;n or 38;2;r;g;b): [a class or a CSS colour, codes used].
function extendedColour(codes, at, prefix) {
  if (codes[at + 1] === 5 && codes.length > at + 2) {
    const n = codes[at + 2];
    if (n < 16) return [{ cls: colourClass(n, prefix) }, 2];
    if (n < 256) return [{ css: xterm256(n) }, 2];
    return [null, 2];
  }
  if (codes[at + 1] === 2 && codes.length > at + 4) {
    const [r, g, b] = codes.slice(at + 2, at + 5).map((v) => Math.min(255, v));
    return [{ css: `rgb(${r},${g},${b})` }, 4];
  }
  return [null, codes.length];
}

function applySgr(style, params) {
  const codes = params === "" ? [0] : params.split(/[;:]/).map((v) => Number(v) || 0);
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (c === 0) Object.assign(style, { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false, inverse: false });
    else if (c === 1) style.bold = true;
    else if (c === 2) style.dim = true;
    else if (c === 3) style.italic = true;
    else if (c === 4) style.underline = true;
    else if (c === 7) style.inverse = true;
    else if (c === 22) style.bold = style.dim = false;
    else if (c === 23) style.italic = false;
    else if (c === 24) style.underline = false;
    else if (c === 27) style.inverse = false;
    else if (c >= 30 && c <= 37) style.fg = { cls: colourClass(c - 30, "") };
    else if (c >= 90 && c <= 97) style.fg = { cls: colourClass(c - 90 + 8, "") };
    else if (c === 39) style.fg = null;
    else if (c >= 40 && c <= 47) style.bg = { cls: colourClass(c - 40, "bg-") };
    else if (c >= 100 && c <= 107) style.bg = { cls: colourClass(c - 100 + 8, "bg-") };
    else if (c === 49) style.bg = null;
    else if (c === 38 || c === 48) {
      const [colour, used] = extendedColour(codes, i, c === 38 ? "" : "bg-");
      if (colour) style[c === 38 ? "fg" : "bg"] = colour;
      i += used;
    }
  }
}

// The text of a line as [{text, classes, css}], escape sequences applied and removed.
// Colours start afresh on every line: a line can be shown without the ones before it.
function ansiSegments(raw) {
  const out = [];
  const style = { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false, inverse: false };
  const push = (text) => {
    text = text.replace(CONTROL, "");
    if (!text) return;
    const classes = [];
    const css = {};
    for (const [which, colour] of [["color", style.fg], ["backgroundColor", style.bg]]) {
      if (colour && colour.cls) classes.push(colour.cls);
      if (colour && colour.css) css[which] = colour.css;
    }
    for (const flag of ["bold", "dim", "italic", "underline", "inverse"]) if (style[flag]) classes.push(`ansi-${flag}`);
    const previous = out[out.length - 1];
    if (previous && previous.classes.join() === classes.join() && JSON.stringify(previous.css) === JSON.stringify(css)) {
      previous.text += text; // an escape that changed nothing (a cursor move, a title) does not split the text
    } else {
      out.push({ text, classes, css });
    }
  };
  let last = 0;
  if (raw.includes("\x1b")) {
    for (const match of raw.matchAll(ESCAPE)) {
      push(raw.slice(last, match.index));
      last = match.index + match[0].length;
      if (match[2] === "m" && !/[?<=>]/.test(match[1])) applySgr(style, match[1]);
    }
  }
  push(raw.slice(last));
  return out;
}

// Text nodes for `text`, with every occurrence of `needle` (lower case) in a <mark>.
function marked(text, needle) {
  if (!needle) return [document.createTextNode(text)];
  const nodes = [];
  const lower = text.toLowerCase();
  let from = 0;
  for (let at = lower.indexOf(needle); at >= 0; at = lower.indexOf(needle, from)) {
    if (at > from) nodes.push(document.createTextNode(text.slice(from, at)));
    const mark = document.createElement("mark");
    mark.textContent = text.slice(at, at + needle.length);
    nodes.push(mark);
    from = at + needle.length;
  }
  if (from < text.length) nodes.push(document.createTextNode(text.slice(from)));
  return nodes;
}

// ---------------------------------------------------------------- rows

const rows = new Map(); // line number → row element
let renderScheduled = false;
let expectedScrollTop = null; // set by our own scrolling, so that it is not taken for the user's

function geometry() {
  const view = viewport.clientHeight;
  const full = state.total * LINE_HEIGHT;
  const height = Math.min(full, MAX_SCROLL_PX);
  const ratio = full > height && height > view ? (full - view) / (height - view) : 1;
  return { view, full, height, ratio };
}

function makeRow(n) {
  const row = document.createElement("div");
  row.className = "log-row";
  row.dataset.n = n;
  const number = document.createElement("a");
  number.className = "log-n";
  number.href = `#L${n}`;
  number.tabIndex = -1; // the log scrolls by keyboard; "Go to line" reaches any line
  number.textContent = n;
  const text = document.createElement("span");
  text.className = "log-text";
  row.append(number, text);
  return row;
}

function fillRow(row, line, needle) {
  const nodes = [];
  const cut = line.text.length > MAX_SHOWN_CHARS;
  for (const segment of ansiSegments(cut ? line.text.slice(0, MAX_SHOWN_CHARS) : line.text)) {
    const parts = marked(segment.text, needle);
    if (!segment.classes.length && !Object.keys(segment.css).length) {
      nodes.push(...parts);
      continue;
    }
    const span = document.createElement("span");
    span.className = segment.classes.join(" ");
    Object.assign(span.style, segment.css);
    span.append(...parts);
    nodes.push(span);
  }
  if (cut) {
    const rest = document.createElement("span");
    rest.className = "log-cut";
    rest.textContent = ` … ${(line.text.length - MAX_SHOWN_CHARS).toLocaleString("en")} more characters (download the log for all)`;
    nodes.push(rest);
  }
  row.lastChild.replaceChildren(...nodes);
  row.classList.toggle("is-stderr", line.stream === "stderr");
  row.classList.remove("is-pending");
  row.firstChild.title = `${line.t}${line.stream === "stderr" ? " · stderr" : ""}`;
  row.dataset.filled = needle || "-";
}

function scheduleRender() {
  if (renderScheduled) return;
  renderScheduled = true;
  requestAnimationFrame(render);
}

function render() {
  renderScheduled = false;
  const g = geometry();
  spacer.style.height = `${g.height}px`;
  if (state.follow) scrollToBottom(g);
  const top = viewport.scrollTop;
  const virtualTop = top * g.ratio;
  const first = Math.max(1, Math.floor(virtualTop / LINE_HEIGHT) + 1 - MARGIN_ROWS);
  const last = Math.min(state.total, Math.ceil((virtualTop + g.view) / LINE_HEIGHT) + MARGIN_ROWS);
  for (const [n, row] of rows) {
    if (n < first || n > last) {
      row.remove();
      rows.delete(n);
    }
  }
  const needle = search.active ? search.query.toLowerCase() : "";
  const wanted = new Set();
  // The rows kept are consecutive: new ones go before or after them, so the
  // page holds the lines in order (for screen readers and copying).
  let lowest = Infinity;
  for (const n of rows.keys()) lowest = Math.min(lowest, n);
  const above = document.createDocumentFragment();
  const below = document.createDocumentFragment();
  for (let n = first; n <= last; n++) {
    const y = top + (n - 1) * LINE_HEIGHT - virtualTop;
    if (y < 0 || y + LINE_HEIGHT > g.height) continue; // scaled scrolling: never grow the scroll area
    let row = rows.get(n);
    if (!row) {
      row = makeRow(n);
      rows.set(n, row);
      (n < lowest ? above : below).append(row);
    }
    row.style.top = `${y}px`;
    const line = lineAt(n);
    if (line) {
      if (row.dataset.filled !== (needle || "-")) fillRow(row, line, needle);
    } else {
      row.classList.add("is-pending");
      // Lines after lastLine are on their way over the socket.
      if (n <= state.lastLine) wanted.add(pageOf(n));
    }
    row.classList.toggle("is-target", n === state.target);
    row.classList.toggle("is-hit", search.active && n === search.currentLine());
  }
  spacer.prepend(above);
  spacer.append(below);
  for (let index = pageOf(first); index <= pageOf(Math.max(first, last)); index++) touch(index);
  wantedPages = [...wanted];
  fetchPages();

  latestButton.hidden = state.follow || g.full <= g.view;
  countLabel.textContent = `${state.total.toLocaleString("en")} line${state.total === 1 ? "" : "s"}`;
  spacer.style.setProperty("--digits", String(Math.max(4, String(state.total).length)));
  jumpInput.max = Math.max(1, state.total);
  empty.hidden = state.total > 0;
  if (state.total === 0) {
    empty.textContent = ["pending", "initializing"].includes(state.status)
      ? "Waiting for the run to start…" : "No output yet.";
  }
}

function setTotal(total) {
  if (total <= state.total) return;
  // Keep the lines in view where they are when the scroll area grows under them.
  const before = geometry();
  const virtualTop = viewport.scrollTop * before.ratio;
  state.total = total;
  const after = geometry();
  spacer.style.height = `${after.height}px`;
  if (!state.follow && after.ratio !== before.ratio) setScrollTop(virtualTop / after.ratio);
  if (state.awaited && total >= state.awaited) {
    const n = state.awaited;
    state.awaited = null;
    goToLine(n, { updateUrl: false });
  }
  scheduleRender();
}

function setScrollTop(value) {
  viewport.scrollTop = value;
  expectedScrollTop = viewport.scrollTop;
}

function scrollToBottom(g = geometry()) {
  spacer.style.height = `${g.height}px`;
  setScrollTop(g.height);
}

function isVisible(n) {
  const g = geometry();
  const y = (n - 1) * LINE_HEIGHT - viewport.scrollTop * g.ratio;
  return y >= 0 && y + LINE_HEIGHT <= g.view;
}

function scrollToLine(n) {
  state.follow = false;
  if (isVisible(n)) return;
  const g = geometry();
  const virtualTop = (n - 1) * LINE_HEIGHT - Math.floor(g.view / 3);
  setScrollTop(Math.max(0, virtualTop / g.ratio));
}

viewport.addEventListener("scroll", () => {
  // Scrolling the user did (wheel, keys, scroll bar): follow only from the bottom.
  if (expectedScrollTop === null || Math.abs(viewport.scrollTop - expectedScrollTop) > 1) {
    state.follow = viewport.scrollTop + viewport.clientHeight >= viewport.scrollHeight - LINE_HEIGHT / 2;
  }
  expectedScrollTop = null;
  scheduleRender();
}, { passive: true });

new ResizeObserver(scheduleRender).observe(viewport);

latestButton.addEventListener("click", () => {
  state.follow = true;
  scheduleRender();
  viewport.focus();
});

// ---------------------------------------------------------------- lines to go to

function goToLine(n, { updateUrl = true } = {}) {
  if (!Number.isFinite(n) || state.total < 1) return;
  n = Math.min(Math.max(1, Math.round(n)), state.total);
  state.target = n;
  scrollToLine(n);
  if (updateUrl) history.replaceState(null, "", `#L${n}`);
  permalink.href = `#L${n}`;
  permalink.textContent = `Link to line ${n.toLocaleString("en")}`;
  permalink.hidden = false;
  jumpInput.value = n;
  scheduleRender();
}

function lineInHash() {
  const match = /^#L(\d+)$/.exec(location.hash);
  return match ? Number(match[1]) : null;
}

function openAt(n) {
  if (n > state.total && root.dataset.complete !== "true") state.awaited = n;
  else goToLine(n, { updateUrl: false });
}

window.addEventListener("hashchange", () => {
  const n = lineInHash();
  if (n) openAt(n);
});

jumpForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const n = Number(jumpInput.value);
  if (jumpInput.value && n >= 1) goToLine(n);
});
// ---------------------------------------------------------------- search

const search = {
  query: "",
  active: false,
  hits: [], // {n, t, stream, text}, in line order, as the server found them
  next: 0, // the server's cursor: search on after this line
  done: true,
  index: -1,
  generation: 0, // a newer search makes older answers stale
  currentLine() {
    return this.index >= 0 ? this.hits[this.index].n : null;
  },
};

async function loadHits() {
  const generation = search.generation;
  searchStatus.textContent = "Searching the whole log…";
  const params = new URLSearchParams({ q: search.query, after: search.next, limit: SEARCH_LIMIT });
  const response = await fetch(`/api/v1/runs/${runId}/logs/search?${params}`,
    { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (generation !== search.generation) return false;
  if (!response.ok) {
    searchStatus.textContent = `Search failed (HTTP ${response.status}).`;
    return false;
  }
  const data = await response.json();
  if (generation !== search.generation) return false;
  for (const hit of data.hits) {
    store(hit);
    if (hit.n > state.total) setTotal(hit.n);
  }
  search.hits.push(...data.hits);
  search.next = data.next;
  search.done = data.done;
  return true;
}

async function find(step) {
  const query = searchInput.value;
  if (!query.trim()) {
    clearSearch();
    return;
  }
  let index;
  if (query !== search.query || !search.active) {
    // A new search starts at its first hit, whichever way it was asked.
    search.generation++;
    Object.assign(search, { query, active: true, hits: [], next: 0, done: false, index: -1 });
    if (!(await loadHits())) return;
    index = 0;
  } else {
    index = search.index + step;
    if (index >= search.hits.length && !search.done && !(await loadHits())) return;
  }
  if (!search.hits.length) {
    search.index = -1;
    searchStatus.textContent = `No line contains “${query}”.`;
    scheduleRender();
    return;
  }
  if (index >= search.hits.length) index = 0; // wrap around
  if (index < 0) index = search.hits.length - 1;
  search.index = index;
  showHit();
}

function showHit() {
  const hit = search.hits[search.index];
  const more = search.done ? "" : " (more…)";
  searchStatus.textContent = `Hit ${search.index + 1} of ${search.hits.length}${more} · line ${hit.n.toLocaleString("en")}`;
  state.target = null;
  scrollToLine(hit.n);
  scheduleRender();
}

function clearSearch() {
  search.generation++;
  Object.assign(search, { query: "", active: false, hits: [], index: -1, done: true, next: 0 });
  searchStatus.textContent = "";
  scheduleRender();
}

searchForm.addEventListener("submit", (event) => {
  event.preventDefault();
  find(1);
});
prevButton.addEventListener("click", () => find(-1));
searchInput.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && event.shiftKey) {
    event.preventDefault();
    find(-1);
  } else if (event.key === "Escape") {
    searchInput.value = "";
    clearSearch();
  }
});
searchInput.addEventListener("search", () => {
  if (!searchInput.value) clearSearch();
});
document.addEventListener("keydown", (event) => {
  const typing = event.target.closest("input, textarea, select, [contenteditable]");
  if (event.key === "/" && !typing && !event.ctrlKey && !event.metaKey && !event.altKey) {
    event.preventDefault();
    searchInput.focus();
    searchInput.select();
  }
});

// ---------------------------------------------------------------- live tail

let socket = null;
let retries = 0;
const scheme = location.protocol === "https:" ? "wss" : "ws";
const FINAL = ["completed", "failed", "terminated"];

function showLive(text) {
  liveLabel.textContent = text;
}

function connect() {
  socket = new WebSocket(`${scheme}://${location.host}/ws/runs/${runId}/logs/?after=${state.lastLine}`);
  socket.addEventListener("open", () => {
    stats.connects++;
    showLive(FINAL.includes(state.status) ? "Loading the end of the log…" : "Live: new lines appear as they are written.");
  });
  socket.addEventListener("message", (event) => {
    retries = 0;
    const message = JSON.parse(event.data);
    if (message.type === "lines") receive(message.lines);
    else if (message.type === "status") {
      state.status = message.to;
      root.dataset.status = message.to;
      if (!FINAL.includes(message.to)) showLive(`Live · ${message.to}.`);
      scheduleRender();
    } else if (message.type === "end") {
      state.ended = true;
      state.status = message.status;
      root.dataset.status = message.status;
      showLive(`The run is ${message.status}: this is the whole log.`);
      socket.close();
    }
  });
  socket.addEventListener("close", (event) => {
    if (state.ended) return;
    if (event.code === 4401) return showLive("Signed out: reload the page to sign in again.");
    if (event.code === 4404) return showLive("This run is not in your teams.");
    const delay = Math.min(10000, 500 * 2 ** retries++);
    showLive(`Connection lost: resuming after line ${state.lastLine.toLocaleString("en")} in ${Math.ceil(delay / 1000)} s…`);
    setTimeout(connect, delay);
  });
}

function receive(lines) {
  let highest = 0;
  for (const line of lines) {
    stats.received++;
    if (line.n <= state.lastLine) {
      stats.duplicates++; // the server sends only lines after `after`; never show one twice anyway
      continue;
    }
    // A gap stays fetchable by range: lines up to lastLine are asked of the API when missing.
    if (line.n !== state.lastLine + 1) stats.gaps++;
    store(line);
    state.lastLine = line.n;
    highest = line.n;
  }
  if (highest > state.total) setTotal(highest);
  scheduleRender();
}

// ---------------------------------------------------------------- start

render();
const asked = lineInHash();
if (asked) openAt(asked);
connect();

// For tests and the curious: the socket can be cut, the state read.
window.runyardLog = {
  get socket() { return socket; },
  lastLine: () => state.lastLine,
  lineCount: () => state.total,
  following: () => state.follow,
  lineText: (n) => (lineAt(n) ? lineAt(n).text : null),
  pagesInMemory: () => pages.size,
  stats,
};
