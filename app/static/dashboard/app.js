// The dashboard: `#/` lists the jobs, `#/jobs/<id>` shows one. Each view runs until the next navigation aborts it.

import { getToken, setToken } from "./api.js";
import { showJob } from "./job.js";
import { showList } from "./list.js";
import { $, reportError, showNotice } from "./ui.js";

let current = null;

function route() {
  current?.abort();
  current = new AbortController();
  showNotice("");
  const match = location.hash.match(/^#\/jobs\/([^/]+)$/);
  $("#list-view").hidden = Boolean(match);
  $("#job-view").hidden = !match;
  const view = match ? showJob(decodeURIComponent(match[1]), current.signal) : showList(current.signal);
  view.catch(reportError);
  window.scrollTo(0, 0);
}

$("#token").value = getToken();
$("#token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken($("#token").value.trim());
  route();
});
window.addEventListener("hashchange", route);
route();
