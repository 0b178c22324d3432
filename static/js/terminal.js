// The Terminal tab: xterm.js over /ws/runs/ID/terminal/ (binary frames for the
// terminal's bytes, JSON text frames for control). A dropped connection comes
// back with the session id and resumes the same shell; the server replays what
// the shell printed, so the screen is redrawn from the start.
import { Terminal } from "../vendor/xterm.mjs";
import { FitAddon } from "../vendor/addon-fit.mjs";

const card = document.getElementById("terminal-card");
const form = document.getElementById("terminal-form");
const runId = card.dataset.run;
const screen = document.getElementById("terminal-screen");
const state = document.getElementById("terminal-state");
const modeSelect = document.getElementById("terminal-mode");
const endButton = document.getElementById("terminal-end");
const openButton = document.getElementById("terminal-open");

let term = null;
let fit = null;
let socket = null;
let session = null;      // {id, mode, writable, resume_seconds} from the server
let wanted = false;      // the user wants a terminal open: reconnect when it drops
let retry = 500;
let droppedAt = 0;
const encoder = new TextEncoder();

function say(text) { state.textContent = text; }

function ensureTerminal() {
  if (term) return;
  term = new Terminal({ cursorBlink: true, fontSize: 14, lineHeight: 1.15, scrollback: 5000,
                        fontFamily: "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace" });
  fit = new FitAddon();
  term.loadAddon(fit);
  term.open(screen);
  fit.fit();
  term.onData((data) => send(encoder.encode(data)));
  term.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0))));
  term.onResize(({ cols, rows }) => control({ type: "resize", cols, rows }));
  new ResizeObserver(() => fit.fit()).observe(screen);
  window.__runyardTerminal = term;  // for the tests: the screen's text
}

function send(bytes) {
  if (socket && socket.readyState === WebSocket.OPEN && session && session.writable) socket.send(bytes);
}

function control(message) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

function connect() {
  ensureTerminal();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const params = new URLSearchParams({ mode: session ? session.mode : modeSelect.value, cols: term.cols, rows: term.rows });
  if (session) params.set("session", session.id);
  socket = new WebSocket(`${scheme}://${location.host}/ws/runs/${runId}/terminal/?${params}`);
  socket.binaryType = "arraybuffer";
  window.__runyardSocket = socket;  // for the tests: to cut the connection
  say(session ? "Reconnecting…" : "Opening…");
  socket.onmessage = (event) => {
    if (typeof event.data !== "string") { term.write(new Uint8Array(event.data)); return; }
    const message = JSON.parse(event.data);
    if (message.type === "session") {
      const resumedSame = session && message.resumed;
      if (session && !message.resumed) term.write("\r\n\x1b[33m[the previous session had ended: this is a new one]\x1b[0m\r\n");
      else if (resumedSame) term.reset();  // the server replays the whole session
      session = message;
      retry = 500;
      say(message.mode === "attach"
        ? `Attached to the main process of run #${runId}: lines you type go to its input on Enter; Ctrl-C interrupts the run.`
        : `Connected: a shell in run #${runId}.`);
      endButton.hidden = false;
      openButton.hidden = true;
      modeSelect.disabled = true;
      term.focus();
    } else if (message.type === "exit") {
      wanted = false;
      session = null;
      term.write("\r\n\x1b[2m[session ended]\x1b[0m\r\n");
      say("The session ended. Open a new one to go on.");
      endButton.hidden = true;
      openButton.hidden = false;
      modeSelect.disabled = false;
    } else if (message.type === "error") {
      wanted = false;
      say(message.detail);
    }
  };
  socket.onclose = () => {
    if (!wanted) return;
    if (!droppedAt) droppedAt = Date.now();
    const keep = (session && session.resume_seconds) || 60;
    if (Date.now() - droppedAt > keep * 1000) { wanted = false; say("Disconnected."); return; }
    say("Connection lost: reconnecting…");
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 5000);
  };
  socket.onopen = () => { droppedAt = 0; };
}

if (form) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (socket && socket.readyState <= WebSocket.OPEN && session) { term.focus(); return; }
    wanted = true;
    session = null;
    connect();
  });
  endButton.addEventListener("click", () => { control({ type: "close" }); });
}
