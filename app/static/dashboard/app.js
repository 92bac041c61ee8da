// The dashboard: `#/` lists the jobs, `#/jobs/<id>` shows one, `#/compare?ids=a,b` compares train jobs. Each view runs until the next navigation aborts it.

import { getToken, setToken } from "./api.js";
import { showCompare } from "./compare.js";
import { showJob } from "./job.js";
import { showList } from "./list.js";
import { $, reportError, showNotice } from "./ui.js";

let current = null;

function route() {
  current?.abort();
  current = new AbortController();
  showNotice("");
  const job = location.hash.match(/^#\/jobs\/([^/?]+)$/);
  const compare = location.hash.match(/^#\/compare\?ids=([^&]*)$/);
  $("#list-view").hidden = Boolean(job || compare);
  $("#job-view").hidden = !job;
  $("#compare-view").hidden = !compare;
  let view;
  if (job) view = showJob(decodeURIComponent(job[1]), current.signal);
  else if (compare) view = showCompare(decodeURIComponent(compare[1]).split(",").filter(Boolean), current.signal);
  else view = showList(current.signal);
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
