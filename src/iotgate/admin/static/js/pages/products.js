// Products: list, create (the Alibaba console's form), and a product's page with its thing model.
import { del, enc, get, invalidateProducts, patch, post, qs, request } from '../api.js';
import {
  append, badge, clear, clearErrors, confirmDialog, copyButton, download, errorPanel, field, fmtTime, h, modal, pageHead,
  pager, radios, select, setError, showApiError, table, tabs, toast,
} from '../ui.js';
import { modelEditor } from './model-editor.js';

export const NODE_TYPES = [
  { value: 'direct', label: 'Directly connected device', hint: 'Connects to iotgate by itself.' },
  { value: 'gateway', label: 'Gateway device', hint: 'Connects by itself and reports for sub-devices.' },
  { value: 'sub-device', label: 'Gateway sub-device', hint: 'Reaches iotgate through a gateway.' },
];
export const DATA_FORMATS = [
  { value: 'alink-json', label: 'ICA standard data format (Alink JSON)' },
  { value: 'custom', label: 'Custom (pass-through / raw data)' },
];
export const AUTH_TYPES = [{ value: 'device-secret', label: 'Device secret (per-device DeviceSecret)' }];
const label = (list, v) => (list.find((x) => x.value === v) || { label: v }).label;
const PAGE = 20;

export function createProductDialog(onCreated) {
  const name = h('input', { type: 'text', name: 'name', maxlength: 64, autocomplete: 'off' });
  const nodeType = radios('nodeType', 'Node type', NODE_TYPES, 'direct');
  const dataFormat = select(DATA_FORMATS, 'alink-json', { name: 'dataFormat' });
  const authType = select(AUTH_TYPES, 'device-secret', { name: 'authType' });
  const description = h('textarea', { name: 'description', maxlength: 500, rows: 2 });
  const inputs = { name, dataFormat, authType, description };
  modal({
    title: 'Create product',
    submitLabel: 'Create',
    body: h('div',
      field('Product name', name, { required: true, id: 'product-name', hint: 'Shown in the console; e.g. “Temperature & humidity collector”.' }),
      nodeType,
      field('Data format', dataFormat, { id: 'product-data-format' }),
      field('Authentication method', authType, { id: 'product-auth' }),
      field('Description', description, { id: 'product-description' })),
    onSubmit: async ({ close, formError }) => {
      clearErrors(formError.parentNode);
      if (!name.value.trim()) {
        setError(name, 'Enter a product name.');
        name.focus();
        return;
      }
      try {
        const p = await post('/api/v1/products', {
          name: name.value.trim(), nodeType: nodeType.value(), dataFormat: dataFormat.value,
          authType: authType.value, description: description.value,
        });
        invalidateProducts();
        close();
        toast(`Product “${p.name}” created`);
        onCreated(p);
      } catch (err) {
        showApiError(err, formError, inputs);
      }
    },
  });
}

export async function renderList(main, _params, query) {
  const offset = Math.max(0, parseInt(query.get('offset') || '0', 10) || 0);
  const body = h('div.panel');
  append(main, pageHead('Products', {
    sub: 'A product defines the thing model (properties, events, services) its devices report against.',
    actions: [h('button.btn-primary', { type: 'button', id: 'create-product', onclick: () => createProductDialog((p) => { location.hash = `#/products/${enc(p.productKey)}?tab=model`; }) }, 'Create product')],
  }), body);
  const load = async () => {
    append(clear(body), h('p.muted', 'Loading…'));
    try {
      const page = await get('/api/v1/products' + qs({ offset, limit: PAGE }));
      append(clear(body), 
        table([
          { label: 'Name', cell: (p) => h('a', { href: `#/products/${enc(p.productKey)}` }, p.name) },
          { label: 'ProductKey', cell: (p) => h('code', p.productKey) },
          { label: 'Node type', cell: (p) => label(NODE_TYPES, p.nodeType) },
          { label: 'Data format', cell: (p) => p.dataFormat },
          { label: 'Created', cell: (p) => fmtTime(p.createdAt), class: 'nowrap' },
          { label: 'Actions', class: 'actions', cell: (p) => [
            h('a.btn.btn-small', { href: `#/products/${enc(p.productKey)}?tab=model` }, 'Thing model'),
            h('a.btn.btn-small', { href: `#/devices?product=${enc(p.productKey)}` }, 'Devices')] },
        ], page.items, 'No products yet. Create one to define its thing model and add devices.'),
        page.total > PAGE ? pager(offset, PAGE, page.total, (o) => { location.hash = `#/products?offset=${o}`; }) : null);
    } catch (err) {
      append(clear(body), errorPanel(err, load));
    }
  };
  await load();
}

export async function renderProduct(main, [pk], query) {
  let product;
  try {
    product = await get(`/api/v1/products/${enc(pk)}`);
  } catch (err) {
    append(main, pageHead('Product', { crumbs: [{ label: 'Products', href: '#/products' }] }), errorPanel(err));
    return;
  }
  const head = h('div');
  const renderHead = () => append(clear(head), pageHead(product.name, {
    crumbs: [{ label: 'Products', href: '#/products' }, { label: product.name }],
    sub: h('span.row', h('span', 'ProductKey ', h('code', { id: 'product-key' }, product.productKey)),
      copyButton(product.productKey, 'Copy', 'ProductKey'),
      badge(label(NODE_TYPES, product.nodeType), 'info'), badge(product.dataFormat), badge(product.authType)),
    actions: [
      h('a.btn', { href: `#/devices?product=${enc(pk)}` }, `Devices (${product.deviceCount ?? 0})`),
    ],
  }));
  renderHead();
  const panel = h('div');
  let cleanupTab = null;
  const t = tabs([
    { id: 'model', label: 'Thing model' },
    { id: 'versions', label: 'Versions' },
    { id: 'io', label: 'Import / export' },
    { id: 'settings', label: 'Settings' },
  ], null, async (id) => {
    if (cleanupTab) { cleanupTab(); cleanupTab = null; }
    history.replaceState(null, '', `#/products/${enc(pk)}?tab=${id}`);
    clear(panel);
    if (id === 'model') cleanupTab = await modelEditor(panel, product);
    else if (id === 'versions') await versionsTab(panel, pk);
    else if (id === 'io') ioTab(panel, pk);
    else settingsTab(panel, product, (p) => { product = { ...product, ...p }; renderHead(); });
  });
  append(main, head, t.el, panel);
  t.select(query.get('tab') || 'model');
  return () => { if (cleanupTab) cleanupTab(); };
}

export function diffList(changes) {
  if (!changes.length) return h('p.muted', 'No changes.');
  const kinds = { added: 'ok', removed: 'danger', changed: 'warn' };
  return h('ul.diff-list', changes.map((c) => h('li', badge(c.change, kinds[c.change]), ' ', c.kind, ' ', h('code', c.identifier))));
}

async function versionsTab(panel, pk) {
  const out = h('div');
  append(panel, out);
  let versions;
  try {
    versions = (await get(`/api/v1/products/${enc(pk)}/thing-model/versions`)).items;
  } catch (err) {
    append(out, errorPanel(err));
    return;
  }
  if (!versions.length) {
    append(out, h('div.panel', h('p.muted', 'The thing model has not been published yet. Devices can report once it is: open “Thing model” and publish.')));
    return;
  }
  const opts = [{ value: 'draft', label: 'Draft (unpublished)' }, ...[...versions].reverse().map((v) => ({ value: String(v.version), label: `Version ${v.version}` }))];
  const from = select(opts, versions.length > 1 ? String(versions[versions.length - 2].version) : String(versions[versions.length - 1].version), { name: 'from' });
  const to = select(opts, versions.length > 1 ? String(versions[versions.length - 1].version) : 'draft', { name: 'to' });
  const result = h('div');
  const compare = async () => {
    append(clear(result), h('p.muted', 'Comparing…'));
    try {
      const d = await get(`/api/v1/products/${enc(pk)}/thing-model/diff` + qs({ from: from.value, to: to.value }));
      append(clear(result), h('h3', `Changes from ${from.selectedOptions[0].textContent} to ${to.selectedOptions[0].textContent}`), diffList(d.changes));
    } catch (err) {
      append(clear(result), h('div.form-error', err.message));
    }
  };
  const view = async (v) => {
    try {
      const doc = await get(`/api/v1/products/${enc(pk)}/thing-model` + qs({ version: v }));
      modal({ title: `Thing model, version ${v}`, wide: true, body: h('pre.payload', JSON.stringify(doc, null, 2)), actions: [{ label: 'Close', primary: true }] });
    } catch (err) {
      toast(err.message, 'error');
    }
  };
  append(out, 
    h('section.panel', h('h2', 'Published versions'),
      table([
        { label: 'Version', cell: (v) => `Version ${v.version}` },
        { label: 'Published', cell: (v) => fmtTime(v.publishedAt) },
        { label: '', class: 'actions', cell: (v) => h('button.btn-small', { type: 'button', onclick: () => view(v.version) }, 'View JSON') },
      ], [...versions].reverse())),
    h('section.panel', h('h2', 'Compare'),
      h('div.filters', field('From', from, { id: 'diff-from' }), field('To', to, { id: 'diff-to' }),
        h('button.btn-primary', { type: 'button', id: 'diff-compare', onclick: compare }, 'Compare')),
      result));
  await compare();
}

const FORMATS = [
  { value: 'alibaba', label: 'Alibaba Cloud TSL (JSON)' },
  { value: 'huawei', label: 'Huawei IoTDA product model (JSON)' },
  { value: 'iotgate', label: 'iotgate JSON' },
];

function ioTab(panel, pk) {
  const version = select([{ value: 'draft', label: 'Draft' }, { value: 'latest', label: 'Latest published' }], 'draft', { name: 'version' });
  const exportError = h('div.form-error', { role: 'alert' });
  const doExport = async (fmt) => {
    exportError.textContent = '';
    try {
      const doc = await get(`/api/v1/products/${enc(pk)}/thing-model` + qs({ format: fmt, version: version.value }));
      download(`${pk}-${fmt === 'alibaba' ? 'tsl' : fmt === 'huawei' ? 'huawei-model' : 'model'}.json`, JSON.stringify(doc, null, 2));
    } catch (err) {
      exportError.textContent = err.message;
    }
  };
  const fmt = select(FORMATS, 'alibaba', { name: 'format' });
  const file = h('input', { type: 'file', accept: '.json,application/json', name: 'file' });
  const importError = h('div.form-error', { role: 'alert' });
  const result = h('div');
  const form = h('form', { novalidate: true },
    importError,
    h('div.inline-fields', field('Format', fmt, { id: 'import-format' }),
      field('Model file', file, { id: 'import-file', required: true, hint: 'A .json file exported from Alibaba Cloud IoT, Huawei IoTDA or iotgate.' })),
    h('button.btn-primary', { type: 'submit', id: 'import-submit' }, 'Import into the draft'), result);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(form);
    clear(result);
    const f = file.files[0];
    if (!f) { setError(file, 'Choose a file to import.'); return; }
    if (f.size > 4 * 1024 * 1024) { setError(file, 'The file is larger than 4 MB.'); return; }
    const text = await f.text();
    try {
      JSON.parse(text);
    } catch (err) {
      setError(file, `This file is not valid JSON: ${err.message}`);
      return;
    }
    try {
      const model = await request('PUT', `/api/v1/products/${enc(pk)}/thing-model` + qs({ format: fmt.value }), { body: text, headers: { 'Content-Type': 'application/json' } });
      const n = (k) => (model[k] || []).length + (model.modules || []).reduce((a, m) => a + (m[k] || []).length, 0);
      append(result, h('div.callout.info', `Imported ${n('properties')} properties, ${n('events')} events and ${n('services')} services into the draft. `,
        h('a', { href: `#/products/${enc(pk)}?tab=model` }, 'Review and publish it in the editor.')));
      toast('Model imported into the draft');
    } catch (err) {
      setError(file, err.message);
    }
  });
  append(panel, 
    h('section.panel', h('h2', 'Export'),
      h('p.muted', 'Download the thing model to load it into Alibaba Cloud IoT, Huawei IoTDA or another iotgate.'),
      exportError,
      h('div.filters', field('Version', version, { id: 'export-version' }),
        FORMATS.map((f) => h('button', { type: 'button', dataset: { export: f.value }, onclick: () => doExport(f.value) }, `Download ${f.label}`)))),
    h('section.panel', h('h2', 'Import'),
      h('p.muted', 'Importing replaces the draft. Publish it afterwards so that devices report against it.'),
      form));
}

function settingsTab(panel, product, onSaved) {
  const name = h('input', { type: 'text', value: product.name, maxlength: 64 });
  const description = h('textarea', { rows: 2 });
  description.value = product.description || '';
  const rate = h('input', { type: 'number', min: 0, step: 'any', value: product.ratePerSecond ?? '', placeholder: 'server default' });
  const inputs = { name, description, ratePerSecond: rate };
  const formError = h('div.form-error', { role: 'alert' });
  const form = h('form', { novalidate: true }, formError,
    field('Product name', name, { required: true, id: 'settings-name' }),
    field('Description', description, { id: 'settings-description' }),
    field('Requests per second per device', rate, { id: 'settings-rate', hint: 'Empty: the server-wide limit (--device-rate-per-s).' }),
    h('button.btn-primary', { type: 'submit' }, 'Save'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(form);
    const r = rate.value.trim();
    if (r && !(Number(r) > 0)) { setError(rate, 'Enter a positive number, or leave it empty.'); return; }
    try {
      const p = await patch(`/api/v1/products/${enc(product.productKey)}`, { name: name.value.trim(), description: description.value, ratePerSecond: r ? Number(r) : null });
      invalidateProducts();
      toast('Saved');
      onSaved(p);
    } catch (err) {
      showApiError(err, formError, inputs);
    }
  });
  const delError = h('div.form-error', { role: 'alert' });
  append(panel, h('section.panel', h('h2', 'Settings'), form),
    h('section.panel', h('h2', 'Delete product'),
      h('p.muted', 'Only a product without devices can be deleted.'), delError,
      h('button.btn-danger', {
        type: 'button',
        onclick: async () => {
          delError.textContent = '';
          if (!await confirmDialog({ title: 'Delete product', message: h('span', 'Delete ', h('strong', product.name), ' and its thing model? This cannot be undone.'), confirmLabel: 'Delete product', danger: true })) return;
          try {
            await del(`/api/v1/products/${enc(product.productKey)}`);
            invalidateProducts();
            toast('Product deleted');
            location.hash = '#/products';
          } catch (err) {
            delError.textContent = err.message;
          }
        },
      }, 'Delete product…')));
}

