// The thing-model editor: properties, events and services per module, with type-specific specs,
// validation messages next to each field, saving to the draft and publishing with a diff.
import { enc, get, post, put, qs } from '../api.js';
import {
  append, badge, clear, clearErrors, confirmDialog, field, h, modal, nextId, radios, select, setError, table, toast,
} from '../ui.js';
import { diffList } from './products.js';

const NUMBER = ['int32', 'int64', 'float', 'double'];
const ALL_TYPES = [...NUMBER, 'enum', 'bool', 'text', 'date', 'struct', 'array'];
const MEMBER_TYPES = [...NUMBER, 'enum', 'bool', 'text', 'date'];
const ARRAY_ITEM_TYPES = [...NUMBER, 'text', 'struct'];
const TYPE_LABELS = {
  int32: 'int32 (integer)', int64: 'int64 (long integer)', float: 'float (single precision)',
  double: 'double (double precision)', enum: 'enum (enumeration)', bool: 'bool (boolean)',
  text: 'text (string)', date: 'date (timestamp, UTC ms)', struct: 'struct (structure)', array: 'array',
};
const BOUNDS = { int32: [-(2 ** 31), 2 ** 31 - 1], int64: [-Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER], float: [-3.4028234663852886e38, 3.4028234663852886e38], double: [-Number.MAX_VALUE, Number.MAX_VALUE] };
const IDENT_RE = /^[A-Za-z_][A-Za-z0-9_-]{0,49}$/;
const KINDS = { property: 'properties', event: 'events', service: 'services' };
const KIND_LABEL = { property: 'Property', event: 'Event', service: 'Service' };
const ACCESS = [{ value: 'r', label: 'Read-only' }, { value: 'rw', label: 'Read & write' }];
const EVENT_TYPES = [{ value: 'info', label: 'Info' }, { value: 'alert', label: 'Alert' }, { value: 'error', label: 'Fault (error)' }];
const CALL_TYPES = [{ value: 'async', label: 'Asynchronous' }, { value: 'sync', label: 'Synchronous' }];

const clone = (x) => JSON.parse(JSON.stringify(x));
const fmtNum = (n) => (n === undefined || n === null ? '' : String(n));

export function describeType(dt) {
  if (!dt) return '';
  const s = dt.specs || {};
  if (NUMBER.includes(dt.type)) {
    const parts = [dt.type];
    if (s.min !== undefined || s.max !== undefined) parts.push(`${fmtNum(s.min) || '−∞'} … ${fmtNum(s.max) || '∞'}`);
    if (s.step !== undefined) parts.push(`step ${s.step}`);
    if (s.unit) parts.push(s.unit);
    return parts.join(' · ');
  }
  if (dt.type === 'enum') return 'enum · ' + Object.entries(s).map(([k, v]) => `${k}: ${v}`).join(', ');
  if (dt.type === 'bool') return `bool · 0: ${s['0'] ?? ''} / 1: ${s['1'] ?? ''}`;
  if (dt.type === 'text') return s.length ? `text · ≤ ${s.length} bytes` : 'text';
  if (dt.type === 'date') return 'date (UTC ms)';
  if (dt.type === 'struct') return `struct · ${(Array.isArray(s) ? s : []).length} members`;
  if (dt.type === 'array') return `array of ${s.item?.type} · ≤ ${s.size}`;
  return dt.type;
}

// -- data-type editor ---------------------------------------------------------------------------

function numberInput(value, attrs = {}) {
  return h('input', { type: 'text', inputmode: 'decimal', autocomplete: 'off', value: fmtNum(value), ...attrs });
}

/** Parse a number field; pushes an error and returns undefined when invalid, undefined when empty. */
function readNumber(input, type, errors, what) {
  const raw = input.value.trim();
  if (raw === '') return undefined;
  if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(raw)) { errors.push([input, `${what} must be a number.`]); return undefined; }
  const n = Number(raw);
  if (!Number.isFinite(n)) { errors.push([input, `${what} must be a finite number.`]); return undefined; }
  if ((type === 'int32' || type === 'int64') && !Number.isInteger(n)) { errors.push([input, `${what} must be a whole number for ${type}.`]); return undefined; }
  const [lo, hi] = BOUNDS[type];
  if (n < lo || n > hi) { errors.push([input, `${what} is outside the ${type} range (${lo} … ${hi}).`]); return undefined; }
  return n;
}

/** typeEditor(dataType, allowed) → {el, collect(errors) → dataType}. */
export function typeEditor(dt, allowed = ALL_TYPES, prefix = nextId('dt')) {
  const original = dt ? clone(dt) : { type: allowed[0], specs: {} };
  const typeSel = select(allowed.map((t) => ({ value: t, label: TYPE_LABELS[t] })), original.type, { id: `${prefix}-type`, name: 'type' });
  const specsBox = h('div');
  let specs = null;
  const build = () => {
    const t = typeSel.value;
    const start = t === original.type ? original : { type: t, specs: t === 'struct' ? [] : t === 'array' ? { size: 10, item: { type: 'int32', specs: {} } } : {} };
    specs = specsEditor(t, start.specs, prefix);
    append(clear(specsBox), specs.el);
  };
  typeSel.addEventListener('change', build);
  build();
  return {
    el: h('div', field('Data type', typeSel, { required: true }), specsBox),
    collect: (errors) => ({ type: typeSel.value, specs: specs.collect(errors) }),
  };
}

function specsEditor(type, specs, prefix) {
  specs = specs || {};
  if (NUMBER.includes(type)) {
    const min = numberInput(specs.min, { id: `${prefix}-min`, name: 'min' });
    const max = numberInput(specs.max, { id: `${prefix}-max`, name: 'max' });
    const step = numberInput(specs.step, { id: `${prefix}-step`, name: 'step' });
    const unit = h('input', { type: 'text', id: `${prefix}-unit`, name: 'unit', value: specs.unit || '', maxlength: 20, placeholder: 'e.g. °C' });
    const unitName = h('input', { type: 'text', id: `${prefix}-unitName`, name: 'unitName', value: specs.unitName || '', maxlength: 30, placeholder: 'e.g. Celsius' });
    return {
      el: h('div.inline-fields', field('Min', min), field('Max', max), field('Step', step), field('Unit', unit), field('Unit name', unitName)),
      collect: (errors) => {
        const out = {};
        const lo = readNumber(min, type, errors, 'Min');
        const hi = readNumber(max, type, errors, 'Max');
        const st = readNumber(step, type, errors, 'Step');
        if (lo !== undefined) out.min = lo;
        if (hi !== undefined) out.max = hi;
        if (lo !== undefined && hi !== undefined && lo > hi) errors.push([max, 'Max must not be less than min.']);
        if (st !== undefined) {
          if (st <= 0) errors.push([step, 'Step must be greater than 0.']);
          out.step = st;
        }
        if (unit.value.trim()) out.unit = unit.value.trim();
        if (unitName.value.trim()) out.unitName = unitName.value.trim();
        return out;
      },
    };
  }
  if (type === 'enum') {
    const rows = h('div');
    const addRow = (value = '', label = '') => {
      const v = h('input', { type: 'text', value, name: 'enum-value', 'aria-label': 'Enum value', autocomplete: 'off' });
      const l = h('input', { type: 'text', value: label, name: 'enum-label', 'aria-label': 'Enum description', autocomplete: 'off' });
      const row = h('div.enum-row', field('Value', v), field('Description', l),
        h('button.btn-small', { type: 'button', 'aria-label': 'Remove this value', onclick: () => row.remove() }, 'Remove'));
      row.inputs = [v, l];
      rows.appendChild(row);
      return v;
    };
    const entries = Object.entries(specs);
    if (entries.length) entries.forEach(([k, v]) => addRow(k, v)); else addRow('0', '');
    const addBtn = h('button.btn-small', { type: 'button', onclick: () => addRow(String(rows.children.length), '').focus() }, 'Add value');
    return {
      el: h('fieldset', h('legend', 'Enum values'), h('p.hint.muted.small', 'Alibaba TSL uses integers as values; the description is shown to people.'), rows, addBtn),
      collect: (errors) => {
        const out = {};
        const list = [...rows.children];
        if (!list.length) errors.push([addBtn, 'Add at least one value.']);
        for (const row of list) {
          const [v, l] = row.inputs;
          const key = v.value.trim();
          if (!key) errors.push([v, 'Enter a value.']);
          else if (key in out) errors.push([v, `Value ${key} is listed twice.`]);
          else out[key] = l.value.trim();
        }
        return out;
      },
    };
  }
  if (type === 'bool') {
    const f = h('input', { type: 'text', id: `${prefix}-false`, value: specs['0'] ?? 'Off', maxlength: 20 });
    const t = h('input', { type: 'text', id: `${prefix}-true`, value: specs['1'] ?? 'On', maxlength: 20 });
    return {
      el: h('div.inline-fields', field('Meaning of 0 (false)', f), field('Meaning of 1 (true)', t)),
      collect: () => ({ 0: f.value.trim(), 1: t.value.trim() }),
    };
  }
  if (type === 'text') {
    const len = numberInput(specs.length ?? 10240, { id: `${prefix}-length`, name: 'length' });
    return {
      el: field('Maximum length (bytes)', len, { hint: '1 … 10240 bytes of UTF-8.' }),
      collect: (errors) => {
        const raw = len.value.trim();
        if (!raw) return {};
        const n = Number(raw);
        if (!Number.isInteger(n) || n < 1 || n > 10240) { errors.push([len, 'Length must be a whole number from 1 to 10240.']); return {}; }
        return { length: n };
      },
    };
  }
  if (type === 'date') {
    return { el: h('p.muted.small', 'A date is reported as UTC milliseconds since 1970 (a string of digits or a number).'), collect: () => ({}) };
  }
  if (type === 'struct') {
    const members = paramList(Array.isArray(specs) ? specs : [], MEMBER_TYPES, 'Member', 'Members');
    return { el: members.el, collect: (errors) => members.collect(errors, 'member') };
  }
  // array
  const size = numberInput(specs.size ?? 10, { id: `${prefix}-size`, name: 'size' });
  const item = typeEditor(specs.item || { type: 'int32', specs: {} }, ARRAY_ITEM_TYPES, `${prefix}-item`);
  return {
    el: h('div', field('Number of elements (max)', size, { required: true, hint: '1 … 512' }), h('fieldset', h('legend', 'Element'), item.el)),
    collect: (errors) => {
      const n = Number(size.value.trim());
      if (!size.value.trim() || !Number.isInteger(n) || n < 1 || n > 512) errors.push([size, 'Enter a whole number from 1 to 512.']);
      return { size: n, item: item.collect(errors) };
    },
  };
}

/** An editable list of parameters (event output, service input/output, struct members). */
function paramList(params, allowed, what, legend) {
  const rows = h('div');
  const add = (p) => {
    const ident = h('input', { type: 'text', value: p?.identifier || '', name: 'param-identifier', autocomplete: 'off', spellcheck: 'false' });
    const name = h('input', { type: 'text', value: p?.name || '', name: 'param-name', autocomplete: 'off' });
    const te = typeEditor(p?.dataType, allowed);
    const row = h('div.param-row',
      h('div.param-head', field(`${what} name`, name, { required: true }), field('Identifier', ident, { required: true }),
        h('div.field.remove', h('button.btn-small', { type: 'button', 'aria-label': `Remove this ${what.toLowerCase()}`, onclick: () => row.remove() }, 'Remove'))),
      te.el);
    row.collect = (errors) => {
      if (!name.value.trim()) errors.push([name, 'Enter a name.']);
      const id = ident.value.trim();
      if (!IDENT_RE.test(id)) errors.push([ident, 'Use letters, digits, _ and -, not starting with a digit (max 50).']);
      return { ...(p || {}), identifier: id, name: name.value.trim(), dataType: te.collect(errors), _input: ident };
    };
    rows.appendChild(row);
    return name;
  };
  params.forEach(add);
  const addBtn = h('button.btn-small', { type: 'button', onclick: () => add(null).focus() }, `Add ${what.toLowerCase()}`);
  return {
    el: h('fieldset', h('legend', legend), rows, addBtn),
    collect: (errors, label = 'parameter') => {
      const seen = new Set();
      return [...rows.children].map((row) => {
        const p = row.collect(errors);
        if (p.identifier && seen.has(p.identifier)) errors.push([p._input, `Another ${label} already uses ${p.identifier}.`]);
        seen.add(p.identifier);
        delete p._input;
        return p;
      });
    },
  };
}

// -- feature dialog ----------------------------------------------------------------------------

function featureDialog(kind, existing, takenIds, onSave) {
  const f = existing ? clone(existing) : {};
  const name = h('input', { type: 'text', value: f.name || '', maxlength: 50, autocomplete: 'off' });
  const ident = h('input', { type: 'text', value: f.identifier || '', maxlength: 50, autocomplete: 'off', spellcheck: 'false' });
  const description = h('textarea', { rows: 2, maxlength: 500 });
  description.value = f.description || '';
  const parts = [
    field(`${KIND_LABEL[kind]} name`, name, { required: true, id: 'feature-name' }),
    field('Identifier', ident, { required: true, id: 'feature-identifier', hint: 'Used on the wire, e.g. “temperature”. Letters, digits, _ and -; not starting with a digit.' }),
  ];
  let collectRest;
  if (kind === 'property') {
    const te = typeEditor(f.dataType, ALL_TYPES, 'dt');
    const access = radios('access', 'Read/write type', ACCESS, f.accessMode || 'r');
    access.classList.add('choices-fs');
    access.querySelector('.choices').classList.add('horizontal');
    const required = h('input', { type: 'checkbox', id: 'feature-required', checked: !!f.required });
    parts.push(te.el, access, h('label.choice', { for: 'feature-required' }, required, 'Required (every full report must contain it)'));
    collectRest = (errors) => ({ dataType: te.collect(errors), accessMode: access.value(), required: required.checked });
  } else if (kind === 'event') {
    const type = radios('eventType', 'Event type', EVENT_TYPES, f.type || 'info');
    type.querySelector('.choices').classList.add('horizontal');
    const out = paramList(f.outputData || [], ALL_TYPES, 'Output parameter', 'Output parameters');
    parts.push(type, out.el);
    collectRest = (errors) => ({ type: type.value(), outputData: out.collect(errors) });
  } else {
    const call = radios('callType', 'Call type', CALL_TYPES, f.callType || 'async');
    call.querySelector('.choices').classList.add('horizontal');
    const input = paramList(f.inputData || [], ALL_TYPES, 'Input parameter', 'Input parameters');
    const output = paramList(f.outputData || [], ALL_TYPES, 'Output parameter', 'Output parameters');
    parts.push(call, input.el, output.el);
    collectRest = (errors) => ({ callType: call.value(), inputData: input.collect(errors), outputData: output.collect(errors) });
  }
  parts.push(field('Description', description, { id: 'feature-description' }));
  modal({
    title: `${existing ? 'Edit' : 'Add'} ${KIND_LABEL[kind].toLowerCase()}`,
    wide: true,
    submitLabel: 'Save to draft',
    body: h('div', parts),
    onSubmit: async ({ close, formError, dialog }) => {
      clearErrors(dialog);
      const errors = [];
      if (!name.value.trim()) errors.push([name, 'Enter a name.']);
      const id = ident.value.trim();
      if (!id) errors.push([ident, 'Enter an identifier.']);
      else if (!IDENT_RE.test(id)) errors.push([ident, 'Use letters, digits, _ and -, not starting with a digit (max 50).']);
      else if (takenIds.has(id)) errors.push([ident, `${id} is already used in this module.`]);
      const rest = collectRest(errors);
      if (errors.length) {
        for (const [input, msg] of errors) setError(input, msg);
        formError.textContent = errors.length > 1 ? `Fix the ${errors.length} marked fields.` : '';
        errors[0][0].focus();
        return;
      }
      const feature = { ...f, identifier: id, name: name.value.trim(), description: description.value.trim(), ...rest };
      const err = await onSave(feature);
      if (err) formError.textContent = err; else close();
    },
  });
}

function moduleDialog(existing, takenIds, onSave) {
  const name = h('input', { type: 'text', value: existing?.name || '', maxlength: 50 });
  const ident = h('input', { type: 'text', value: existing?.identifier || '', maxlength: 50, spellcheck: 'false' });
  const description = h('textarea', { rows: 2 });
  description.value = existing?.description || '';
  modal({
    title: existing ? 'Edit module' : 'Add module',
    submitLabel: 'Save to draft',
    body: h('div',
      h('p.muted.small', 'A module (Alibaba “function block”) groups features; they are addressed as module:identifier.'),
      field('Module name', name, { required: true, id: 'module-name' }),
      field('Identifier', ident, { required: true, id: 'module-identifier' }),
      field('Description', description, { id: 'module-description' })),
    onSubmit: async ({ close, formError, dialog }) => {
      clearErrors(dialog);
      const id = ident.value.trim();
      let bad = false;
      if (!name.value.trim()) { setError(name, 'Enter a name.'); bad = true; }
      if (!IDENT_RE.test(id)) { setError(ident, 'Use letters, digits, _ and -, not starting with a digit (max 50).'); bad = true; }
      else if (id === 'default') { setError(ident, '“default” is the top-level module; choose another identifier.'); bad = true; }
      else if (takenIds.has(id)) { setError(ident, `A module ${id} already exists.`); bad = true; }
      if (bad) return;
      const err = await onSave({ ...(existing || { properties: [], events: [], services: [] }), identifier: id, name: name.value.trim(), description: description.value.trim() });
      if (err) formError.textContent = err; else close();
    },
  });
}

// -- the editor ----------------------------------------------------------------------------------

export async function modelEditor(panel, product) {
  const pk = product.productKey;
  const base = `/api/v1/products/${enc(pk)}/thing-model`;
  let model = await get(base + qs({ version: 'draft' }));
  let moduleId = 'default';
  const status = h('div.row', { id: 'model-status' });
  const moduleTabs = h('div.module-tabs', { role: 'group', 'aria-label': 'Modules' });
  const list = h('div');
  const scope = () => (moduleId === 'default' ? model : model.modules.find((m) => m.identifier === moduleId));

  const save = async (next) => {
    try {
      model = await put(base, next);
      render();
      await refreshStatus();
      return null;
    } catch (err) {
      return err.message;
    }
  };

  const refreshStatus = async () => {
    clear(status);
    let versions = [];
    try {
      versions = (await get(base + '/versions')).items;
    } catch (err) { /* shown below */ }
    if (!versions.length) {
      append(status, badge('Not published', 'warn'), h('span.muted', 'Devices are refused until the model is published.'));
      return;
    }
    const latest = versions[versions.length - 1].version;
    try {
      const d = await get(base + '/diff' + qs({ from: 'latest', to: 'draft' }));
      if (d.changes.length) append(status, badge(`${d.changes.length} unpublished change${d.changes.length > 1 ? 's' : ''}`, 'warn'), h('span.muted', `Published version ${latest} is in force.`));
      else append(status, badge(`Published · version ${latest}`, 'ok'), h('span.muted', 'The draft matches the published model.'));
    } catch (err) {
      append(status, h('span.reason', err.message));
    }
  };

  const publish = async () => {
    let changes = null;
    let versions = [];
    try {
      versions = (await get(base + '/versions')).items;
      if (versions.length) changes = (await get(base + '/diff' + qs({ from: 'latest', to: 'draft' }))).changes;
    } catch (err) {
      toast(err.message, 'error');
      return;
    }
    const next = versions.length ? versions[versions.length - 1].version + 1 : 1;
    modal({
      title: `Publish version ${next}`,
      wide: true,
      submitLabel: `Publish version ${next}`,
      body: h('div',
        h('p', 'Devices report against the published model. Changes compared with the version in force:'),
        changes === null ? h('p.muted', 'This is the first version: every feature below becomes active.') : diffList(changes),
        changes === null ? diffList(allFeatures(model).map((f) => ({ change: 'added', kind: f.kind, identifier: f.full }))) : null),
      onSubmit: async ({ close, formError }) => {
        try {
          const r = await post(base + '/publish');
          close();
          toast(`Published version ${r.version}`);
          await refreshStatus();
        } catch (err) {
          formError.textContent = err.message;
        }
      },
    });
  };

  const takenIn = (s, except) => {
    const ids = new Set();
    for (const k of Object.values(KINDS)) for (const f of s[k] || []) if (f !== except) ids.add(f.identifier);
    return ids;
  };

  const editFeature = (kind, existing) => {
    const s = scope();
    featureDialog(kind, existing, takenIn(s, existing), (feature) => {
      const next = clone(model);
      const target = moduleId === 'default' ? next : next.modules.find((m) => m.identifier === moduleId);
      const arr = target[KINDS[kind]] || (target[KINDS[kind]] = []);
      const i = existing ? (s[KINDS[kind]] || []).indexOf(existing) : -1;
      if (i >= 0) arr[i] = feature; else arr.push(feature);
      return save(next);
    });
  };

  const deleteFeature = async (kind, f) => {
    if (!await confirmDialog({ title: `Delete ${kind}`, message: h('span', 'Delete ', h('strong', f.name), ' (', h('code', f.identifier), ') from the draft? Reports keep working until you publish.'), confirmLabel: 'Delete', danger: true })) return;
    const next = clone(model);
    const target = moduleId === 'default' ? next : next.modules.find((m) => m.identifier === moduleId);
    target[KINDS[kind]] = (target[KINDS[kind]] || []).filter((x) => x.identifier !== f.identifier);
    const err = await save(next);
    if (err) toast(err, 'error'); else toast(`${KIND_LABEL[kind]} ${f.identifier} deleted from the draft`);
  };

  const render = () => {
    if (moduleId !== 'default' && !model.modules.find((m) => m.identifier === moduleId)) moduleId = 'default';
    append(clear(moduleTabs), 
      [{ identifier: 'default', name: 'Default module' }, ...model.modules].map((m) => h('button', {
        type: 'button', 'aria-pressed': String(m.identifier === moduleId),
        onclick: () => { moduleId = m.identifier; render(); },
      }, m.identifier === 'default' ? m.name : `${m.name} (${m.identifier})`)),
      h('button.btn-link', { type: 'button', id: 'add-module', onclick: () => moduleDialog(null, new Set(model.modules.map((m) => m.identifier)), (m) => { const next = clone(model); next.modules.push(m); moduleId = m.identifier; return save(next); }) }, '+ Add module'));
    const s = scope();
    const rows = [];
    for (const [kind, key] of Object.entries(KINDS)) for (const f of s[key] || []) rows.push({ kind, f });
    const moduleActions = moduleId === 'default' ? null : h('div.row',
      h('button.btn-small', { type: 'button', onclick: () => { const m = scope(); moduleDialog(m, new Set(model.modules.filter((x) => x !== m).map((x) => x.identifier)), (nm) => { const next = clone(model); next.modules[model.modules.indexOf(m)] = nm; moduleId = nm.identifier; return save(next); }); } }, 'Edit module'),
      h('button.btn-small.btn-danger', { type: 'button', onclick: async () => {
        const m = scope();
        if (!await confirmDialog({ title: 'Delete module', message: h('span', 'Delete module ', h('strong', m.name), ' with all its features from the draft?'), confirmLabel: 'Delete module', danger: true })) return;
        const next = clone(model);
        next.modules = next.modules.filter((x) => x.identifier !== m.identifier);
        moduleId = 'default';
        const err = await save(next);
        if (err) toast(err, 'error');
      } }, 'Delete module'));
    append(clear(list), 
      moduleActions,
      table([
        { label: 'Kind', cell: (r) => badge(KIND_LABEL[r.kind], r.kind === 'property' ? 'info' : r.kind === 'event' ? 'warn' : '') },
        { label: 'Name', cell: (r) => r.f.name },
        { label: 'Identifier', cell: (r) => h('code', r.f.identifier) },
        { label: 'Data type / details', cell: (r) => details(r.kind, r.f) },
        { label: 'Actions', class: 'actions', cell: (r) => [
          h('button.btn-small', { type: 'button', 'aria-label': `Edit ${r.f.identifier}`, onclick: () => editFeature(r.kind, r.f) }, 'Edit'),
          h('button.btn-small.btn-danger', { type: 'button', 'aria-label': `Delete ${r.f.identifier}`, onclick: () => deleteFeature(r.kind, r.f) }, 'Delete')] },
      ], rows, 'No features in this module yet. Add a property, event or service.'));
  };

  append(panel, h('section.panel',
    h('div.model-toolbar',
      h('div.grow', status),
      h('button', { type: 'button', id: 'add-property', onclick: () => editFeature('property') }, 'Add property'),
      h('button', { type: 'button', id: 'add-event', onclick: () => editFeature('event') }, 'Add event'),
      h('button', { type: 'button', id: 'add-service', onclick: () => editFeature('service') }, 'Add service'),
      h('button.btn-primary', { type: 'button', id: 'publish-model', onclick: publish }, 'Publish…')),
    h('p.muted.small', 'Changes are saved to the draft; devices keep reporting against the published version until you publish.'),
    moduleTabs, list));
  render();
  await refreshStatus();
  return null;
}

function details(kind, f) {
  if (kind === 'property') return h('span', describeType(f.dataType), ' · ', f.accessMode === 'rw' ? 'read & write' : 'read-only', f.required ? ' · required' : '');
  if (kind === 'event') return h('span', `${f.type} · ${(f.outputData || []).length} output parameter(s)`);
  return h('span', `${f.callType} · ${(f.inputData || []).length} in / ${(f.outputData || []).length} out`);
}

function allFeatures(model) {
  const out = [];
  const push = (s, prefix) => {
    for (const [kind, key] of Object.entries(KINDS)) for (const f of s[key] || []) out.push({ kind, full: prefix + f.identifier });
  };
  push(model, '');
  for (const m of model.modules || []) push(m, m.identifier + ':');
  return out;
}
