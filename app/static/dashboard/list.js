// The job list: every job, newest first, refreshed every few seconds while the page is visible. Train jobs have a
// "compare" box; two or more ticked open the comparison view.

import { request } from "./api.js";
import * as fmt from "./format.js";
import { $, cell, reportError, showNotice, showProgress, showState } from "./ui.js";

const REFRESH_MS = 1500;
const PAGE = 100;

const selected = new Set(); // train jobs ticked for comparison; kept across refreshes of the list

function renderRow(job) {
  const row = document.createElement("tr");
  row.dataset.jobId = job.id;
  const pick = cell(row, "");
  if (job.kind === "train") {
    const box = document.createElement("input");
    box.type = "checkbox";
    box.className = "compare";
    box.checked = selected.has(job.id);
    box.setAttribute("aria-label", `compare job ${job.id}`);
    box.onchange = () => {
      if (box.checked) selected.add(job.id);
      else selected.delete(job.id);
      showSelection();
    };
    pick.append(box);
  }
  const link = document.createElement("a");
  link.href = `#/jobs/${job.id}`;
  link.textContent = job.spec.name || job.id;
  link.title = `job ${job.id}`;
  cell(row, "").append(link);
  cell(row, job.kind);
  showState(cell(row, "").appendChild(document.createElement("span")), job.state);

  const progress = document.createElement("div");
  progress.className = "progress-cell";
  cell(row, "").append(progress);
  const bar = document.createElement("progress");
  bar.max = 1;
  bar.setAttribute("aria-label", `progress of job ${job.id}`);
  const text = document.createElement("span");
  progress.append(bar, text);
  showProgress(bar, text, job.progress?.fraction, job.state);

  cell(row, fmt.rate(job), "num");
  cell(row, fmt.eta(job), "num");
  cell(row, fmt.time(job.started_at));
  cell(row, fmt.duration(fmt.elapsed(job)), "num");
  return row;
}

async function refresh() {
  const list = await request(`/jobs?limit=${PAGE}`);
  const tbody = $("#jobs tbody");
  const focused = document.activeElement?.closest("#jobs tr")?.dataset.jobId;
  tbody.replaceChildren(...list.jobs.map(renderRow));
  if (focused) tbody.querySelector(`tr[data-job-id="${focused}"] a`)?.focus(); // keep keyboard users' place
  $("#no-jobs").hidden = list.total > 0;
  const byState = {};
  for (const job of list.jobs) byState[job.state] = (byState[job.state] || 0) + 1;
  const parts = Object.entries(byState).map(([state, n]) => `${n} ${state}`);
  const shown = list.total > list.jobs.length ? ` (the newest ${list.jobs.length} shown)` : "";
  $("#list-summary").textContent = list.total ? `${list.total} jobs${shown}: ${parts.join(", ")}` : "";
  showNotice("");
}

function showSelection() {
  const button = $("#compare-selected");
  button.disabled = selected.size < 2;
  button.textContent = selected.size ? `Compare ${selected.size} selected runs` : "Compare selected runs";
}

// Shows the list until `signal` aborts.
export async function showList(signal) {
  document.title = "Jobs · openseek-nanochat";
  showSelection();
  $("#compare-selected").onclick = () => {
    location.hash = `#/compare?ids=${[...selected].map(encodeURIComponent).join(",")}`;
  };
  while (!signal.aborted) {
    if (!document.hidden) {
      try {
        await refresh();
      } catch (error) {
        reportError(error);
      }
    }
    await new Promise((resolve) => setTimeout(resolve, REFRESH_MS));
  }
}
