// Connection info (device endpoints of both dialects, the listener's certificate) and the signing tool.
import { allProducts, connectionInfo, post } from '../api.js';
import {
  append, clear, clearErrors, copyButton, errorPanel, field, fmtTime, h, pageHead, select, showApiError, table,
} from '../ui.js';

function endpointRows(list) {
  return table([
    { label: 'Purpose', cell: (r) => r[0] },
    { label: 'Request', cell: (r) => h('div.secret-row', h('code', r[1]), copyButton(r[1].replace(/^POST /, ''), 'Copy', r[0])) },
  ], list);
}

export async function render(main, _params, query) {
  append(main, pageHead('Connection & tools', { sub: 'Where devices connect, the certificate they trust, and how they sign in.' }));
  let info;
  try {
    info = await connectionInfo();
  } catch (err) {
    append(main, errorPanel(err));
    return;
  }
  append(main, 
    h('section.panel', { id: 'endpoints' },
      h('h2', 'Device endpoints'),
      h('p.muted', 'Both dialects share one listener at ', h('code', info.baseUrl), info.tls ? ` (TLS, profile “${info.tlsProfile}”).` : ' (plain HTTP — testing only).'),
      h('h3', 'Alibaba Cloud IoT HTTPS (Alink)'),
      endpointRows([
        ['Authenticate (returns a token)', `POST ${info.alink.auth}`],
        ['Report properties', `POST ${info.alink.propertyPost}`],
        ['Report an event', `POST ${info.alink.eventPost}`],
        ['Custom topic', `POST ${info.alink.customTopic}`],
      ]),
      h('p.muted.small', 'Send the token in the ', h('code', info.alink.tokenHeader), ' header.'),
      h('h3', 'Huawei Cloud IoTDA HTTPS'),
      endpointRows([
        ['Authenticate (returns access_token)', `POST ${info.iotda.auth}`],
        ['Report properties', `POST ${info.iotda.propertiesReport}`],
        ['Report a message', `POST ${info.iotda.messagesUp}`],
        ['Gateway: sub-device properties', `POST ${info.iotda.gatewayReport}`],
      ]),
      h('p.muted.small', 'Send the token in the ', h('code', info.iotda.tokenHeader), ' header. The deviceId is ', h('code', '{ProductKey}_{DeviceName}'), '.')),
    h('section.panel', { id: 'certificate' },
      h('h2', 'Certificate'),
      !info.tls ? h('p', 'The device listener runs without TLS (--device-plain-http); there is no certificate.')
        : !info.certificates.length ? h('p.muted', 'No certificate file is available.')
          : h('div',
            h('p.muted', 'Devices must trust the downloaded certificate (self-signed unless you configured --tls-cert). The listener presents it, or to clients that offer ECDSA an ECDSA certificate it issued.'),
            table([
              { label: 'Key', cell: (c) => c.keyType },
              { label: 'Subject', cell: (c) => h('code', c.subject) },
              { label: 'Issuer', cell: (c) => h('code', c.issuer) },
              { label: 'Names', cell: (c) => (c.names || []).join(', ') },
              { label: 'Valid until', cell: (c) => fmtTime(c.notAfter) },
              { label: 'SHA-256 fingerprint', cell: (c) => h('code.small', c.sha256) },
            ], info.certificates),
            h('p', h('a.btn.btn-primary', { href: '/api/v1/tools/device-cert', download: 'iotgate-device-ca.pem', id: 'download-cert' }, 'Download certificate (PEM)')))),
    await signingTool(query));
}

async function signingTool(query) {
  const products = await allProducts().catch(() => []);
  const pk = h('input', { type: 'text', name: 'productKey', value: query.get('productKey') || '', autocomplete: 'off', list: 'sign-products' });
  const productList = h('datalist', { id: 'sign-products' }, products.map((p) => h('option', { value: p.productKey }, p.name)));
  const dn = h('input', { type: 'text', name: 'deviceName', value: query.get('deviceName') || '', autocomplete: 'off' });
  const secret = h('input', { type: 'password', name: 'deviceSecret', autocomplete: 'off' });
  const method = select(['hmacsha256', 'hmacsha1', 'hmacmd5'], 'hmacsha256', { name: 'signMethod' });
  const clientId = h('input', { type: 'text', name: 'clientId', autocomplete: 'off', placeholder: 'ProductKey.DeviceName' });
  const timestamp = h('input', { type: 'text', name: 'timestamp', inputmode: 'numeric', autocomplete: 'off', placeholder: 'none' });
  const hwTs = h('input', { type: 'text', name: 'iotdaTimestamp', inputmode: 'numeric', autocomplete: 'off', placeholder: 'this hour (UTC)' });
  const inputs = { productKey: pk, deviceName: dn, deviceSecret: secret, signMethod: method, clientId, timestamp, iotdaTimestamp: hwTs };
  const formError = h('div.form-error', { role: 'alert' });
  const out = h('div', { id: 'sign-result' });
  const form = h('form', { novalidate: true, id: 'sign-form' }, formError,
    h('div.inline-fields',
      field('ProductKey', pk, { required: true, id: 'sign-product-key' }),
      field('DeviceName', dn, { required: true, id: 'sign-device-name' }),
      field('DeviceSecret', secret, { id: 'sign-secret', hint: 'Leave empty to use the registered device’s current secret.' })),
    productList,
    h('details', h('summary', 'Options'),
      h('div.inline-fields',
        field('Sign method (Alibaba)', method, { id: 'sign-method' }),
        field('clientId (Alibaba)', clientId, { id: 'sign-client-id' }),
        field('timestamp (Alibaba, ms)', timestamp, { id: 'sign-timestamp' }),
        field('timestamp (Huawei, YYYYMMDDHH UTC)', hwTs, { id: 'sign-iotda-ts' }))),
    h('button.btn-primary', { type: 'submit' }, 'Compute'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(form);
    clear(out);
    const body = {};
    for (const [k, input] of Object.entries(inputs)) if (input.value.trim()) body[k] = input.value.trim();
    try {
      const r = await post('/api/v1/tools/sign', body);
      const alink = JSON.stringify(r.alink.body, null, 2);
      const iotda = JSON.stringify(r.iotda.body, null, 2);
      append(out, 
        h('h3', 'Alibaba: ', h('code', `POST ${r.alink.url}`)),
        h('div.snippet', h('pre', { id: 'sign-alink' }, h('code', alink)), copyButton(alink, 'Copy', 'Alibaba auth body')),
        h('p.muted.small', 'Signed string: ', h('code', r.alink.signContent)),
        h('h3', 'Huawei: ', h('code', `POST ${r.iotda.url}`)),
        h('div.snippet', h('pre', { id: 'sign-iotda' }, h('code', iotda)), copyButton(iotda, 'Copy', 'Huawei auth body')),
        h('p.muted.small', 'The Huawei password is valid for the hour in “timestamp” (UTC).'));
    } catch (err) {
      showApiError(err, formError, inputs);
    }
  });
  return h('section.panel', { id: 'signing' },
    h('h2', 'Signing tool'),
    h('p.muted', 'Computes the Alibaba /auth body with its sign and the Huawei /v5/device-auth body with its password from a device’s credentials — to check a device’s own signing.'),
    form, out);
}

