// Forwarding: data-forwarding rules with their counters and dead letters, when the server has them.
import { enc, get, qs } from '../api.js';
import { append, badge, clear, errorPanel, fmtNumber, fmtTime, h, pageHead, table } from '../ui.js';

const COUNTER_ORDER = ['matched', 'filtered', 'filteredOut', 'delivered', 'redelivered', 'retries', 'replayed', 'outbox', 'inflight', 'inFlight', 'queued', 'dead', 'deadLettered'];

function counters(obj) {
  const stats = obj.stats || obj.counters || obj;
  const keys = Object.keys(stats).filter((k) => typeof stats[k] === 'number' && !/(^id$|Id$|At$|_at$)/.test(k));
  keys.sort((a, b) => (COUNTER_ORDER.indexOf(a) + 1 || 99) - (COUNTER_ORDER.indexOf(b) + 1 || 99));
  return h('div.row.small', keys.map((k) => h('span', h('span.muted', k + ' '), h('strong', fmtNumber(stats[k])))));
}

function targetLine(t) {
  const kind = t.type || t.kind || t.sink || 'target';
  const where = t.url || t.topic || t.subject || t.queue || t.exchange || t.table || t.name || '';
  const err = (t.stats || t).lastError || t.last_error;
  return h('div', h('div', badge(kind, 'info'), ' ', h('code', String(where))), counters(t), err ? h('div.reason.small', `last error: ${err}`) : null);
}

export async function render(main) {
  append(main, pageHead('Forwarding', { sub: 'Rules forward committed device data to other systems (HTTP endpoints, message brokers, databases).' }));
  const body = h('div');
  append(main, body);
  let rules;
  try {
    const res = await get('/api/v1/rules');
    rules = Array.isArray(res) ? res : res.items || res.rules || [];
  } catch (err) {
    if (err.status === 404 || err.status === 405) {
      append(body, h('div.panel', { id: 'forwarding-unavailable' },
        h('h2', 'Forwarding is not available on this server'),
        h('p.muted', 'This iotgate build has no rules API (/api/v1/rules). Devices still report and their data is stored; forwarding arrives with a later version.')));
      return;
    }
    append(body, errorPanel(err));
    return;
  }
  append(body, h('section.panel', h('h2', 'Rules'),
    table([
      { label: 'Rule', cell: (r) => h('div', h('strong', r.name || `rule ${r.id}`), r.description ? h('div.muted.small', r.description) : null) },
      { label: 'State', cell: (r) => (r.enabled === false ? badge('Disabled', 'danger') : badge('Enabled', 'ok')) },
      { label: 'Selects', cell: (r) => h('code.small', [r.source || r.sources, r.productKey, r.where].filter(Boolean).map((x) => (typeof x === 'string' ? x : JSON.stringify(x))).join(' · ') || 'all') },
      { label: 'Targets and counters', cell: (r) => (r.targets || []).length ? (r.targets || []).map(targetLine) : counters(r) },
    ], rules, 'No forwarding rules yet. Create them with the API or the CLI (iotgate rule …).')));

  const dead = h('section.panel', h('h2', 'Dead letters'), h('p.muted', 'Loading…'));
  append(body, dead);
  const items = [];
  let supported = false;
  for (const r of rules) {
    try {
      const res = await get(`/api/v1/rules/${enc(r.id)}/dead-letters` + qs({ limit: 50 }));
      supported = true;
      for (const d of Array.isArray(res) ? res : res.items || []) items.push({ ...d, rule: r.name || r.id });
    } catch (err) { /* not supported */ }
  }
  if (!rules.length || !supported) {
    try {
      const res = await get('/api/v1/dead-letters' + qs({ limit: 50 }));
      supported = true;
      items.push(...(Array.isArray(res) ? res : res.items || []));
    } catch (err) { /* not supported */ }
  }
  append(clear(dead), h('h2', 'Dead letters'), !supported
    ? h('p.muted', 'This server does not list dead letters.')
    : table([
      { label: 'Failed', cell: (d) => fmtTime(d.deadAt || d.dead_at || d.createdAt), class: 'nowrap' },
      { label: 'Rule', cell: (d) => String(d.rule ?? d.ruleId ?? d.targetId ?? '') },
      { label: 'Device', cell: (d) => `${d.productKey || d.product_key || ''}/${d.deviceName || d.device_name || ''}` },
      { label: 'Source', cell: (d) => d.source || d.identifier || '' },
      { label: 'Tries', cell: (d) => String(d.tries ?? '') },
      { label: 'Last error', cell: (d) => h('span.reason', d.lastError || d.last_error || '') },
    ], items, 'No dead letters: every message reached its targets.'));
}
