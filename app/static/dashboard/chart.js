// A line chart in SVG: one vertex per point, axes with a few round ticks. No library; redrawn whole on each update.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 560;
const HEIGHT = 240;
const MARGIN = { top: 12, right: 16, bottom: 32, left: 56 };
const MARKERS_UP_TO = 200; // beyond this many points the markers would only blur the line
const SERIES_COLOURS = 6; // style.css has .series-0 ... .series-5

function element(name, attributes = {}, text = null) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  return node;
}

// About `count` evenly spaced round values covering [low, high].
function ticks(low, high, count) {
  if (low === high) return [low];
  const raw = (high - low) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((f) => f * magnitude).find((s) => s >= raw);
  const values = [];
  for (let v = Math.ceil(low / step) * step; v <= high + step * 1e-9; v += step) values.push(Number(v.toPrecision(12)));
  return values;
}

function label(value) {
  return Math.abs(value) >= 1e4 ? value.toExponential(1) : String(Number(value.toPrecision(4)));
}

// Whole numbers on the x axis (steps, tokens seen), short: 1500, 25k, 1.5M.
function tickLabel(x) {
  if (Math.abs(x) >= 1e6) return `${Number((x / 1e6).toPrecision(3))}M`;
  if (Math.abs(x) >= 1e4) return `${Number((x / 1e3).toPrecision(3))}k`;
  return String(x);
}

// points: [{x, y}] in x order. Draws into `svg`, replacing what was there.
export function drawLineChart(svg, points, { name, xName = "step" }) {
  drawLinesChart(svg, [{ points }], { name, xName });
}

// Several lines on shared axes, one per series: [{label, id, points}]; a legend names them when there are several.
// Each line is a <polyline> with `data-series` (the series' id), in the colour of its index.
export function drawLinesChart(svg, series, { name, xName = "step" }) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  const all = series.flatMap((s) => s.points);
  svg.dataset.points = String(all.length);
  const drawn = series.filter((s) => s.points.length);
  if (!drawn.length) {
    svg.setAttribute("aria-label", `${name}: no values yet`);
    svg.append(element("text", { x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle", class: "empty" }, "no values yet"));
    return;
  }
  svg.setAttribute("aria-label", drawn.map((s) => describe(s, name, xName)).join("; "));
  const xs = all.map((p) => p.x);
  const ys = all.map((p) => p.y);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  const pad = (y1 - y0) * 0.05 || Math.abs(y0) * 0.05 || 1;
  [y0, y1] = [y0 - pad, y1 + pad];
  const innerW = WIDTH - MARGIN.left - MARGIN.right;
  const innerH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const sx = (x) => MARGIN.left + ((x - x0) / (x1 - x0)) * innerW;
  const sy = (y) => MARGIN.top + (1 - (y - y0) / (y1 - y0)) * innerH;

  const axes = element("g", { class: "axes" });
  for (const y of ticks(y0, y1, 4)) {
    axes.append(element("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: sy(y), y2: sy(y), class: "grid" }));
    axes.append(element("text", { x: MARGIN.left - 6, y: sy(y) + 4, "text-anchor": "end" }, label(y)));
  }
  for (const x of ticks(x0, x1, 6).filter(Number.isInteger)) {
    axes.append(element("text", { x: sx(x), y: HEIGHT - MARGIN.bottom + 16, "text-anchor": "middle" }, tickLabel(x)));
  }
  axes.append(element("text", { x: WIDTH - MARGIN.right, y: HEIGHT - 4, "text-anchor": "end" }, xName));
  svg.append(axes);

  series.forEach((s, index) => {
    if (!s.points.length) return;
    const colour = `series-${index % SERIES_COLOURS}`;
    const vertices = s.points.map((p) => `${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(" ");
    const line = element("polyline", { points: vertices, class: `line ${colour}` });
    if (s.id !== undefined) line.dataset.series = s.id;
    svg.append(line);
    if (s.points.length <= MARKERS_UP_TO) {
      const markers = element("g", { class: `markers ${colour}` });
      for (const p of s.points) {
        const dot = element("circle", { cx: sx(p.x), cy: sy(p.y), r: 2.5 });
        dot.append(element("title", {}, `${s.label ? `${s.label}, ` : ""}${xName} ${label(p.x)}: ${label(p.y)}`));
        markers.append(dot);
      }
      svg.append(markers);
    }
  });
  if (series.length > 1) {
    const legend = element("g", { class: "legend" });
    series.forEach((s, index) => {
      const y = MARGIN.top + 10 + 14 * index;
      const x = WIDTH - MARGIN.right - 150;
      legend.append(element("line", { x1: x, x2: x + 18, y1: y - 4, y2: y - 4, class: `line series-${index % SERIES_COLOURS}` }));
      legend.append(element("text", { x: x + 24, y }, s.label));
    });
    svg.append(legend);
  }
}

function describe(s, name, xName) {
  const first = s.points[0];
  const last = s.points[s.points.length - 1];
  const who = s.label ? `${s.label}: ` : "";
  const counted = xName === "step" ? "steps" : "points";
  return (
    `${who}${name} over ${s.points.length} ${counted}: ${label(first.y)} at ${xName} ${tickLabel(first.x)}, ` +
    `${label(last.y)} at ${xName} ${tickLabel(last.x)}`
  );
}
