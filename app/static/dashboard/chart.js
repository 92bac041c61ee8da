// A line chart in SVG: one vertex per point, axes with a few round ticks. No library; redrawn whole on each update.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 560;
const HEIGHT = 240;
const MARGIN = { top: 12, right: 16, bottom: 32, left: 56 };
const MARKERS_UP_TO = 200; // beyond this many points the markers would only blur the line

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

// points: [{x, y}] in x order. Draws into `svg`, replacing what was there.
export function drawLineChart(svg, points, { name, xName = "step" }) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  svg.dataset.points = String(points.length);
  if (!points.length) {
    svg.setAttribute("aria-label", `${name}: no values yet`);
    svg.append(element("text", { x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle", class: "empty" }, "no values yet"));
    return;
  }
  const last = points[points.length - 1];
  svg.setAttribute(
    "aria-label",
    `${name} over ${points.length} ${xName}s: ${label(points[0].y)} at ${xName} ${points[0].x}, ${label(last.y)} at ${xName} ${last.x}`,
  );
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
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
    axes.append(element("text", { x: sx(x), y: HEIGHT - MARGIN.bottom + 16, "text-anchor": "middle" }, String(x)));
  }
  axes.append(element("text", { x: WIDTH - MARGIN.right, y: HEIGHT - 4, "text-anchor": "end" }, xName));
  svg.append(axes);

  const vertices = points.map((p) => `${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(" ");
  svg.append(element("polyline", { points: vertices, class: "line" }));
  if (points.length <= MARKERS_UP_TO) {
    const markers = element("g", { class: "markers" });
    for (const p of points) {
      const dot = element("circle", { cx: sx(p.x), cy: sy(p.y), r: 2.5 });
      dot.append(element("title", {}, `${xName} ${p.x}: ${label(p.y)}`));
      markers.append(dot);
    }
    svg.append(markers);
  }
}
