// Overview: devices total/online, messages/s and rejected/s now and over the last hour (polled).
import { get } from '../api.js';
import { lineChart } from '../chart.js';
import { append, clear, fmtNumber, fmtTime, h, pageHead } from '../ui.js';

const POLL_MS = 5000;

function card(label, value, sub, { id, warn = false } = {}) {
  return h('div.card', { class: warn ? 'warn' : '', id },
    h('div.label', label), h('div.value', value), sub ? h('div.sub', sub) : null);
}

export async function render(main) {
  const cards = h('div.cards', { 'aria-live': 'polite' });
  const chartBox = h('div');
  const totals = h('p.muted.small');
  append(main, 
    pageHead('Overview', { sub: 'This server at a glance. Rates count reports committed by this node since it started.' }),
    cards,
    h('section.panel', { 'aria-labelledby': 'rate-title' },
      h('div.panel-head', h('h2', { id: 'rate-title' }, 'Messages per second, last hour'),
        h('span.muted.small', 'average per 10-second bucket')),
      chartBox, totals));

  let timer = null;
  let stopped = false;
  const refresh = async () => {
    try {
      const s = await get('/api/v1/stats/overview');
      append(clear(cards), 
        card('Products', fmtNumber(s.products), h('a', { href: '#/products' }, 'Manage products'), { id: 'card-products' }),
        card('Devices', fmtNumber(s.devices.total), h('a', { href: '#/devices' }, 'All devices'), { id: 'card-devices' }),
        card('Online', fmtNumber(s.devices.online), 'reported in the last 10 min', { id: 'card-online' }),
        card('Messages/s', fmtNumber(s.rate.messagesPerSecond, 1), `last ${s.rate.windowSeconds} s`, { id: 'card-rate' }),
        card('Rejected/s', fmtNumber(s.rate.rejectedPerSecond, 1), `last ${s.rate.windowSeconds} s`,
          { id: 'card-rejected', warn: s.rate.rejectedPerSecond > 0 }));
      const step = s.lastHour.bucketSeconds * 1000;
      const pts = (arr) => arr.map((v, i) => [s.lastHour.start + i * step, v]);
      append(clear(chartBox), lineChart({
        series: [{ name: 'messages/s', points: pts(s.lastHour.messages) }, { name: 'rejected/s', points: pts(s.lastHour.rejected) }],
        from: s.lastHour.start,
        to: s.lastHour.start + s.lastHour.messages.length * step,
        yMin: 0,
        area: true,
        label: `Messages per second over the last hour; now ${s.rate.messagesPerSecond} messages/s and ${s.rate.rejectedPerSecond} rejected/s`,
      }));
      totals.textContent = `Since ${fmtTime(s.totals.since)}: ${fmtNumber(s.totals.messages)} messages committed, ${fmtNumber(s.totals.rejected)} rejected.`
        + (s.ratesScope === 'this-process' ? ' Rates count what this process committed; device workers (--workers) and other nodes are not included (see their /metrics).' : '');
    } catch (err) {
      if (err.status === 401) return;
      append(clear(chartBox), h('div.form-error', err.message));
    }
    if (!stopped) timer = setTimeout(refresh, POLL_MS);
  };
  await refresh();
  return () => { stopped = true; clearTimeout(timer); };
}
