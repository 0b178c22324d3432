// The one door to /ws/runs/ on a page: it keeps the socket open (reconnecting with
// backoff) and turns each message into a DOM event; the page's fragments listen with
// htmx (hx-trigger) and read themselves again from the server. No other script opens
// /ws/runs/ or fetches and replaces a fragment by hand.
//
// A message {type, run, ...} becomes the CustomEvent "run:TYPE" (run:status,
// run:progress, run:waiting), its detail the message, dispatched
//   - on document.body, bubbling: `hx-trigger="run:status from:body"` and page scripts;
//   - on each element marked data-live-run="ID" of that run, not bubbling: a fragment of
//     one run listens with a plain `hx-trigger="run:status"`. (htmx may not evaluate an
//     event filter under the pages' Content-Security-Policy, so the module does the filtering.)
// And, on document.body:
//   - run:live each time the socket opens: what changed while the page loaded or the
//     socket was down was never sent, so the fragments that listen read themselves again;
//   - run:queue when a run joins or leaves `pending`: the places of the others in the
//     team's queue change;
//   - run:unlisted when a run that no element follows changes status (a new run, for the list).
// A run may report progress many times a second: per run, run:progress goes out at most
// every 2 s, with the latest report (the last one is never held back for good); so does
// run:unlisted, for all runs at once.
// Messages and states: dashboard/consumers.py RunsConsumer, runs/live.py.

const EVERY_MS = 2000;
const FIRST_RETRY_MS = 500;
const LAST_RETRY_MS = 10000;
const stateText = {
  open: "Live: status changes appear as they happen.",
  reconnecting: "Reconnecting…",
  "signed-out": "Signed out: reload the page to sign in again.",
  "no-team": "You are in no team any more: there is nothing to follow.",
};

let socket = null;
let retry = FIRST_RETRY_MS;

function dispatch(target, type, detail, bubbles) {
  target.dispatchEvent(new CustomEvent(`run:${type}`, { detail, bubbles }));
}

function announce(type, message) {
  dispatch(document.body, type, message, true);
  for (const element of followers(message.run)) dispatch(element, type, message, false);
}

function followers(runId) {
  return document.querySelectorAll(`[data-live-run="${Number(runId)}"]`);
}

// At most one event per key every EVERY_MS: the first at once, the latest of the
// rest when the time is up.
const held = new Map(); // key -> { latest: message | null }
function atMostEvery(key, send, message) {
  const entry = held.get(key);
  if (entry) {
    entry.latest = message;
    return;
  }
  send(message);
  const fresh = { latest: null };
  held.set(key, fresh);
  const flush = () => {
    if (fresh.latest === null) {
      held.delete(key);
      return;
    }
    send(fresh.latest);
    fresh.latest = null;
    setTimeout(flush, EVERY_MS);
  };
  setTimeout(flush, EVERY_MS);
}

function received(message) {
  if (message.type === "progress") {
    atMostEvery(`progress-${message.run}`, (latest) => announce("progress", latest), message);
  } else if (message.type === "status") {
    const unlisted = followers(message.run).length === 0;
    announce("status", message);
    if (message.from === "pending" || message.to === "pending") dispatch(document.body, "queue", message, true);
    if (unlisted) atMostEvery("unlisted", (latest) => dispatch(document.body, "unlisted", latest, true), message);
  } else if (message.type === "waiting") {
    const unlisted = followers(message.run).length === 0;
    announce("waiting", message);
    if (unlisted) atMostEvery("unlisted", (latest) => dispatch(document.body, "unlisted", latest, true), message);
  }
}

function say(state) {
  document.body.dataset.live = state;
  const shown = document.getElementById("live-state");
  if (shown) shown.textContent = stateText[state];
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws/runs/`);
  socket.addEventListener("open", () => {
    retry = FIRST_RETRY_MS;
    say("open");
    dispatch(document.body, "live", {}, true);
  });
  socket.addEventListener("message", (event) => received(JSON.parse(event.data)));
  socket.addEventListener("close", (event) => {
    // Signed out or in no team: the server will say the same again, so stop asking.
    if (event.code === 4401) return say("signed-out");
    if (event.code === 4403) return say("no-team");
    say("reconnecting");
    // Spread out, so that many pages do not all come back at the same moment after a restart.
    setTimeout(connect, retry / 2 + Math.random() * retry / 2);
    retry = Math.min(retry * 2, LAST_RETRY_MS);
  });
}

connect();
