// Small DOM helpers: elements, fields with inline errors, dialogs, tabs, toasts, copy and download.

let uid = 0;
export const nextId = (prefix = 'f') => `${prefix}-${++uid}`;

/** h('tag.class', {attrs, onclick: fn}, ...children) — text only through text nodes (no innerHTML). */
export function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split('.');
  const el = document.createElement(tag || 'div');
  if (classes.length) el.className = classes.join(' ');
  if (attrs && (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = [el.className, v].filter(Boolean).join(' ');
    else if (k === 'for') el.htmlFor = v;
    else if (k === 'value') el.value = v;
    else if (k === 'checked' || k === 'disabled' || k === 'selected' || k === 'required' || k === 'multiple') el[k] = !!v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

export function append(el, ...children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }

const SVG_NS = 'http://www.w3.org/2000/svg';
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  for (const c of children.flat()) if (c !== null && c !== undefined) el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

/**
 * A labelled form field. input: an element (given an id if it has none). Returns the wrapper with
 * `.input`; errors go to the element below the input (`setError(input, msg)`).
 */
export function field(label, input, { hint, required, id } = {}) {
  input.id = input.id || id || nextId();
  const error = h('div.error', { id: input.id + '-error', role: 'alert' });
  const describedBy = [error.id];
  let hintEl = null;
  if (hint) {
    hintEl = h('div.hint', { id: input.id + '-hint' }, hint);
    describedBy.unshift(hintEl.id);
  }
  input.setAttribute('aria-describedby', describedBy.join(' '));
  if (required) input.setAttribute('aria-required', 'true');
  input._error = error;
  input.addEventListener('input', () => { if (input.getAttribute('aria-invalid')) setError(input, ''); });
  const wrap = h('div.field', h('label', { for: input.id }, label, required ? h('span.req', { 'aria-hidden': 'true' }, '*') : null), input, hintEl, error);
  wrap.input = input;
  return wrap;
}

/** A group of radio buttons with a legend; returns a fieldset with `.value()`. */
export function radios(name, legend, options, value) {
  const box = h('div.choices');
  const fs = h('fieldset', h('legend', legend), box);
  const group = nextId(name);
  for (const o of options) {
    const id = nextId(name);
    box.appendChild(h('label.choice', { for: id },
      h('input', { type: 'radio', name: group, id, value: o.value, checked: o.value === value }),
      h('span', o.label, o.hint ? h('span.hint.muted.small', o.hint) : null)));
  }
  fs.value = () => (fs.querySelector('input:checked') || {}).value;
  fs.inputs = () => [...fs.querySelectorAll('input')];
  return fs;
}

export function select(options, value, attrs = {}) {
  const el = h('select', attrs);
  for (const o of options) {
    const opt = typeof o === 'string' ? { value: o, label: o } : o;
    el.appendChild(h('option', { value: opt.value, selected: String(opt.value) === String(value ?? '') }, opt.label));
  }
  return el;
}

export function setError(input, message) {
  if (!input) return;
  if (message) input.setAttribute('aria-invalid', 'true');
  else input.removeAttribute('aria-invalid');
  if (input._error) input._error.textContent = message || '';
}

export function clearErrors(root) {
  root.querySelectorAll('[aria-invalid]').forEach((el) => setError(el, ''));
  root.querySelectorAll('.form-error').forEach((el) => { el.textContent = ''; });
}

/** Show an API error: details with a `field` go next to that input (inputs keyed by field name). */
export function showApiError(err, formError, inputs = {}) {
  let placed = false;
  for (const d of err.details || []) {
    const input = d.field && inputs[d.field];
    if (input) {
      setError(input, d.message || err.message);
      placed = true;
    }
  }
  if (formError && (!placed || !(err.details || []).every((d) => d.field && inputs[d.field]))) {
    formError.textContent = err.message;
  }
  const first = Object.values(inputs).find((i) => i && i.getAttribute && i.getAttribute('aria-invalid') === 'true');
  if (first) first.focus();
}

export function toast(message, kind = '') {
  const box = document.getElementById('toasts');
  const el = h('div.toast', { class: kind }, message);
  box.appendChild(el);
  setTimeout(() => el.remove(), kind === 'error' ? 7000 : 3500);
}

/**
 * A modal <dialog> (Esc closes, focus stays inside). body: node(s); actions: [{label, primary, danger,
 * onClick(close) → false keeps it open}]. onSubmit makes the body a form (Enter submits).
 */
export function modal({ title, body, actions = [], wide = false, onClose, onSubmit, submitLabel = 'OK', cancelLabel = 'Cancel', danger = false }) {
  const dlg = h('dialog', { class: wide ? 'wide' : '', 'aria-labelledby': nextId('dlg-title') });
  const titleId = dlg.getAttribute('aria-labelledby');
  const formError = h('div.form-error', { role: 'alert' });
  const foot = h('div.dialog-foot');
  const inner = h(onSubmit ? 'form' : 'div', { class: 'dialog-inner', novalidate: onSubmit ? true : null },
    h('div.dialog-head', h('h2', { id: titleId }, title),
      h('button.btn-link', { type: 'button', 'aria-label': 'Close', onclick: () => close() }, '✕')),
    h('div.dialog-body', formError, body),
    foot);
  dlg.appendChild(inner);
  const close = (result) => {
    if (!dlg.open) return;
    dlg.close();
    dlg.remove();
    if (onClose) onClose(result);
  };
  dlg.addEventListener('cancel', (e) => { e.preventDefault(); close(); });
  if (onSubmit) {
    const submit = h('button', { type: 'submit', class: danger ? 'btn-danger-solid' : 'btn-primary' }, submitLabel);
    append(foot, h('button', { type: 'button', onclick: () => close() }, cancelLabel), submit);
    inner.addEventListener('submit', async (e) => {
      e.preventDefault();
      formError.textContent = '';
      submit.disabled = true;
      try {
        await onSubmit({ close, formError, dialog: dlg });
      } catch (err) {
        formError.textContent = err.message || String(err);
      } finally {
        submit.disabled = false;
      }
    });
  }
  for (const a of actions) {
    foot.appendChild(h('button', {
      type: 'button',
      class: a.primary ? 'btn-primary' : a.danger ? 'btn-danger' : '',
      onclick: async () => { if ((await a.onClick?.(close)) !== false) close(); },
    }, a.label));
  }
  document.body.appendChild(dlg);
  dlg.showModal();
  const first = dlg.querySelector('.dialog-body input:not([type=hidden]), .dialog-body select, .dialog-body textarea');
  if (first) first.focus();
  return { close, dialog: dlg, formError };
}

export function confirmDialog({ title, message, confirmLabel = 'Confirm', danger = false }) {
  return new Promise((resolve) => {
    let done = false;
    modal({
      title,
      body: h('div', message),
      submitLabel: confirmLabel,
      danger,
      onSubmit: ({ close }) => { done = true; close(); },
      onClose: () => resolve(done),
    });
  });
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (e) { // not a secure context: fall back to a selected textarea
    const ta = h('textarea', { 'aria-hidden': 'true' });
    ta.value = text;
    document.body.appendChild(ta);
    ta.select();
    const ok = document.execCommand('copy');
    ta.remove();
    return ok;
  }
}

export function copyButton(getText, label = 'Copy', what = '') {
  const btn = h('button.btn-small.copy', {
    type: 'button',
    'aria-label': what ? `Copy ${what}` : label,
    onclick: async () => {
      const ok = await copyText(typeof getText === 'function' ? getText() : getText);
      btn.textContent = ok ? 'Copied' : 'Copy failed';
      setTimeout(() => { btn.textContent = label; }, 1500);
    },
  }, label);
  return btn;
}

export function download(filename, content, type = 'application/json') {
  const url = URL.createObjectURL(content instanceof Blob ? content : new Blob([content], { type }));
  const a = h('a', { href: url, download: filename });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** Tabs: defs [{id, label}], returns {el, select(id)}; onChange(id) renders the panel. */
export function tabs(defs, active, onChange) {
  const list = h('div.tabs', { role: 'tablist' });
  const buttons = {};
  const selectTab = (id, focus = false) => {
    for (const d of defs) {
      const b = buttons[d.id];
      b.setAttribute('aria-selected', String(d.id === id));
      b.tabIndex = d.id === id ? 0 : -1;
      if (d.id === id && focus) b.focus();
    }
    onChange(id);
  };
  defs.forEach((d, i) => {
    const b = h('button', {
      type: 'button', role: 'tab', id: 'tab-' + d.id, 'aria-selected': 'false', dataset: { tab: d.id },
      onclick: () => selectTab(d.id),
      onkeydown: (e) => {
        const step = e.key === 'ArrowRight' ? 1 : e.key === 'ArrowLeft' ? -1 : 0;
        if (step) { e.preventDefault(); selectTab(defs[(i + step + defs.length) % defs.length].id, true); }
      },
    }, d.label);
    buttons[d.id] = b;
    list.appendChild(b);
  });
  return { el: list, select: selectTab };
}

export function badge(text, kind = '') { return h('span.badge', { class: kind }, text); }

export function statusBadge(device) {
  return device.online
    ? h('span.nowrap', h('span.dot.ok', { 'aria-hidden': 'true' }), 'Online')
    : h('span.nowrap.muted', h('span.dot', { 'aria-hidden': 'true' }), 'Offline');
}

const pad = (n, w = 2) => String(n).padStart(w, '0');
export function fmtTime(ms, withMs = false) {
  if (ms === null || ms === undefined || ms === '') return '—';
  const d = new Date(Number(ms));
  if (isNaN(d)) return String(ms);
  const s = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return withMs ? `${s}.${pad(d.getMilliseconds(), 3)}` : s;
}
export function fmtAgo(ms) {
  if (!ms) return 'never';
  const s = Math.round((Date.now() - Number(ms)) / 1000);
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}
export function fmtNumber(n, digits = 2) {
  if (typeof n !== 'number') return String(n);
  return Number.isInteger(n) ? n.toLocaleString('en-US') : n.toLocaleString('en-US', { maximumFractionDigits: digits });
}

/** A table: columns [{label, cell(row) → node|string, class}], rows; empty: message when no rows. */
export function table(columns, rows, empty = 'Nothing here yet.') {
  if (!rows.length) return h('div.empty', empty);
  return h('div.table-wrap', h('table',
    h('thead', h('tr', columns.map((c) => h('th', { class: c.class || '', scope: 'col' }, c.label)))),
    h('tbody', rows.map((r) => h('tr', columns.map((c) => h('td', { class: c.class || '' }, c.cell(r))))))));
}

export function pager(offset, limit, total, go) {
  const from = total ? offset + 1 : 0;
  const to = Math.min(offset + limit, total);
  return h('nav.pager', { 'aria-label': 'Pages' },
    h('span', `${from}–${to} of ${total}`),
    h('button', { type: 'button', disabled: offset <= 0, onclick: () => go(Math.max(0, offset - limit)) }, '‹ Previous'),
    h('button', { type: 'button', disabled: offset + limit >= total, onclick: () => go(offset + limit) }, 'Next ›'));
}

export function errorPanel(err, retry) {
  return h('div.panel', h('div.form-error', err.message || String(err)),
    retry ? h('button', { type: 'button', onclick: retry }, 'Try again') : null);
}

export function pageHead(title, { crumbs = [], sub, actions = [] } = {}) {
  return h('div.page-head',
    h('div.titles',
      crumbs.length ? h('div.crumbs', crumbs.map((c, i) => [i ? ' / ' : '', c.href ? h('a', { href: c.href }, c.label) : c.label])) : null,
      h('h1', title), sub ? h('div.muted', sub) : null),
    actions.length ? h('div.row', actions) : null);
}

/** CSV text from rows of values (RFC 4180 quoting). */
export function toCsv(rows) {
  return rows.map((r) => r.map((v) => {
    const s = v === null || v === undefined ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v);
    return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }).join(',')).join('\r\n') + '\r\n';
}

/** Parse CSV text into rows (quoted fields, CRLF/LF). */
export function parseCsv(text) {
  const rows = [];
  let row = [], cell = '', i = 0, quoted = false;
  text = text.replace(/^\uFEFF/, '');
  while (i < text.length) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { cell += '"'; i += 2; continue; }
      if (c === '"') { quoted = false; i++; continue; }
      cell += c; i++; continue;
    }
    if (c === '"') { quoted = true; i++; continue; }
    if (c === ',') { row.push(cell); cell = ''; i++; continue; }
    if (c === '\r' || c === '\n') {
      row.push(cell); rows.push(row); row = []; cell = '';
      i += c === '\r' && text[i + 1] === '\n' ? 2 : 1;
      continue;
    }
    cell += c; i++;
  }
  if (cell !== '' || row.length) { row.push(cell); rows.push(row); }
  return rows;
}
