// A small line chart in SVG, written here (no library): (x, y) points, the y range padded a little,
// the first/last x and the min/max y written on the axes. Colours come from the CSS theme.
const NS = "http://www.w3.org/2000/svg";
const W = 600, H = 220, LEFT = 56, RIGHT = 10, TOP = 10, BOTTOM = 26;

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

const fmt = (v) => (Math.abs(v) >= 100 || v === 0 ? v.toFixed(0) : v.toPrecision(3));

// Returns {element, update(points)} where points is [{x, y}, ...]; `label` names the chart for screen readers.
export function lineChart(label, { xName = "step", yName = "loss" } = {}) {
  const element = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": label });

  function update(points) {
    element.replaceChildren();
    const pts = points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
    element.append(svg("rect", { x: LEFT, y: TOP, width: W - LEFT - RIGHT, height: H - TOP - BOTTOM, class: "plot" }));
    if (!pts.length) {
      element.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, `no ${yName} yet`));
      element.setAttribute("aria-label", `${label}: no data yet`);
      return;
    }
    const xs = pts.map((p) => p.x), ys = pts.map((p) => p.y);
    const x0 = Math.min(...xs), x1 = Math.max(...xs);
    let y0 = Math.min(...ys), y1 = Math.max(...ys);
    const pad = (y1 - y0) * 0.05 || Math.abs(y1) * 0.05 || 1;
    y0 = Math.min(...ys) >= 0 ? Math.max(0, y0 - pad) : y0 - pad; // a loss axis starts at 0, not below
    y1 += pad;
    const sx = (x) => LEFT + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (W - LEFT - RIGHT);
    const sy = (y) => TOP + (1 - (y - y0) / (y1 - y0)) * (H - TOP - BOTTOM);
    const d = pts.map((p, i) => `${i ? "L" : "M"}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join("");
    element.append(
      svg("path", { d, class: "line" }),
      ...(pts.length === 1 ? [svg("circle", { cx: sx(pts[0].x), cy: sy(pts[0].y), r: 3, class: "dot" })] : []),
      svg("text", { x: LEFT - 6, y: TOP + 10, "text-anchor": "end", class: "axis" }, fmt(y1)),
      svg("text", { x: LEFT - 6, y: H - BOTTOM, "text-anchor": "end", class: "axis" }, fmt(y0)),
      svg("text", { x: LEFT, y: H - 8, class: "axis" }, `${xName} ${x0}`),
      svg("text", { x: W - RIGHT, y: H - 8, "text-anchor": "end", class: "axis" }, `${xName} ${x1}`));
    const last = pts[pts.length - 1];
    element.setAttribute("aria-label", `${label}: ${pts.length} points, last ${yName} ${fmt(last.y)} at ${xName} ${last.x}`);
  }
  update([]);
  return { element, update };
}
