// A finished conversion's dataset: each source's share of the characters and documents against its weight, the
// documents' length histogram, and a sample browser that shows where each document came from (GET /jobs/{id}/samples).
// Sources are grouped by folder and sortable, so a blend of 84 Megatron parts stays readable.

import { request } from "./api.js";
import * as fmt from "./format.js";
import { $ } from "./ui.js";

const SAMPLE_BATCH = 20; // documents fetched at a time; next/previous walk through them, then fetch the next seed
const SAMPLE_CHARS = 4000;

function folderOf(name) {
  const cut = name.lastIndexOf("/");
  return cut > 0 ? name.slice(0, cut) : "";
}

function bar(kind, fraction, title) {
  const el = document.createElement("span");
  el.className = `bar ${kind}`;
  el.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  el.title = title;
  return el;
}

export class DatasetView {
  constructor(jobId, signal) {
    this.jobId = jobId;
    this.signal = signal;
    this.manifest = null;
    this.samples = [];
    this.at = 0;
    this.seed = 0;
  }

  show(manifest) {
    this.manifest = manifest;
    $("#dataset-section").hidden = false;
    $("#share-sort").onchange = () => this.drawShares();
    $("#share-measure").onchange = () => this.drawShares();
    const filter = $("#sample-source");
    filter.replaceChildren(new Option("every source", ""));
    for (const source of manifest.sources) filter.append(new Option(source.name, source.name));
    filter.onchange = () => this.restartSamples();
    $("#sample-prev").onclick = () => this.step(-1);
    $("#sample-next").onclick = () => this.step(1);
    this.drawShares();
    this.drawLengths();
    this.restartSamples();
  }

  // One row per source, grouped under its folder: the weight's share and the share it got, side by side.
  drawShares() {
    const measure = $("#share-measure").value; // "chars" or "docs"
    const sort = $("#share-sort").value;
    const totalWeight = this.manifest.sources.reduce((sum, s) => sum + s.weight, 0) || 1;
    const rows = this.manifest.sources.map((s) => ({ ...s, want: s.weight / totalWeight, got: s[`share_${measure}`] }));
    const order = {
      name: (a, b) => a.name.localeCompare(b.name),
      share: (a, b) => b.got - a.got,
      weight: (a, b) => b.want - a.want,
      gap: (a, b) => Math.abs(b.got - b.want) - Math.abs(a.got - a.want),
    }[sort];
    rows.sort(order);
    const groups = new Map();
    for (const row of rows) {
      const folder = folderOf(row.name);
      if (!groups.has(folder)) groups.set(folder, []);
      groups.get(folder).push(row);
    }
    const scale = Math.max(...rows.map((r) => Math.max(r.want, r.got)), 1e-9);
    const chart = $("#share-chart");
    chart.replaceChildren();
    for (const [folder, members] of groups) {
      if (groups.size > 1 || folder) {
        const head = document.createElement("div");
        head.className = "share-group";
        const got = members.reduce((sum, r) => sum + r.got, 0);
        head.textContent = `${folder || "(no folder)"}: ${members.length} source(s), ${fmt.percent(got)} of the ${measure}`;
        chart.append(head);
      }
      for (const row of members) {
        const line = document.createElement("div");
        line.className = "share-row";
        line.dataset.source = row.name;
        const label = document.createElement("span");
        label.className = "share-label";
        label.textContent = row.name.slice(folder.length).replace(/^\//, "") || row.name;
        label.title = row.name;
        const bars = document.createElement("span");
        bars.className = "share-bars";
        bars.append(
          bar("want", row.want / scale, `weight: ${fmt.percent(row.want)}`),
          bar("got", row.got / scale, `share of the ${measure}: ${fmt.percent(row.got)}`),
        );
        const value = document.createElement("span");
        value.className = "share-value num";
        value.textContent = `${fmt.percent(row.got)} / ${fmt.percent(row.want)}`;
        line.append(label, bars, value);
        chart.append(line);
      }
    }
  }

  // Documents per length bin (powers of two of characters), the empty bins at both ends left out.
  drawLengths() {
    const { length_hist: hist = [], length_bins: bins = [] } = this.manifest.totals || {};
    const used = hist.map((n, i) => [n, i]).filter(([n]) => n > 0);
    const chart = $("#length-chart");
    chart.replaceChildren();
    if (!used.length) return;
    const first = used[0][1];
    const last = used[used.length - 1][1];
    const most = Math.max(...hist);
    for (let i = first; i <= last; i++) {
      const column = document.createElement("div");
      column.className = "length-bin";
      const fill = document.createElement("span");
      fill.className = "bar got";
      fill.style.height = `${(hist[i] / most) * 100}%`;
      const label = document.createElement("span");
      label.className = "length-label";
      label.textContent = fmt.count(bins[i]);
      column.title = `${fmt.count(hist[i])} documents of ${fmt.count(bins[i])} to ${fmt.count(2 * bins[i] - 1)} characters`;
      column.append(fill, label);
      chart.append(column);
    }
  }

  async restartSamples() {
    this.seed = 0;
    this.samples = [];
    this.at = 0;
    await this.fetchSamples();
    this.drawSample();
  }

  async fetchSamples() {
    const params = new URLSearchParams({ n: SAMPLE_BATCH, seed: this.seed, max_chars: SAMPLE_CHARS });
    const source = $("#sample-source").value;
    if (source) params.set("source", source);
    try {
      this.samples.push(...(await request(`/jobs/${this.jobId}/samples?${params}`)));
      $("#sample-error").textContent = "";
    } catch (error) {
      $("#sample-error").textContent = error.message;
    }
  }

  async step(by) {
    const to = this.at + by;
    if (to < 0) return;
    if (to >= this.samples.length) {
      this.seed += 1; // a new draw: the documents already shown may come again, as in any fresh sample
      await this.fetchSamples();
    }
    if (to < this.samples.length) this.at = to;
    this.drawSample();
  }

  drawSample() {
    const doc = this.samples[this.at];
    $("#sample-prev").disabled = this.at === 0;
    $("#sample-position").textContent = doc ? `document ${this.at + 1}` : "no documents";
    $("#sample-text").textContent = doc ? doc.text + (doc.chars > doc.text.length ? " …" : "") : "";
    $("#sample-where").textContent = doc
      ? `${doc.source} · ${Object.entries(doc.locator).map(([k, v]) => `${k} ${v}`).join(", ")} · ` +
        `${doc.shard} row ${doc.row} (${doc.split}) · ${fmt.count(doc.chars)} characters`
      : "";
  }
}
