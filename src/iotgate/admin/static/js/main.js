// The console's shell: sign-in, navigation and a hash router (#/products/…); pages live in pages/*.js.
import { get, request, setCsrf, setUnauthorizedHandler } from './api.js';
import { append, clear, field, h, toast } from './ui.js';
import * as overview from './pages/overview.js';
import * as products from './pages/products.js';
import * as devices from './pages/devices.js';
import * as device from './pages/device.js';
import * as forwarding from './pages/forwarding.js';
import * as tools from './pages/tools.js';

const app = document.getElementById('app');
const NAV = [
  { href: '#/overview', label: 'Overview', match: /^overview/ },
  { href: '#/products', label: 'Products', match: /^products/ },
  { href: '#/devices', label: 'Devices', match: /^devices/ },
  { href: '#/forwarding', label: 'Forwarding', match: /^forwarding/ },
  { href: '#/tools', label: 'Connection & tools', match: /^tools/ },
];
const ROUTES = [
  [/^overview$/, overview.render],
  [/^products$/, products.renderList],
  [/^products\/([^/]+)$/, products.renderProduct],
  [/^devices$/, devices.render],
  [/^devices\/([^/]+)\/([^/]+)$/, device.render],
  [/^forwarding$/, forwarding.render],
  [/^tools$/, tools.render],
];

let main = null;
let cleanup = null;
let signedIn = false;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, query = ''] = raw.split('?');
  return { path: path || 'overview', query: new URLSearchParams(query) };
}

function shell() {
  main = h('main', { id: 'main', tabindex: '-1' });
  const nav = h('ul.nav', NAV.map((n) => h('li', h('a', { href: n.href, dataset: { nav: n.href } }, n.label))));
  app.replaceChildren(h('div.shell',
    h('aside.side', { 'aria-label': 'Console navigation' },
      h('div.brand', 'iotgate', h('small', 'device access console')),
      h('nav', { 'aria-label': 'Main' }, nav),
      h('div.side-foot', h('div', 'Signed in with the admin key'),
        h('button', { type: 'button', id: 'sign-out', onclick: signOut }, 'Sign out'))),
    main));
}

async function route() {
  if (!signedIn) return;
  if (cleanup) { try { cleanup(); } catch (e) { /* ignore */ } cleanup = null; }
  const { path, query } = parseHash();
  for (const a of app.querySelectorAll('.nav a')) {
    const n = NAV.find((x) => x.href === a.dataset.nav);
    if (n.match.test(path)) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  clear(main);
  const found = ROUTES.find(([re]) => re.test(path));
  if (!found) {
    append(main, h('h1', 'Page not found'), h('p', h('a', { href: '#/overview' }, 'Go to the overview')));
    return;
  }
  const params = path.match(found[0]).slice(1).map(decodeURIComponent);
  try {
    const result = await found[1](main, params, query);
    if (typeof result === 'function') cleanup = result;
  } catch (err) {
    if (err.status === 401) return;
    append(main, h('div.form-error', err.message || String(err)));
  }
}

function loginPage(message) {
  signedIn = false;
  if (cleanup) { try { cleanup(); } catch (e) { /* ignore */ } cleanup = null; }
  const key = h('input', { type: 'password', name: 'adminKey', autocomplete: 'current-password', spellcheck: 'false' });
  const formError = h('div.form-error', { role: 'alert' });
  const submit = h('button.btn-primary', { type: 'submit' }, 'Sign in');
  const form = h('form', { novalidate: true },
    formError,
    field('Admin key', key, {
      id: 'admin-key', required: true,
      hint: 'Printed once by “iotgate serve” on first start and stored in <data dir>/admin-key.',
    }),
    submit);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    key._error.textContent = '';
    key.removeAttribute('aria-invalid');
    formError.textContent = '';
    if (!key.value.trim()) {
      key.setAttribute('aria-invalid', 'true');
      key._error.textContent = 'Enter the admin key.';
      key.focus();
      return;
    }
    submit.disabled = true;
    try {
      const res = await request('POST', '/console/session', { json: { adminKey: key.value } });
      setCsrf(res.csrfToken);
      signedIn = true;
      shell();
      if (!location.hash || location.hash === '#/login') location.hash = '#/overview';
      else route();
    } catch (err) {
      if (err.code === 'wrong_admin_key' || err.code === 'invalid') {
        key.setAttribute('aria-invalid', 'true');
        key._error.textContent = err.code === 'wrong_admin_key' ? 'That is not the admin key.' : err.message;
        key.select();
      } else {
        formError.textContent = err.message;
      }
    } finally {
      submit.disabled = false;
    }
  });
  app.replaceChildren(h('div.login', h('div.panel',
    h('div.brand-mark', 'iotgate'),
    h('h1', 'Sign in to the console'),
    h('p.muted', 'Manage products, thing models and devices of this iotgate server.'),
    message ? h('div.callout', message) : null,
    form)));
  key.focus();
}

async function signOut() {
  try {
    await request('DELETE', '/console/session');
  } catch (err) {
    toast(err.message, 'error');
  }
  setCsrf(null);
  loginPage('You are signed out.');
}

setUnauthorizedHandler(() => {
  if (signedIn) loginPage('Your session has ended. Sign in again.');
});

window.addEventListener('hashchange', async () => {
  await route();
  if (main && signedIn && !document.querySelector('dialog[open]')) main.focus({ preventScroll: true }); // screen readers start at the new page
});

(async function boot() {
  let state = { authenticated: false };
  try {
    state = await get('/console/session');
  } catch (err) {
    app.replaceChildren(h('div.login', h('div.panel', h('h1', 'iotgate console'), h('div.form-error', err.message))));
    return;
  }
  if (!state.authenticated) {
    loginPage();
    return;
  }
  setCsrf(state.csrfToken);
  signedIn = true;
  shell();
  if (!location.hash || location.hash === '#/login') location.hash = '#/overview';
  else route();
})();
