// Devices: search/filter/paging, add one (credentials shown once with snippets), CSV bulk import,
// enable/disable and delete.
import { allProducts, del, devicePath, enc, get, patch, post, qs } from '../api.js';
import {
  append, clear, clearErrors, confirmDialog, copyButton, download, errorPanel, field, fmtAgo, fmtTime, h, modal, pageHead,
  pager, parseCsv, select, setError, showApiError, statusBadge, table, toast, toCsv, badge,
} from '../ui.js';
import { snippetBox } from '../snippets.js';

const PAGE = 20;
const NAME_RE = /^[A-Za-z0-9_\-.@:]{4,32}$/;
const BATCH = 200;

function credRow(label, value, id) {
  return [h('dt', label), h('dd', h('div.secret-row', h('code', { id }, value), copyButton(value, 'Copy', label)))];
}

/** The credentials of a new (or re-keyed) device, with snippets for both protocols. */
export async function showCredentials(cred, title = 'Device created') {
  const snippets = await snippetBox(cred);
  modal({
    title,
    wide: true,
    body: h('div',
      h('div.callout', 'Copy the DeviceSecret now and keep it safe: the device needs it to authenticate.'),
      h('dl.kv', { id: 'credentials' },
        credRow('ProductKey', cred.productKey, 'cred-product-key'),
        credRow('DeviceName', cred.deviceName, 'cred-device-name'),
        credRow('DeviceSecret', cred.deviceSecret, 'cred-device-secret'),
        credRow('DeviceId (Huawei)', cred.deviceId, 'cred-device-id')),
      h('h3', { class: 'snippets-title' }, 'Connect the device'),
      snippets),
    actions: [
      { label: 'Download as JSON', onClick: () => { download(`${cred.deviceName}-credentials.json`, JSON.stringify(cred, null, 2)); return false; } },
      { label: 'Done', primary: true },
    ],
  });
}

async function productSelect(value, { all = false, id } = {}) {
  const products = await allProducts();
  const opts = products.map((p) => ({ value: p.productKey, label: `${p.name} (${p.productKey})` }));
  return select(all ? [{ value: '', label: 'All products' }, ...opts] : opts, value, { id, name: 'product' });
}

async function addDeviceDialog(defaultProduct, onDone) {
  const products = await allProducts();
  if (!products.length) {
    modal({ title: 'Add device', body: h('p', 'Create a product first: devices belong to a product.'), actions: [{ label: 'Create a product', primary: true, onClick: () => { location.hash = '#/products'; } }] });
    return;
  }
  const product = await productSelect(defaultProduct || products[0].productKey);
  const name = h('input', { type: 'text', name: 'deviceName', maxlength: 32, autocomplete: 'off', spellcheck: 'false' });
  const nickname = h('input', { type: 'text', name: 'nickname', maxlength: 64, autocomplete: 'off' });
  const inputs = { deviceName: name, nickname, productKey: product };
  modal({
    title: 'Add device',
    submitLabel: 'Add device',
    body: h('div',
      field('Product', product, { required: true, id: 'device-product' }),
      field('DeviceName', name, { id: 'device-name', hint: '4–32 characters: letters, digits and - _ . @ : — leave empty for a generated name.' }),
      field('Nickname', nickname, { id: 'device-nickname', hint: 'Optional, for people.' })),
    onSubmit: async ({ close, formError, dialog }) => {
      clearErrors(dialog);
      const dn = name.value.trim();
      if (dn && !NAME_RE.test(dn)) {
        setError(name, 'Use 4–32 letters, digits or - _ . @ :');
        name.focus();
        return;
      }
      try {
        const cred = await post(`/api/v1/products/${enc(product.value)}/devices`, { ...(dn ? { deviceName: dn } : {}), ...(nickname.value.trim() ? { nickname: nickname.value.trim() } : {}) });
        close();
        onDone();
        await showCredentials(cred);
      } catch (err) {
        showApiError(err, formError, inputs);
      }
    },
  });
}

async function importDialog(defaultProduct, onDone) {
  const products = await allProducts();
  if (!products.length) { toast('Create a product first.', 'error'); return; }
  const product = await productSelect(defaultProduct || products[0].productKey);
  const file = h('input', { type: 'file', accept: '.csv,text/csv,text/plain', name: 'file' });
  const summary = h('p.muted', { 'aria-live': 'polite' });
  const progress = h('progress', { max: 1, value: 0, class: 'hidden', 'aria-label': 'Import progress' });
  let names = [];
  file.addEventListener('change', async () => {
    setError(file, '');
    names = [];
    const f = file.files[0];
    if (!f) { summary.textContent = ''; return; }
    const rows = parseCsv(await f.text()).filter((r) => r.some((c) => c.trim()));
    if (!rows.length) { setError(file, 'The file is empty.'); return; }
    const header = rows[0].map((c) => c.trim());
    const col = header.indexOf('deviceName');
    names = col >= 0 ? rows.slice(1).map((r) => (r[col] || '').trim()) : rows.map((r) => r[0].trim());
    const bad = names.map((n, i) => [n, i]).filter(([n]) => n && !NAME_RE.test(n));
    const dup = names.filter((n, i) => n && names.indexOf(n) !== i);
    if (bad.length) setError(file, `Line ${bad[0][1] + (col >= 0 ? 2 : 1)}: “${bad[0][0]}” is not a valid DeviceName (4–32 letters, digits, - _ . @ :).${bad.length > 1 ? ` ${bad.length - 1} more.` : ''}`);
    else if (dup.length) setError(file, `“${dup[0]}” appears more than once.`);
    summary.textContent = `${names.length} device${names.length === 1 ? '' : 's'} in the file${names.some((n) => !n) ? ' (empty names get generated names)' : ''}.`;
  });
  let created = [];
  modal({
    title: 'Bulk import devices',
    submitLabel: 'Import',
    body: h('div',
      field('Product', product, { required: true, id: 'import-product' }),
      field('CSV file', file, { required: true, id: 'import-csv', hint: 'A header row with a deviceName column, or one name per line (at most 10 000).' }),
      summary, progress),
    onSubmit: async ({ formError, dialog }) => {
      if (created.length) {  // second press: download the credentials
        download(`${product.value}-devices.csv`, toCsv([['productKey', 'deviceName', 'deviceSecret', 'deviceId'], ...created.map((d) => [d.productKey, d.deviceName, d.deviceSecret, d.deviceId])]), 'text/csv');
        return;
      }
      if (!file.files[0]) { setError(file, 'Choose a CSV file.'); return; }
      if (file.getAttribute('aria-invalid') === 'true') { file.focus(); return; }
      if (!names.length) { setError(file, 'No device names in the file.'); return; }
      if (names.length > 10000) { setError(file, 'At most 10 000 devices per import; split the file.'); return; }
      progress.classList.remove('hidden');
      progress.max = names.length;
      for (let i = 0; i < names.length; i += BATCH) {
        const chunk = names.slice(i, i + BATCH).map((n) => (n ? { deviceName: n } : {}));
        try {
          const r = await post(`/api/v1/products/${enc(product.value)}/devices:batch`, { devices: chunk });
          created.push(...r.devices);
        } catch (err) {
          formError.textContent = `Stopped at device ${i + 1}: ${err.message}. ${created.length} device(s) were created before; fix the file and import the rest.`;
          break;
        }
        progress.value = created.length;
        summary.textContent = `${created.length} / ${names.length} created…`;
      }
      onDone();
      if (created.length) {
        summary.textContent = `${created.length} of ${names.length} devices created. Download their credentials now.`;
        const submit = dialog.querySelector('button[type=submit]');
        submit.textContent = 'Download credentials (CSV)';
        file.disabled = true;
        product.disabled = true;
      }
    },
  });
}

export async function render(main, _params, query) {
  const state = {
    product: query.get('product') || '',
    search: query.get('search') || '',
    online: query.get('online') || '',
    offset: Math.max(0, parseInt(query.get('offset') || '0', 10) || 0),
  };
  const go = (patchState) => {
    const s = { ...state, ...patchState };
    location.hash = '#/devices' + qs({ product: s.product, search: s.search, online: s.online, offset: s.offset || '' });
  };
  const list = h('div.panel');
  append(main, pageHead('Devices', {
    sub: 'Devices authenticate with their DeviceSecret; online means a report in the last 10 minutes.',
    actions: [
      h('button', { type: 'button', id: 'import-devices', onclick: () => importDialog(state.product, load) }, 'Bulk import (CSV)'),
      h('button.btn-primary', { type: 'button', id: 'add-device', onclick: () => addDeviceDialog(state.product, load) }, 'Add device'),
    ],
  }));

  let productSel;
  try {
    productSel = await productSelect(state.product, { all: true, id: 'filter-product' });
  } catch (err) {
    append(main, errorPanel(err));
    return;
  }
  const products = Object.fromEntries((await allProducts()).map((p) => [p.productKey, p]));
  const search = h('input', { type: 'search', id: 'filter-search', value: state.search, placeholder: 'DeviceName or nickname' });
  const online = select([{ value: '', label: 'Any status' }, { value: 'true', label: 'Online' }, { value: 'false', label: 'Offline' }], state.online, { id: 'filter-online' });
  const filters = h('form.filters', { role: 'search' },
    field('Product', productSel),
    h('div.field.wide', h('label', { for: 'filter-search' }, 'Search'), search),
    field('Status', online),
    h('div.field.btn-field', h('button', { type: 'submit' }, 'Search')));
  filters.addEventListener('submit', (e) => { e.preventDefault(); go({ product: productSel.value, search: search.value.trim(), online: online.value, offset: 0 }); });
  productSel.addEventListener('change', () => go({ product: productSel.value, offset: 0 }));
  online.addEventListener('change', () => go({ online: online.value, offset: 0 }));
  append(main, filters, list);

  async function toggle(d) {
    try {
      await patch(devicePath(d.productKey, d.deviceName), { enabled: !d.enabled });
      toast(`${d.deviceName} ${d.enabled ? 'disabled' : 'enabled'}`);
      load();
    } catch (err) { toast(err.message, 'error'); }
  }
  async function remove(d) {
    const ok = await confirmDialog({
      title: 'Delete device',
      message: h('div', h('p', 'Delete ', h('strong', d.deviceName), ' with all its reported data?'), h('p.muted', 'Its credentials stop working at once. This cannot be undone.')),
      confirmLabel: 'Delete device', danger: true,
    });
    if (!ok) return;
    try {
      await del(devicePath(d.productKey, d.deviceName));
      toast(`${d.deviceName} deleted`);
      load();
    } catch (err) { toast(err.message, 'error'); }
  }

  async function load() {
    append(clear(list), h('p.muted', 'Loading…'));
    try {
      const page = await get('/api/v1/devices' + qs({ productKey: state.product, search: state.search, online: state.online, offset: state.offset, limit: PAGE }));
      append(clear(list), 
        state.online ? h('p.muted.small', 'The status filter applies to the devices of this page.') : null,
        table([
          { label: 'DeviceName', cell: (d) => h('a', { href: `#/devices/${enc(d.productKey)}/${enc(d.deviceName)}` }, d.deviceName) },
          { label: 'Nickname', cell: (d) => d.nickname || h('span.muted', '—') },
          { label: 'Product', cell: (d) => h('a', { href: `#/products/${enc(d.productKey)}` }, products[d.productKey]?.name || d.productKey) },
          { label: 'Status', cell: (d) => h('span', statusBadge(d), h('div.muted.small', d.lastSeen ? `last report ${fmtAgo(d.lastSeen)}` : 'never reported')) },
          { label: 'Enabled', cell: (d) => (d.enabled ? badge('Enabled', 'ok') : badge('Disabled', 'danger')) },
          { label: 'Created', cell: (d) => fmtTime(d.createdAt), class: 'nowrap' },
          { label: 'Actions', class: 'actions', cell: (d) => [
            h('a.btn.btn-small', { href: `#/devices/${enc(d.productKey)}/${enc(d.deviceName)}` }, 'View'),
            h('button.btn-small', { type: 'button', 'aria-label': `${d.enabled ? 'Disable' : 'Enable'} ${d.deviceName}`, onclick: () => toggle(d) }, d.enabled ? 'Disable' : 'Enable'),
            h('button.btn-small.btn-danger', { type: 'button', 'aria-label': `Delete ${d.deviceName}`, onclick: () => remove(d) }, 'Delete')] },
        ], page.items, state.search || state.product || state.online ? 'No devices match.' : 'No devices yet. Add one, or import a CSV file.'),
        pager(state.offset, PAGE, page.total, (o) => go({ offset: o })));
    } catch (err) {
      append(clear(list), errorPanel(err, load));
    }
  }
  await load();
}

