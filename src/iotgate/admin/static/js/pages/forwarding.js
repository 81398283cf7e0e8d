// Forwarding: rules with their targets' counters and dead letters (when the server has the rules API).
import { enc, get, post, qs } from '../api.js';
import { append, badge, clear, confirmDialog, errorPanel, fmtNumber, fmtTime, h, pageHead, table, toast } from '../ui.js';

const COUNTERS = [
  ['matched', 'matched'], ['filteredOut', 'filtered out'], ['delivered', 'delivered'], ['queued', 'queued'],
  ['inFlight', 'in flight'], ['retries', 'retries'], ['redelivered', 'redelivered'], ['replayed', 'replayed'],
  ['deadLettered', 'dead letters'],
];

function counters(stats) {
  if (!stats) return h('div.muted.small', 'no traffic yet');
  return h('div.row.small', COUNTERS.filter(([k]) => typeof stats[k] === 'number')
    .map(([k, label]) => h('span', { dataset: { counter: k } }, h('span.muted', label + ' '), h('strong', fmtNumber(stats[k])))));
}

function targetLine(t) {
  const where = t.url || t.topic || t.subject || t.queue || t.exchange || t.table || t.name || '';
  const s = t.stats;
  return h('div.target', { dataset: { target: t.id } },
    h('div', badge(t.type || 'target', 'info'), ' ', h('code', String(where)), s?.failing ? [' ', badge('failing', 'danger')] : null),
    counters(s),
    s?.lastError ? h('div.reason.small', `last error ${fmtTime(s.lastErrorAt)}: ${s.lastError}`) : null,
    s?.lastDeliveredAt ? h('div.muted.small', `last delivery ${fmtTime(s.lastDeliveredAt)}`) : null);
}

function unavailable(body, message) {
  append(body, h('div.panel', { id: 'forwarding-unavailable' },
    h('h2', 'Forwarding is not available on this server'),
    h('p.muted', message)));
}

export async function render(main) {
  append(main, pageHead('Forwarding', { sub: 'Rules forward committed device data to other systems (HTTP endpoints, message brokers, databases).' }));
  const body = h('div');
  append(main, body);
  let rules;
  try {
    rules = (await get('/api/v1/rules')).items || [];
  } catch (err) {
    if (err.status === 404 || err.status === 405) {
      unavailable(body, 'This iotgate build has no rules API (/api/v1/rules). Devices still report and their data is stored.');
    } else if (err.status === 503) {
      unavailable(body, `${err.message}. Devices still report and their data is stored.`);
    } else {
      append(body, errorPanel(err));
    }
    return;
  }
  const deadOf = (r) => (r.targets || []).reduce((n, t) => n + (t.stats?.deadLettered || 0), 0);
  const replay = async (r) => {
    if (!await confirmDialog({ title: 'Replay dead letters', message: `Send the ${deadOf(r)} dead letter(s) of rule “${r.name}” to their targets again?`, confirmLabel: 'Replay' })) return;
    try {
      const res = await post(`/api/v1/rules/${enc(r.id)}/dead-letters:replay`);
      toast(`${res.replayed} message(s) queued again`);
      clear(main);
      await render(main);
    } catch (err) {
      toast(err.message, 'error');
    }
  };
  append(body, h('section.panel', h('h2', 'Rules'),
    table([
      { label: 'Rule', cell: (r) => h('div', h('strong', r.name || `rule ${r.id}`), h('div.muted.small', `#${r.id} · format ${r.format || 'iotgate'}`)) },
      { label: 'State', cell: (r) => (r.enabled === false ? badge('Disabled', 'danger') : badge('Enabled', 'ok')) },
      { label: 'Selects', cell: (r) => h('div', h('div', r.source || 'all sources', r.productKey ? [' of ', h('code', r.productKey)] : ' of all products'), r.where ? h('code.small', `WHERE ${r.where}`) : null) },
      { label: 'Targets and counters', cell: (r) => (r.targets || []).map(targetLine) },
      { label: '', class: 'actions', cell: (r) => (deadOf(r) ? h('button.btn-small', { type: 'button', onclick: () => replay(r) }, 'Replay dead letters') : null) },
    ], rules, 'No forwarding rules yet. Create them with the API or the CLI (iotgate rule create …).')));

  const dead = h('section.panel', h('h2', 'Dead letters'), h('p.muted', 'Loading…'));
  append(body, dead);
  const items = [];
  for (const r of rules.filter((x) => deadOf(x) > 0)) {
    try {
      const res = await get(`/api/v1/rules/${enc(r.id)}/dead-letters` + qs({ limit: 50 }));
      for (const d of res.items || []) items.push({ ...d, rule: r.name || `#${r.id}` });
    } catch (err) {
      items.push({ rule: r.name, lastError: err.message });
    }
  }
  items.sort((a, b) => (b.deadAt || 0) - (a.deadAt || 0));
  append(clear(dead), h('h2', 'Dead letters'), h('p.muted.small', 'Messages a target refused or could not take in time; the 50 newest per rule.'),
    table([
      { label: 'Failed', cell: (d) => fmtTime(d.deadAt), class: 'nowrap' },
      { label: 'Rule', cell: (d) => String(d.rule) },
      { label: 'Device', cell: (d) => (d.productKey ? `${d.productKey}/${d.deviceName}` : '') },
      { label: 'Source', cell: (d) => [d.source, d.identifier && d.identifier !== d.source ? ` ${d.identifier}` : ''].join('') },
      { label: 'Tries', cell: (d) => String(d.tries ?? '') },
      { label: 'Last error', cell: (d) => (d.lastError ? h('span.reason', d.lastError) : h('span.muted', d.tries === 0 ? 'not attempted (expired while waiting)' : '—')) },
    ], items, 'No dead letters: every message reached its targets.'));
}
