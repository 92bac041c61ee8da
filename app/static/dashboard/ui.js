// Small DOM helpers shared by the views, and the page-wide notice.

export const $ = (selector) => document.querySelector(selector);

export function cell(row, text, className = "") {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.append(td);
  return td;
}

export function showState(node, state) {
  node.textContent = state;
  node.className = `state state-${state}`;
}

// A <progress> with its percentage beside it; indeterminate while a running job has no total yet.
export function showProgress(bar, textNode, fraction, state) {
  if (fraction === null || fraction === undefined) {
    if (state === "running") bar.removeAttribute("value");
    else bar.value = 0;
    textNode.textContent = "";
  } else {
    bar.value = fraction;
    textNode.textContent = `${(100 * fraction).toFixed(1)} %`;
  }
}

export function fillFacts(dl, facts) {
  dl.replaceChildren();
  for (const [term, value] of facts) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = term;
    dd.textContent = value;
    dl.append(dt, dd);
  }
}

export function showNotice(message) {
  const notice = $("#notice");
  notice.textContent = message;
  notice.hidden = !message;
}

// Errors from the API, said where the user looks; a missing or wrong token points at the token field.
export function reportError(error) {
  if (error.status === 401) {
    showNotice("This server needs an API token: enter it above and press Save.");
    $("#token").focus();
  } else {
    showNotice(error.message || String(error));
  }
}
