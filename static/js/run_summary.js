// Facts and timeline follow the status and progress live, like the header.
// Progress swaps only its own line, so a reader's selection elsewhere stays.
const refresh = (id) => async () => {
  const page = new DOMParser().parseFromString(await (await fetch(location.pathname)).text(), "text/html");
  const fresh = page.getElementById(id);
  if (fresh) document.getElementById(id).replaceWith(fresh);
};
document.addEventListener("run-status", refresh("summary-body"));
document.addEventListener("run-progress", refresh("progress-fact"));
