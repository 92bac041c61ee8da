// How numbers, sizes, times and rates read on the page.

const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const short = new Intl.NumberFormat(undefined, { maximumSignificantDigits: 3 });

export function count(n) {
  return n === null || n === undefined ? "–" : integer.format(n);
}

export function number(n) {
  return n === null || n === undefined ? "–" : short.format(n);
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i += 1;
  }
  return `${i ? short.format(n) : n} ${units[i]}`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  seconds = Math.max(0, Math.round(seconds));
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  if (h) return `${h} h ${String(m).padStart(2, "0")} min`;
  if (m) return `${m} min ${String(s).padStart(2, "0")} s`;
  return `${s} s`;
}

export function percent(fraction) {
  return fraction === null || fraction === undefined ? "–" : `${(100 * fraction).toFixed(1)} %`;
}

export function time(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString() : date.toLocaleString();
}

// Seconds a job has run: until it finished, or until now.
export function elapsed(job) {
  if (!job.started_at) return null;
  const end = job.finished_at ? new Date(job.finished_at) : new Date();
  return (end - new Date(job.started_at)) / 1000;
}

// Convert jobs report documents per second (and MB/s); train jobs tokens per second.
export function rate(job) {
  const p = job.progress || {};
  if (p.tok_per_sec !== undefined && p.tok_per_sec !== null) return `${count(p.tok_per_sec)} tok/s`;
  if (p.rate === undefined || p.rate === null) return "–";
  const mb = p.mb_per_s ? ` · ${number(p.mb_per_s)} MB/s` : "";
  return `${count(p.rate)} docs/s${mb}`;
}

export function eta(job) {
  const p = job.progress || {};
  return job.state === "running" ? duration(p.eta_s) : "–";
}
