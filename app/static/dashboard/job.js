// One job's page: state and progress, its log, the shards of a conversion or the curves of a training (with a box to
// try the model and its evaluations), its spec.
// Everything after the first answer arrives on the job's event stream; the page stops listening when it is left.

import { followEvents, request } from "./api.js";
import { drawLineChart } from "./chart.js";
import { evalsOf, fillEvalTable } from "./compare.js";
import { DatasetView } from "./dataset.js";
import * as fmt from "./format.js";
import { $, cell, fillFacts, reportError, showNotice, showProgress, showState } from "./ui.js";

const LOG_TAIL_BYTES = 64 * 1024; // how much of a long log to show on arrival
const LOG_LINES = 400;
const EVENT_PREFIX = "@@openseek-event "; // the lines job processes print for their worker
const FREQUENT_EVENTS = ["progress", "metric"]; // shown only on request
const DETAILS_EVERY_MS = 2000; // a running job's manifest or metrics are fetched at most this often
const CANCELLABLE = ["queued", "running"];
const FINISHED = ["succeeded", "failed", "cancelled"];
const SAMPLE_POLL_MS = 500;

class JobPage {
  constructor(id, signal) {
    this.id = id;
    this.signal = signal;
    this.job = null;
    this.lines = [];
    this.partial = "";
    this.skipPartialLine = false;
    this.shardsShown = null;
    this.dataset = null; // the dataset view, once the conversion is complete
    this.refreshManifestSoon = throttle(() => this.refreshManifest(), DETAILS_EVERY_MS, signal);
    this.refreshMetricsSoon = throttle(() => this.refreshMetrics(), DETAILS_EVERY_MS, signal);
    this.refreshEvalsSoon = throttle(() => this.refreshEvals(), DETAILS_EVERY_MS, signal);
  }

  async run() {
    // The page's elements are shared by every job shown: clear what the last one left.
    $("#job-id").textContent = this.id;
    for (const selector of ["#job-kind", "#job-state", "#job-fraction", "#job-message", "#log", "#resubmit-error"]) {
      $(selector).textContent = "";
    }
    $("#job-facts").replaceChildren();
    $("#spec").value = "";
    $("#job-error").hidden = true;
    $("#train-section").hidden = true;
    $("#try-section").hidden = true;
    $("#evals-section").hidden = true;
    $("#manifest-section").hidden = true;
    $("#dataset-section").hidden = true;
    for (const selector of ["#try-status", "#try-error", "#eval-error"]) $(selector).textContent = "";
    $("#try-output").hidden = true;
    $("#try-form").onsubmit = (event) => this.tryModel(event);
    $("#eval-form").onsubmit = (event) => this.evaluate(event);
    $("#cancel").onclick = () => this.cancel();
    $("#resubmit").onsubmit = (event) => this.resubmit(event);
    $("#show-events").onchange = () => this.renderLog();
    const ticker = setInterval(() => this.job && this.renderFacts(), 1000);
    this.signal.addEventListener("abort", () => clearInterval(ticker));
    try {
      const start = await this.logStart();
      await followEvents(`/jobs/${this.id}/events?offset=${start}`, (type, data) => this.onEvent(type, data), this.signal);
      if (this.job && !this.signal.aborted) this.refreshDetails(true);
    } catch (error) {
      if (!this.signal.aborted) reportError(error);
    }
  }

  // Long logs are shown from their last LOG_TAIL_BYTES, starting at the first whole line.
  async logStart() {
    const { size } = await request(`/jobs/${this.id}/logs?limit=1`);
    const start = Math.max(0, size - LOG_TAIL_BYTES);
    this.skipPartialLine = start > 0;
    return start;
  }

  onEvent(type, data) {
    const payload = JSON.parse(data);
    if (type === "log") {
      this.appendLog(payload.text);
    } else if (payload.deleted) {
      showNotice(`Job ${this.id} was deleted.`);
    } else {
      this.render(payload);
    }
  }

  render(job) {
    const first = this.job === null;
    this.job = job;
    document.title = `${job.kind} ${job.id} · openseek-nanochat`;
    $("#job-kind").textContent = job.kind[0].toUpperCase() + job.kind.slice(1);
    showState($("#job-state"), job.state);
    $("#cancel").disabled = !CANCELLABLE.includes(job.state);
    showProgress($("#job-progress"), $("#job-fraction"), job.progress?.fraction, job.state);
    $("#job-message").textContent = job.progress?.message || "";
    const error = $("#job-error");
    error.hidden = !job.error;
    error.textContent = job.error ? `Failed: ${job.error.message}${job.error.where ? ` (at ${job.error.where})` : ""}` : "";
    this.renderFacts();
    if (first) $("#spec").value = JSON.stringify(specToResubmit(job), null, 2);
    this.refreshDetails(false);
  }

  renderFacts() {
    const job = this.job;
    const p = job.progress || {};
    const facts = [
      ["Attempts", String(job.attempts)],
      ["Worker", job.worker_id || "–"],
      ["Created", fmt.time(job.created_at)],
      ["Started", fmt.time(job.started_at)],
      ["Finished", fmt.time(job.finished_at)],
      ["Duration", fmt.duration(fmt.elapsed(job))],
      ["Rate", fmt.rate(job)],
      ["ETA", fmt.eta(job)],
    ];
    if (job.kind === "convert") {
      facts.push(["Documents", fmt.count(p.docs)], ["Characters", fmt.count(p.chars)], ["Shards", fmt.count(p.shards)]);
    }
    fillFacts($("#job-facts"), facts);
  }

  // The parts that need a request of their own: a conversion's manifest, a training's metrics.
  refreshDetails(final) {
    const job = this.job;
    if (job.kind === "convert" && (final || job.progress?.shards !== this.shardsShown)) {
      this.shardsShown = job.progress?.shards;
      this.refreshManifestSoon(final);
    } else if (job.kind === "train") {
      this.refreshMetricsSoon(final);
      this.refreshEvalsSoon(final);
      $("#try-section").hidden = false;
      $("#evals-section").hidden = false;
    }
  }

  async refreshManifest() {
    let manifest;
    try {
      manifest = await request(`/jobs/${this.id}/manifest`);
    } catch (error) {
      if (error.status === 404) return; // none written yet
      throw error;
    }
    const tbody = $("#manifest tbody");
    tbody.replaceChildren();
    for (const shard of manifest.shards) {
      const row = document.createElement("tr");
      cell(row, shard.file);
      cell(row, shard.split);
      cell(row, fmt.count(shard.rows), "num");
      cell(row, fmt.count(shard.chars), "num");
      cell(row, fmt.bytes(shard.bytes), "num");
      const hash = cell(row, shard.sha256, "hash");
      hash.title = shard.sha256;
      tbody.append(row);
    }
    const t = manifest.totals || {};
    const state = manifest.complete ? "complete" : "being written";
    $("#manifest-summary").textContent =
      `${fmt.count(t.shards)} shards (${fmt.count(t.train_shards)} train, 1 val), ${fmt.count(t.docs)} rows, ` +
      `${fmt.count(t.chars)} characters, ${fmt.bytes(t.bytes)} in ${manifest.output_dir} (${state})`;
    $("#manifest-section").hidden = false;
    if (manifest.complete && !this.dataset) {
      this.dataset = new DatasetView(this.id, this.signal);
      this.dataset.show(manifest);
    }
  }

  async refreshMetrics() {
    const records = await request(`/jobs/${this.id}/metrics`);
    const series = (key) => records.filter((r) => r[key] !== null && r[key] !== undefined).map((r) => ({ x: r.step, y: r[key] }));
    drawLineChart($("#loss-chart"), series("loss"), { name: "Training loss" });
    drawLineChart($("#bpb-chart"), series("val_bpb"), { name: "Validation bits per byte" });
    const speeds = series("tok_per_sec").map((p) => p.y);
    const mfu = series("mfu").map((p) => p.y);
    const p = this.job.progress || {};
    const last = (values) => (values.length ? values[values.length - 1] : null);
    const mean = (values) => (values.length ? values.reduce((a, b) => a + b, 0) / values.length : null);
    const facts = [
      ["Step", `${fmt.count(p.step ?? last(records)?.step)} of ${fmt.count(p.num_iterations ?? this.job.spec.num_iterations)}`],
      ["Loss", fmt.number(last(series("loss").map((q) => q.y)))],
      ["Validation bpb", fmt.number(last(series("val_bpb").map((q) => q.y)))],
      ["Tokens/s, last step", fmt.count(last(speeds))],
      ["Tokens/s, mean", fmt.count(mean(speeds))],
    ];
    if (mfu.length) facts.push(["MFU, mean", `${fmt.number(mean(mfu))} %`]);
    fillFacts($("#train-facts"), facts);
    $("#train-section").hidden = false;
  }

  async refreshEvals() {
    const evals = await evalsOf([this.id]);
    fillEvalTable($("#evals tbody"), evals, false);
    // an eval still running is shown again when it ends
    if (evals.some((job) => !FINISHED.includes(job.state))) setTimeout(() => this.refreshEvalsSoon(), DETAILS_EVERY_MS);
  }

  // "Try the model": a sample job of one prompt, followed until it ends; its completion is shown after the prompt.
  async tryModel(event) {
    event.preventDefault();
    const [status, error, output] = [$("#try-status"), $("#try-error"), $("#try-output")];
    error.textContent = "";
    output.hidden = true;
    const optional = (selector) => ($(selector).value === "" ? undefined : Number($(selector).value));
    const body = {
      train_job: this.id,
      prompts: [$("#try-prompt").value],
      max_tokens: optional("#try-tokens"),
      temperature: optional("#try-temperature"),
      top_k: optional("#try-top-k"),
      seed: optional("#try-seed"),
    };
    try {
      let job = await request("/jobs/sample", { method: "POST", body });
      status.textContent = `Sample job ${job.id} is ${job.state}…`;
      while (!FINISHED.includes(job.state) && !this.signal.aborted) {
        await new Promise((resolve) => setTimeout(resolve, SAMPLE_POLL_MS));
        job = await request(`/jobs/${job.id}`);
        status.textContent = `Sample job ${job.id} is ${job.state}…`;
      }
      if (job.state !== "succeeded") {
        status.textContent = "";
        error.textContent = `Sample job ${job.id} ${job.state}${job.error ? `: ${job.error.message}` : ""}`;
        return;
      }
      const [completion] = job.result.completions;
      const prompt = document.createElement("b");
      prompt.textContent = completion.prompt;
      output.replaceChildren(prompt, document.createTextNode(completion.text));
      output.hidden = false;
      status.textContent = `${completion.tokens} tokens from step ${job.result.step} (sample job ${job.id}, seed ${job.spec.seed})`;
    } catch (failure) {
      status.textContent = "";
      if (failure.status === 401) reportError(failure);
      else error.textContent = failure.message;
    }
  }

  async evaluate(event) {
    event.preventDefault();
    const message = $("#eval-error");
    message.textContent = "";
    const dataset = $("#eval-dataset").value.trim();
    try {
      await request("/jobs/eval", { method: "POST", body: { train_job: this.id, ...(dataset ? { dataset } : {}) } });
      this.refreshEvalsSoon(true);
    } catch (failure) {
      if (failure.status === 401) reportError(failure);
      else message.textContent = failure.message;
    }
  }

  appendLog(text) {
    let all = this.partial + text;
    if (this.skipPartialLine) {
      const newline = all.indexOf("\n");
      if (newline < 0) {
        this.partial = all;
        return;
      }
      all = all.slice(newline + 1);
      this.skipPartialLine = false;
    }
    const lines = all.split("\n");
    this.partial = lines.pop();
    this.lines.push(...lines);
    if (this.lines.length > 4 * LOG_LINES) this.lines.splice(0, this.lines.length - 4 * LOG_LINES);
    this.renderLog();
  }

  renderLog() {
    const pre = $("#log");
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
    const showAll = $("#show-events").checked;
    const lines = [];
    for (const line of this.lines) {
      const event = parseEvent(line);
      if (!event) lines.push(line);
      else if (showAll || !FREQUENT_EVENTS.includes(event.type)) lines.push(describeEvent(event));
    }
    pre.textContent = lines.slice(-LOG_LINES).join("\n") + (this.partial ? `\n${this.partial}` : "");
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  async cancel() {
    if (!confirm(`Cancel job ${this.id}? Its processes are stopped; finished shards or checkpoints stay.`)) return;
    try {
      this.render(await request(`/jobs/${this.id}/cancel`, { method: "POST" }));
    } catch (error) {
      reportError(error);
    }
  }

  async resubmit(event) {
    event.preventDefault();
    const message = $("#resubmit-error");
    message.textContent = "";
    let spec;
    try {
      spec = JSON.parse($("#spec").value);
    } catch (error) {
      message.textContent = `The spec is not valid JSON: ${error.message}`;
      return;
    }
    try {
      const created = await request(`/jobs/${this.job.kind}`, { method: "POST", body: spec });
      location.hash = `#/jobs/${created.id}`;
    } catch (error) {
      if (error.status === 401) reportError(error);
      else message.textContent = error.message;
    }
  }
}

// fn() at most once per `ms`: calls in between merge into one at the end of the interval; now=true runs it at once.
function throttle(fn, ms, signal) {
  let timer = null;
  let last = 0;
  return (now = false) => {
    if (timer) {
      if (!now) return;
      clearTimeout(timer);
    }
    const wait = now ? 0 : Math.max(0, last + ms - Date.now());
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      if (!signal.aborted) fn().catch(reportError);
    }, wait);
  };
}

function parseEvent(line) {
  const at = line.indexOf(EVENT_PREFIX);
  if (at < 0) return null;
  try {
    return JSON.parse(line.slice(at + EVENT_PREFIX.length));
  } catch {
    return null;
  }
}

// An event line as a person reads it: its type, then its message or its plain fields.
function describeEvent({ type, time, ...fields }) {
  const shown = (value) => (typeof value !== "number" ? value : Number.isInteger(value) ? fmt.count(value) : fmt.number(value));
  const text = fields.message
    ? `${fields.message}${fields.where ? ` (at ${fields.where})` : ""}`
    : Object.entries(fields)
        .filter(([, value]) => value !== null && typeof value !== "object")
        .map(([key, value]) => `${key}=${shown(value)}`)
        .join(" ");
  const clock = time ? new Date(time * 1000).toLocaleTimeString() : "";
  return `[${type}${clock ? ` ${clock}` : ""}] ${text}`;
}

// The spec as it runs has defaults filled in; an output dir that was derived from this job's id goes, so the new
// job gets its own.
function specToResubmit(job) {
  const spec = { ...job.spec };
  if (job.kind === "convert" && typeof spec.output_dir === "string" && spec.output_dir.endsWith(`/datasets/${job.id}`)) {
    delete spec.output_dir;
  }
  return spec;
}

export function showJob(id, signal) {
  return new JobPage(id, signal).run();
}
