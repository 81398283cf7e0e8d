// Calls to the management API with the console session (cookie + CSRF header on unsafe methods).

let csrfToken = null;
let onUnauthorized = () => {};

export function setCsrf(token) { csrfToken = token; }
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || [];
  }
}

/** request(method, path, {json, body, headers, raw}) → parsed JSON (or text, or the Response with raw). */
export async function request(method, path, opts = {}) {
  const headers = { ...(opts.headers || {}) };
  let body = opts.body;
  if (opts.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.json);
  }
  if (method !== 'GET' && method !== 'HEAD' && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  let resp;
  try {
    resp = await fetch(path, { method, headers, body, credentials: 'same-origin', cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'network', 'Cannot reach the iotgate server. Is it running?');
  }
  if (!resp.ok) {
    let code = 'http_' + resp.status, message = resp.statusText || 'request failed', details = [];
    try {
      const doc = await resp.json();
      if (doc && doc.error) ({ code, message, details = [] } = doc.error);
    } catch (e) { /* not JSON */ }
    const err = new ApiError(resp.status, code, message, details);
    if (resp.status === 401 && path.startsWith('/api/')) onUnauthorized(err);
    throw err;
  }
  if (opts.raw) return resp;
  if (resp.status === 204) return null;
  const type = resp.headers.get('content-type') || '';
  return type.includes('json') ? resp.json() : resp.text();
}

export const get = (path, opts) => request('GET', path, opts);
export const post = (path, json, opts = {}) => request('POST', path, { ...opts, json });
export const put = (path, json, opts = {}) => request('PUT', path, { ...opts, json });
export const patch = (path, json, opts = {}) => request('PATCH', path, { ...opts, json });
export const del = (path, opts) => request('DELETE', path, opts);

/** Query string from an object, skipping empty values. */
export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') u.set(k, v);
  const s = u.toString();
  return s ? '?' + s : '';
}

export const enc = encodeURIComponent;
export const devicePath = (pk, dn) => `/api/v1/products/${enc(pk)}/devices/${enc(dn)}`;

let connectionCache = null;
/** Device endpoints and certificate facts (cached for the page's life). */
export async function connectionInfo() {
  if (!connectionCache) connectionCache = get('/api/v1/tools/connection').catch((e) => { connectionCache = null; throw e; });
  return connectionCache;
}

let productsCache = null;
/** All products (for selects); refreshed after changes with invalidateProducts(). */
export async function allProducts() {
  if (!productsCache) {
    productsCache = (async () => {
      const out = [];
      for (let offset = 0; offset < 100000; offset += 1000) {
        const page = await get('/api/v1/products' + qs({ offset, limit: 1000 }));
        out.push(...page.items);
        if (out.length >= page.total || page.items.length === 0) break;
      }
      return out;
    })().catch((e) => { productsCache = null; throw e; });
  }
  return productsCache;
}
export function invalidateProducts() { productsCache = null; }
