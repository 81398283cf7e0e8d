// Device details: running status (live over SSE), history charts with CSV, messages and rejections,
// gateway sub-devices, credentials and connection snippets.
import { del, devicePath, enc, get, patch, post, qs } from '../api.js';
import { lineChart } from '../chart.js';
import {
  append, badge, clear, clearErrors, confirmDialog, copyButton, download, errorPanel, field, fmtAgo, fmtNumber, fmtTime, h,
  pageHead, select, setError, showApiError, statusBadge, table, tabs, toast, toCsv,
} from '../ui.js';
import { showCredentials } from './devices.js';
import { snippetBox } from '../snippets.js';

const NUMBER = ['int32', 'int64', 'float', 'double'];
const HISTORY_LIMIT = 5000;
const KIND_LABELS = { rejected: 'Rejected', event: 'Event', message: 'Raw message', deviceinfo: 'Device info', ota: 'OTA' };
const RANGES = [
  { value: '900000', label: 'Last 15 minutes' },
  { value: '3600000', label: 'Last hour' },
  { value: '21600000', label: 'Last 6 hours' },
  { value: '86400000', label: 'Last 24 hours' },
  { value: '604800000', label: 'Last 7 days' },
  { value: 'custom', label: 'Custom range' },
];

/** A live event stream of one device (EventSource with the session cookie); listeners per event type. */
function liveFeed(path, onState) {
  const listeners = { property: [], message: [], ready: [] };
  let source = null;
  let connectedOnce = false;
  const open = () => {
    source = new EventSource(path + '/events');
    source.addEventListener('ready', () => {
      onState(true);
      if (connectedOnce) listeners.ready.forEach((fn) => fn()); // reconnected: reload what may have been missed
      connectedOnce = true;
    });
    for (const type of ['property', 'message']) {
      source.addEventListener(type, (e) => {
        let data;
        try { data = JSON.parse(e.data); } catch (err) { return; }
        listeners[type].forEach((fn) => fn(data));
      });
    }
    source.addEventListener('overflow', () => { source.close(); onState(false); setTimeout(open, 1000); });
    source.onerror = () => onState(false);
  };
  open();
  return {
    on: (type, fn) => { listeners[type].push(fn); return () => { listeners[type] = listeners[type].filter((x) => x !== fn); }; },
    close: () => source && source.close(),
  };
}

function labelled(dt, value) {
  if (value === null || value === undefined) return null;
  const s = dt?.specs || {};
  if (dt?.type === 'bool' && s[String(Number(value))]) return s[String(Number(value))];
  if (dt?.type === 'enum' && s[String(value)]) return s[String(value)];
  return null;
}

function formatValue(value) {
  if (value === null || value === undefined) return '—';
  if (typeof value === 'number') return fmtNumber(value, 6);
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

function modelTypes(model) {
  const out = {};
  for (const p of model?.properties || []) out[p.identifier] = p.dataType;
  for (const m of model?.modules || []) for (const p of m.properties || []) out[`${m.identifier}:${p.identifier}`] = p.dataType;
  return out;
}

export async function render(main, [pk, dn], query) {
  const path = devicePath(pk, dn);
  let device, product, model = null;
  try {
    [device, product] = await Promise.all([get(path), get(`/api/v1/products/${enc(pk)}`)]);
  } catch (err) {
    append(main, pageHead(dn, { crumbs: [{ label: 'Devices', href: '#/devices' }] }), errorPanel(err));
    return;
  }
  try { model = await get(`/api/v1/products/${enc(pk)}/thing-model` + qs({ version: 'latest' })); } catch (e) { /* unpublished */ }
  const types = modelTypes(model);

  const liveState = h('span.live', { id: 'live-state', 'aria-live': 'polite' }, 'Connecting…');
  const feed = liveFeed(path, (ok) => {
    liveState.textContent = '';
    append(liveState, ok ? h('span.dot.ok', { 'aria-hidden': 'true' }) : h('span.dot', { 'aria-hidden': 'true' }), ok ? 'Live' : 'Reconnecting…');
    liveState.dataset.connected = String(ok);
  });
  const headBox = h('div');
  const renderHead = () => append(clear(headBox), pageHead(device.deviceName, {
    crumbs: [{ label: 'Devices', href: '#/devices' }, { label: product.name, href: `#/products/${enc(pk)}` }, { label: device.deviceName }],
    sub: h('span.row', { id: 'device-badges' }, statusBadge(device),
      device.enabled ? badge('Enabled', 'ok') : badge('Disabled', 'danger'),
      h('span.muted', device.lastSeen ? `last report ${fmtTime(device.lastSeen)} (${fmtAgo(device.lastSeen)})` : 'no report yet'),
      device.nickname ? h('span.muted', `“${device.nickname}”`) : null,
      device.gateway ? h('span.muted', 'via gateway ', h('a', { href: `#/devices/${enc(device.gateway.productKey)}/${enc(device.gateway.deviceName)}` }, device.gateway.deviceName)) : null),
    actions: [
      h('button', { type: 'button', id: 'toggle-device', onclick: toggle }, device.enabled ? 'Disable' : 'Enable'),
      h('button', { type: 'button', id: 'reset-secret', onclick: resetSecret }, 'Reset secret…'),
      h('button.btn-danger', { type: 'button', id: 'delete-device', onclick: remove }, 'Delete…'),
    ],
  }));
  async function toggle() {
    try {
      const d = await patch(path, { enabled: !device.enabled });
      device = { ...device, ...d };
      toast(`${dn} ${device.enabled ? 'enabled' : 'disabled'}`);
      renderHead();
    } catch (err) { toast(err.message, 'error'); }
  }
  async function resetSecret() {
    const ok = await confirmDialog({ title: 'Reset DeviceSecret', message: h('div', h('p', 'Give ', h('strong', dn), ' a new DeviceSecret?'), h('p.muted', 'The old secret and every token issued with it stop working at once; the device must be updated with the new secret.')), confirmLabel: 'Reset secret', danger: true });
    if (!ok) return;
    try {
      const cred = await post(path + '/reset-secret');
      device.deviceSecret = cred.deviceSecret;
      await showCredentials(cred, 'New DeviceSecret');
    } catch (err) { toast(err.message, 'error'); }
  }
  async function remove() {
    const ok = await confirmDialog({ title: 'Delete device', message: h('div', h('p', 'Delete ', h('strong', dn), ' with all its reported data?'), h('p.muted', 'This cannot be undone.')), confirmLabel: 'Delete device', danger: true });
    if (!ok) return;
    try {
      await del(path);
      toast(`${dn} deleted`);
      location.hash = '#/devices';
    } catch (err) { toast(err.message, 'error'); }
  }
  renderHead();

  const panel = h('div');
  let tabCleanup = null;
  const defs = [
    { id: 'status', label: 'Running status' },
    { id: 'history', label: 'History' },
    { id: 'messages', label: 'Messages' },
    ...(product.nodeType === 'gateway' ? [{ id: 'subdevices', label: 'Sub-devices' }] : []),
    { id: 'info', label: 'Credentials & connection' },
  ];
  const t = tabs(defs, null, async (id) => {
    if (tabCleanup) { tabCleanup(); tabCleanup = null; }
    history.replaceState(null, '', `#/devices/${enc(pk)}/${enc(dn)}?tab=${id}`);
    clear(panel);
    const ctx = { path, pk, dn, device, product, types, feed, liveState };
    if (id === 'status') tabCleanup = await statusTab(panel, ctx, (d) => { device = { ...device, ...d }; renderHead(); });
    else if (id === 'history') await historyTab(panel, ctx);
    else if (id === 'messages') tabCleanup = await messagesTab(panel, ctx);
    else if (id === 'subdevices') await subDevicesTab(panel, ctx);
    else await infoTab(panel, ctx);
  });
  append(main, headBox, t.el, panel);
  t.select(defs.some((d) => d.id === query.get('tab')) ? query.get('tab') : 'status');
  return () => { if (tabCleanup) tabCleanup(); feed.close(); };
}

async function statusTab(panel, { path, types, feed, liveState }, onSeen) {
  const grid = h('div.prop-grid', { id: 'running-status' });
  append(panel, h('section.panel',
    h('div.panel-head', h('h2', 'Running status'), liveState),
    h('p.muted.small', 'The latest value of each property; new reports appear here as they are committed.'),
    grid));
  const cards = {};
  const setValue = (ident, value, time, flash) => {
    const c = cards[ident];
    if (!c) return false;
    if (flash && c.ts && time < c.ts) return true; // a late report of older data: the latest value stays
    c.ts = time;
    append(clear(c.value), formatValue(value), c.unit && value !== null && value !== undefined ? h('span.unit', c.unit) : null);
    c.value.classList.toggle('text', typeof value === 'string' || typeof value === 'object');
    const lab = labelled(types[ident], value);
    c.label.textContent = lab ? `(${lab})` : '';
    c.time.textContent = time ? `updated ${fmtTime(time)}` : 'no value yet';
    c.card.dataset.value = value === null || value === undefined ? '' : typeof value === 'object' ? JSON.stringify(value) : String(value);
    if (flash) {
      c.card.classList.add('flash');
      setTimeout(() => c.card.classList.remove('flash'), 50);
    }
    return true;
  };
  const addCard = (p) => {
    const value = h('div.value', { dataset: { propValue: p.identifier } });
    const label = h('span.muted.small');
    const time = h('div.sub');
    const card = h('div.card.prop-card', { id: `prop-${p.identifier}`, dataset: { identifier: p.identifier } },
      h('div.label', p.name || p.identifier, ' ', h('span.ident', p.identifier)), value, label, time,
      p.accessMode ? h('div.sub', p.accessMode === 'rw' ? 'read & write' : 'read-only') : null);
    cards[p.identifier] = { card, value, label, time, unit: p.unit };
    grid.appendChild(card);
    setValue(p.identifier, p.value, p.time, false);
  };
  const load = async () => {
    try {
      const items = (await get(path + '/properties')).items;
      clear(grid);
      for (const k of Object.keys(cards)) delete cards[k];
      if (!items.length) append(grid, h('div.empty', 'The product’s thing model has no properties yet, or it is not published.'));
      items.forEach(addCard);
    } catch (err) {
      append(clear(grid), h('div.form-error', err.message));
    }
  };
  await load();
  const offProp = feed.on('property', (ev) => {
    for (const [ident, value] of Object.entries(ev.values || {})) {
      if (!setValue(ident, value, ev.time, true)) {
        addCard({ identifier: ident, name: ident, value, time: ev.time });
      }
    }
    onSeen({ online: true, lastSeen: ev.receivedAt });
  });
  const offReady = feed.on('ready', load);
  return () => { offProp(); offReady(); };
}

function toLocalInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

async function historyTab(panel, { path, pk, dn, types }) {
  let props = [];
  try {
    props = (await get(path + '/properties')).items;
  } catch (err) {
    append(panel, errorPanel(err));
    return;
  }
  const range = select(RANGES, '3600000', { id: 'history-range' });
  const now = Date.now();
  const from = h('input', { type: 'datetime-local', id: 'history-from', value: toLocalInput(now - 3600000) });
  const to = h('input', { type: 'datetime-local', id: 'history-to', value: toLocalInput(now) });
  const custom = h('div.row', { class: 'hidden' }, field('From', from), field('To', to));
  const out = h('div', { id: 'history-charts' });
  let data = {};
  const bounds = () => {
    if (range.value !== 'custom') {
      const t1 = Date.now();
      return [t1 - Number(range.value), t1];
    }
    return [new Date(from.value).getTime(), new Date(to.value).getTime()];
  };
  const load = async () => {
    clearErrors(custom);
    const [t0, t1] = bounds();
    if (!(t0 >= 0) || !(t1 >= 0)) { setError(!(t0 >= 0) ? from : to, 'Enter a date and time.'); return; }
    if (t0 > t1) { setError(to, '“To” must be after “From”.'); return; }
    append(clear(out), h('p.muted', 'Loading…'));
    try {
      const results = await Promise.all(props.map((p) => get(`${path}/properties/${enc(p.identifier)}/history` + qs({ from: Math.floor(t0), to: Math.ceil(t1), limit: HISTORY_LIMIT }))));
      data = {};
      props.forEach((p, i) => { data[p.identifier] = results[i].items.slice().reverse(); });
    } catch (err) {
      append(clear(out), h('div.form-error', err.message));
      return;
    }
    clear(out);
    if (!props.length) { append(out, h('div.panel.empty', 'No properties to chart.')); return; }
    const grid = h('div.charts');
    for (const p of props) {
      const points = data[p.identifier];
      const dt = types[p.identifier] || { type: p.dataType };
      const numeric = NUMBER.includes(dt.type) || dt.type === 'bool' || (points.length && points.every((x) => typeof x.value === 'number'));
      const body = !points.length
        ? h('div.empty', 'No values in this time range.')
        : numeric
          ? lineChart({ series: [{ name: p.name || p.identifier, points: points.map((x) => [x.time, Number(x.value)]) }], from: t0, to: t1, unit: p.unit || '', width: 560, height: 240, compact: true, label: `${p.name} from ${fmtTime(t0)} to ${fmtTime(t1)}: ${points.length} values` })
          : table([{ label: 'Time', cell: (x) => fmtTime(x.time, true) }, { label: 'Value', cell: (x) => formatValue(x.value) }], points.slice(-50).reverse());
      append(grid, h('section.panel', { dataset: { history: p.identifier } },
        h('div.panel-head', h('h2', p.name || p.identifier, ' ', h('span.muted.small', points.length >= HISTORY_LIMIT ? `newest ${HISTORY_LIMIT} values; narrow the range for all` : `${points.length} value${points.length === 1 ? '' : 's'}`)),
          h('button.btn-small', { type: 'button', 'aria-label': `Download ${p.identifier} as CSV`, onclick: () => csv([p]) }, 'CSV')),
        body));
    }
    append(out, grid);
  };
  const csv = (which) => {
    const rows = [['time', 'timeMs', 'identifier', 'value']];
    for (const p of which) for (const x of data[p.identifier] || []) rows.push([new Date(x.time).toISOString(), x.time, p.identifier, x.value]);
    download(`${pk}-${dn}-${which.length === 1 ? which[0].identifier : 'history'}.csv`, toCsv(rows), 'text/csv');
  };
  range.addEventListener('change', () => { custom.classList.toggle('hidden', range.value !== 'custom'); if (range.value !== 'custom') load(); });
  const controls = h('form.filters', field('Time range', range), custom,
    h('div.field.btn-field', h('button.btn-primary', { type: 'submit' }, 'Show')),
    h('div.field.btn-field', h('button', { type: 'button', id: 'history-csv', onclick: () => csv(props) }, 'Download all as CSV')));
  controls.addEventListener('submit', (e) => { e.preventDefault(); load(); });
  append(panel, controls, out);
  await load();
}

function messageRow(m) {
  let payload = m.payload || '';
  try { if (payload) payload = JSON.stringify(JSON.parse(payload), null, 1); } catch (e) { /* raw */ }
  const short = payload.length > 160 ? payload.slice(0, 160) + '…' : payload;
  return h('tr', { dataset: { kind: m.kind, messageId: m.messageId } },
    h('td.nowrap', fmtTime(m.receivedAt || m.time, true)),
    h('td', badge(KIND_LABELS[m.kind] || m.kind, m.kind === 'rejected' ? 'danger' : m.kind === 'event' ? 'warn' : 'info')),
    h('td.messages-topic', h('code', m.topic || ''), m.identifier ? h('div.small', 'event ', h('code', m.identifier)) : null),
    h('td', m.reason ? h('div.reason', { dataset: { reason: '' } }, m.reason) : h('span.muted', '—')),
    h('td', payload.length > 160
      ? h('details', h('summary', h('code', short)), h('pre.payload', payload))
      : h('pre.payload', payload || '—')));
}

async function messagesTab(panel, { path, feed }) {
  const kind = select([{ value: '', label: 'All kinds' }, ...Object.entries(KIND_LABELS).map(([value, label]) => ({ value, label }))], '', { id: 'messages-kind' });
  const tbody = h('tbody');
  const empty = h('div.empty.hidden', 'No messages yet. Property reports are under Running status and History.');
  const more = h('button', { type: 'button', class: 'hidden', id: 'messages-more' }, 'Load older');
  const errorBox = h('div.form-error', { role: 'alert' });
  let next = null;
  const load = async (append = false) => {
    errorBox.textContent = '';
    try {
      const page = await get(path + '/messages' + qs({ kind: kind.value, limit: 50, before: append ? next : '' }));
      if (!append) clear(tbody);
      page.items.forEach((m) => tbody.appendChild(messageRow(m)));
      next = page.next;
      more.classList.toggle('hidden', !next);
      empty.classList.toggle('hidden', tbody.children.length > 0);
    } catch (err) {
      errorBox.textContent = err.message;
    }
  };
  kind.addEventListener('change', () => load());
  more.addEventListener('click', () => load(true));
  append(panel, h('section.panel',
    h('div.panel-head', h('h2', 'Messages'), h('div', field('Kind', kind))),
    h('p.muted.small', 'Events, raw messages, device info, OTA versions and rejected reports with the reason, newest first; new ones appear live.'),
    errorBox,
    h('div.table-wrap', h('table', { id: 'messages-table' },
      h('thead', h('tr', ['Received', 'Kind', 'Topic', 'Reason', 'Payload'].map((x) => h('th', { scope: 'col' }, x)))),
      tbody)),
    empty, more));
  await load();
  const off = feed.on('message', (m) => {
    if (kind.value && m.kind !== kind.value) return;
    tbody.insertBefore(messageRow(m), tbody.firstChild);
    empty.classList.add('hidden');
  });
  const offReady = feed.on('ready', () => load());
  return () => { off(); offReady(); };
}

async function subDevicesTab(panel, { path }) {
  const list = h('div');
  const subPk = h('input', { type: 'text', name: 'productKey', autocomplete: 'off' });
  const subDn = h('input', { type: 'text', name: 'deviceName', autocomplete: 'off' });
  const formError = h('div.form-error', { role: 'alert' });
  const form = h('form', { novalidate: true }, formError,
    h('div.inline-fields', field('Sub-device ProductKey', subPk, { required: true, id: 'sub-pk' }), field('Sub-device DeviceName', subDn, { required: true, id: 'sub-dn' })),
    h('button.btn-primary', { type: 'submit' }, 'Attach sub-device'));
  const load = async () => {
    try {
      const page = await get(path + '/sub-devices' + qs({ limit: 1000 }));
      append(clear(list), table([
        { label: 'DeviceName', cell: (d) => h('a', { href: `#/devices/${enc(d.productKey)}/${enc(d.deviceName)}` }, d.deviceName) },
        { label: 'ProductKey', cell: (d) => h('code', d.productKey) },
        { label: 'Status', cell: (d) => statusBadge(d) },
        { label: '', class: 'actions', cell: (d) => h('button.btn-small.btn-danger', {
          type: 'button',
          onclick: async () => {
            if (!await confirmDialog({ title: 'Detach sub-device', message: `Detach ${d.deviceName} from this gateway?`, confirmLabel: 'Detach', danger: true })) return;
            try { await del(`${path}/sub-devices/${enc(d.productKey)}/${enc(d.deviceName)}`); load(); } catch (err) { toast(err.message, 'error'); }
          },
        }, 'Detach') },
      ], page.items, 'No sub-devices attached. Attach devices of a “Gateway sub-device” product.'));
    } catch (err) {
      append(clear(list), h('div.form-error', err.message));
    }
  };
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(form);
    if (!subPk.value.trim()) { setError(subPk, 'Enter the ProductKey.'); return; }
    if (!subDn.value.trim()) { setError(subDn, 'Enter the DeviceName.'); return; }
    try {
      await post(path + '/sub-devices', { devices: [{ productKey: subPk.value.trim(), deviceName: subDn.value.trim() }] });
      subDn.value = '';
      toast('Sub-device attached');
      load();
    } catch (err) {
      showApiError(err, formError, {});
    }
  });
  append(panel, h('section.panel', h('h2', 'Sub-devices'), list), h('section.panel', h('h2', 'Attach'), form));
  await load();
}

async function infoTab(panel, { device }) {
  const secret = h('code', { id: 'device-secret' }, '•'.repeat(16));
  let shown = false;
  const reveal = h('button.btn-small', {
    type: 'button',
    onclick: () => { shown = !shown; secret.textContent = shown ? device.deviceSecret : '•'.repeat(16); reveal.textContent = shown ? 'Hide' : 'Show'; },
  }, 'Show');
  const cred = { productKey: device.productKey, deviceName: device.deviceName, deviceSecret: device.deviceSecret, deviceId: device.deviceId };
  append(panel, 
    h('section.panel', h('h2', 'Credentials'),
      h('dl.kv',
        h('dt', 'ProductKey'), h('dd', h('div.secret-row', h('code', device.productKey), copyButton(device.productKey, 'Copy', 'ProductKey'))),
        h('dt', 'DeviceName'), h('dd', h('div.secret-row', h('code', device.deviceName), copyButton(device.deviceName, 'Copy', 'DeviceName'))),
        h('dt', 'DeviceSecret'), h('dd', h('div.secret-row', secret, reveal, copyButton(() => device.deviceSecret, 'Copy', 'DeviceSecret'))),
        h('dt', 'DeviceId (Huawei)'), h('dd', h('div.secret-row', h('code', device.deviceId), copyButton(device.deviceId, 'Copy', 'DeviceId'))),
        h('dt', 'Created'), h('dd', fmtTime(device.createdAt))),
      h('p.small', h('a', { href: `#/tools?productKey=${enc(device.productKey)}&deviceName=${enc(device.deviceName)}` }, 'Compute auth bodies in the signing tool →'))),
    h('section.panel', h('h2', 'Connect the device'), await snippetBox(cred)));
}


