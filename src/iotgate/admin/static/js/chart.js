// A dependency-free SVG line chart with axes, grid, legend and a hover/keyboard read-out.
import { append, h, svg, fmtNumber } from './ui.js';

const M = { l: 56, r: 16, t: 12, b: 30 };

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw || 1));
  const n = raw / mag;
  return (n <= 1 ? 1 : n <= 2 ? 2 : n <= 5 ? 5 : 10) * mag;
}

function timeLabel(ms, span) {
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, '0');
  if (span > 2 * 86400000) return `${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
  if (span > 600000) return `${p(d.getHours())}:${p(d.getMinutes())}`;
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/**
 * lineChart({series: [{name, points: [[timeMs, value], ...]}], from, to, unit, label, yMin, area, width, height,
 * compact}) → a figure with an SVG chart (compact: larger text for small charts).
 */
export function lineChart({ series, from, to, unit = '', label = 'chart', yMin, area = false, width = 760, height = 240, compact = false }) {
  const W = width, H = height;
  const all = series.flatMap((s) => s.points);
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const x0 = from ?? Math.min(...xs), x1 = to ?? Math.max(...xs);
  let y0 = Math.min(...ys, yMin ?? Infinity), y1 = Math.max(...ys);
  if (!isFinite(y0) || !isFinite(y1)) { y0 = 0; y1 = 1; }
  if (y0 === y1) {
    if (yMin !== undefined && y0 === yMin) y1 = y0 + 1;
    else { y0 -= 1; y1 += 1; }
  }
  const ystep = niceStep(y1 - y0, 4);
  y0 = Math.floor(y0 / ystep) * ystep;
  y1 = Math.ceil(y1 / ystep) * ystep;
  const xspan = Math.max(1, x1 - x0);
  const px = (x) => M.l + ((x - x0) / xspan) * (W - M.l - M.r);
  const py = (y) => H - M.b - ((y - y0) / (y1 - y0)) * (H - M.t - M.b);

  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: compact ? 'chart compact' : 'chart', role: 'img', 'aria-label': label, tabindex: '0' });
  for (let y = y0; y <= y1 + ystep / 2; y += ystep) {
    append(root, svg('line', { class: 'grid', x1: M.l, x2: W - M.r, y1: py(y), y2: py(y) }),
      svg('text', { x: M.l - 6, y: py(y) + 4, 'text-anchor': 'end' }, fmtNumber(+y.toFixed(6), 3)));
  }
  const xticks = 6;
  for (let i = 0; i <= xticks; i++) {
    const x = x0 + (xspan * i) / xticks;
    append(root, svg('text', { x: px(x), y: H - 10, 'text-anchor': i === 0 ? 'start' : i === xticks ? 'end' : 'middle' }, timeLabel(x, xspan)));
  }
  append(root, svg('line', { class: 'axis', x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b }),
    svg('line', { class: 'axis', x1: M.l, x2: M.l, y1: M.t, y2: H - M.b }));
  if (unit) append(root, svg('text', { x: 4, y: M.t + 4 }, unit));

  series.forEach((s, i) => {
    const pts = [...s.points].sort((a, b) => a[0] - b[0]);
    if (!pts.length) return;
    const d = pts.map((p, j) => `${j ? 'L' : 'M'}${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join('');
    if (area && i === 0) append(root, svg('path', { class: 'area0', d: `${d}L${px(pts[pts.length - 1][0]).toFixed(1)},${py(y0)}L${px(pts[0][0]).toFixed(1)},${py(y0)}Z` }));
    append(root, svg('path', { class: `line s${i}`, d }));
    if (pts.length <= 60) for (const p of pts) append(root, svg('circle', { class: `f${i}`, cx: px(p[0]), cy: py(p[1]), r: 2.5 }));
  });

  // read-out: nearest point of each series under the pointer (or the arrow keys)
  const cursor = svg('line', { class: 'cursor hidden', y1: M.t, y2: H - M.b });
  const tipBg = svg('rect', { class: 'tip-bg hidden', rx: 4, height: 20 + 14 * series.length });
  const tip = svg('text', { class: 'hidden' });
  append(root, cursor, tipBg, tip);
  const sorted = series.map((s) => [...s.points].sort((a, b) => a[0] - b[0]));
  const show = (x) => {
    const lines = [];
    let at = x;
    sorted.forEach((pts, i) => {
      if (!pts.length) return;
      let best = pts[0];
      for (const p of pts) if (Math.abs(p[0] - x) < Math.abs(best[0] - x)) best = p;
      if (i === 0) at = best[0];
      lines.push(`${series[i].name}: ${fmtNumber(best[1], 3)}${unit ? ' ' + unit : ''}`);
    });
    if (!lines.length) return;
    const cx = px(at);
    cursor.setAttribute('x1', cx); cursor.setAttribute('x2', cx);
    while (tip.firstChild) tip.removeChild(tip.firstChild);
    const tx = cx > W / 2 ? cx - 190 : cx + 10;
    append(tip, svg('tspan', { x: tx + 8, y: M.t + 16 }, new Date(at).toLocaleString()));
    lines.forEach((l, i) => append(tip, svg('tspan', { x: tx + 8, y: M.t + 30 + 14 * i }, l)));
    tipBg.setAttribute('x', tx); tipBg.setAttribute('y', M.t + 2); tipBg.setAttribute('width', 180);
    for (const el of [cursor, tipBg, tip]) el.classList.remove('hidden');
  };
  const hide = () => { for (const el of [cursor, tipBg, tip]) el.classList.add('hidden'); };
  root.addEventListener('mousemove', (e) => {
    const box = root.getBoundingClientRect();
    const x = ((e.clientX - box.left) / box.width) * W;
    show(x0 + ((x - M.l) / (W - M.l - M.r)) * xspan);
  });
  root.addEventListener('mouseleave', hide);
  let kx = x1;
  root.addEventListener('keydown', (e) => {
    if (e.key !== 'ArrowLeft' && e.key !== 'ArrowRight') return;
    e.preventDefault();
    kx = Math.min(x1, Math.max(x0, kx + (e.key === 'ArrowRight' ? 1 : -1) * xspan / 50));
    show(kx);
  });
  root.addEventListener('blur', hide);

  const legend = series.length > 1
    ? h('div.chart-legend', series.map((s, i) => h('span', h('span.sw', { class: `sw${i}` }), s.name)))
    : null;
  return h('figure.chart-figure', legend, root);
}
