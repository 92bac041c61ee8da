// Train jobs side by side, `#/compare?ids=a,b,…`: their loss and validation curves on shared axes (by step or by tokens
// seen), the spec fields in which they differ with each run's dataset mixture, and the eval jobs run on them.

import { request } from "./api.js";
import { drawLinesChart } from "./chart.js";
import * as fmt from "./format.js";
import { $, cell } from "./ui.js";

const EVALS_LISTED = 1000;

// Tokens one optimizer step trains on: the spec's total_batch_size, else one micro-batch on every rank (the rule of
// TrainSpec.total_tokens_per_step, which fills no field in the stored spec).
export function tokensPerStep(spec) {
  return spec.total_batch_size ?? spec.device_batch_size * spec.max_seq_len * spec.nproc_per_node;
}

// A conversion's sources as one line: each source's share of the characters, and the total. A source named by a path
// is shown by its last part (the whole name is in the manifest, and in the cell's title).
export function mixtureSummary(manifest) {
  if (!manifest) return "–";
  const sources = (manifest.sources || []).map((s) => `${s.name.split("/").pop()} ${fmt.percent(s.share_chars)}`);
  const chars = manifest.totals?.chars;
  return `${sources.join(" · ") || "no sources listed"}${chars ? ` (${fmt.count(chars)} chars)` : ""}`;
}

// {"a.b": value} for every leaf of a spec; lists stay whole.
function flatten(value, prefix = "", out = {}) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [key, inner] of Object.entries(value)) flatten(inner, prefix ? `${prefix}.${key}` : key, out);
  } else {
    out[prefix] = value;
  }
  return out;
}

function shown(value) {
  if (value === undefined) return "–";
  return typeof value === "string" ? value : JSON.stringify(value);
}

async function loadRun(id) {
  const [job, metrics, dataset] = await Promise.all([
    request(`/jobs/${id}`),
    request(`/jobs/${id}/metrics`),
    request(`/jobs/${id}/dataset`).catch((error) => (error.status === 404 ? null : Promise.reject(error))),
  ]);
  return { id, label: id.slice(0, 8), job, metrics, dataset };
}

function drawCurves(runs) {
  const byTokens = $("#compare-x").value === "tokens";
  const xName = byTokens ? "tokens" : "step";
  const series = (key) =>
    runs.map((run) => {
      const scale = byTokens ? tokensPerStep(run.job.spec) : 1;
      const points = run.metrics.filter((r) => r[key] !== null && r[key] !== undefined).map((r) => ({ x: r.step * scale, y: r[key] }));
      return { id: run.id, label: run.label, points };
    });
  drawLinesChart($("#compare-loss"), series("loss"), { name: "Training loss", xName });
  drawLinesChart($("#compare-bpb"), series("val_bpb"), { name: "Validation bits per byte", xName });
  for (const caption of document.querySelectorAll(".compare-axis")) caption.textContent = byTokens ? "tokens seen" : "step";
}

function renderDifferences(runs) {
  const head = $("#compare-fields thead tr");
  head.replaceChildren();
  cell(head, "Field");
  for (const run of runs) {
    const th = cell(head, "");
    const link = document.createElement("a");
    link.href = `#/jobs/${run.id}`;
    link.textContent = run.id;
    th.append(link);
  }
  const flat = runs.map((run) => flatten(run.job.spec));
  const fields = [...new Set(flat.flatMap(Object.keys))].sort();
  const differing = fields.filter((field) => new Set(flat.map((spec) => JSON.stringify(spec[field]))).size > 1);
  const rows = [
    ["dataset mixture", runs.map((run) => mixtureSummary(run.dataset))],
    ["final val_bpb", runs.map((run) => fmt.number(run.job.result?.val_bpb ?? run.job.progress?.val_bpb))],
    ...differing.map((field) => [field, flat.map((spec) => shown(spec[field]))]),
  ];
  const tbody = $("#compare-fields tbody");
  tbody.replaceChildren();
  for (const [field, values] of rows) {
    const row = document.createElement("tr");
    row.dataset.field = field;
    cell(row, field);
    values.forEach((value, i) => {
      const td = cell(row, value);
      if (field === "dataset mixture") td.title = (runs[i].dataset?.sources || []).map((s) => s.name).join("\n");
    });
    tbody.append(row);
  }
  $("#compare-summary").textContent =
    `${runs.length} runs; ${differing.length} spec ${differing.length === 1 ? "field differs" : "fields differ"}` +
    (differing.length ? "" : " (the runs differ only in their data, if at all)");
}

// The eval jobs of these train jobs, newest first (among the newest EVALS_LISTED eval jobs).
export async function evalsOf(trainIds) {
  const ids = new Set(trainIds);
  const list = await request(`/jobs?kind=eval&limit=${EVALS_LISTED}`);
  return list.jobs.filter((job) => ids.has(job.spec.train_job));
}

async function renderEvals(runs) {
  const evals = await evalsOf(runs.map((run) => run.id));
  fillEvalTable($("#compare-evals tbody"), evals, true);
  $("#compare-no-evals").hidden = evals.length > 0;
}

// Eval jobs as table rows (shared with a train job's page); `withRun` adds the train job's column.
export function fillEvalTable(tbody, evals, withRun) {
  tbody.replaceChildren();
  for (const job of evals) {
    const row = document.createElement("tr");
    row.dataset.jobId = job.id;
    if (withRun) cell(row, job.spec.train_job.slice(0, 8));
    const link = document.createElement("a");
    link.href = `#/jobs/${job.id}`;
    link.textContent = job.id;
    cell(row, "").append(link);
    cell(row, job.state);
    cell(row, fmt.count(job.spec.step), "num");
    cell(row, job.spec.dataset || "–");
    cell(row, fmt.count(job.spec.tokens), "num");
    cell(row, job.result ? job.result.val_bpb.toFixed(4) : "–", "num");
    tbody.append(row);
  }
}

export async function showCompare(ids, signal) {
  document.title = "Compare runs · openseek-nanochat";
  $("#compare-ids").textContent = ids.join(", ");
  const runs = await Promise.all(ids.map(loadRun));
  if (signal.aborted) return;
  $("#compare-x").onchange = () => drawCurves(runs);
  drawCurves(runs);
  renderDifferences(runs);
  await renderEvals(runs);
}
