// Ready-to-paste device snippets (curl + openssl, and the Python SDK iotgate.client) for both dialects.
import { connectionInfo, enc, get, qs } from './api.js';
import { append, clear, copyButton, h, tabs } from './ui.js';

const NUMBER = ['int32', 'int64', 'float', 'double'];

function sample(dt) {
  const s = dt?.specs || {};
  if (NUMBER.includes(dt?.type)) {
    const lo = s.min ?? 0, hi = s.max ?? lo + 100;
    let v = (lo + hi) / 2;
    if (s.step) v = lo + Math.round((v - lo) / s.step) * s.step;
    if (dt.type.startsWith('int')) v = Math.round(v);
    return Number(v.toFixed(6));
  }
  if (dt?.type === 'bool') return 1;
  if (dt?.type === 'enum') { const k = Object.keys(s)[0]; return /^-?\d+$/.test(k) ? Number(k) : k; }
  if (dt?.type === 'text') return 'hello';
  if (dt?.type === 'date') return String(Date.now());
  return null;
}

/** Example property values from the product's published model (up to three writable-by-device ones). */
export async function exampleValues(productKey) {
  try {
    const model = await get(`/api/v1/products/${enc(productKey)}/thing-model` + qs({ version: 'latest' }));
    const out = {};
    for (const p of model.properties || []) {
      const v = sample(p.dataType);
      if (v !== null) out[p.identifier] = v;
      if (Object.keys(out).length >= 3) break;
    }
    if (Object.keys(out).length) return out;
  } catch (e) { /* not published yet */ }
  return { temperature: 23 };
}

const shq = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

export function snippets({ baseUrl, tls }, cred, values) {
  const { productKey: pk, deviceName: dn, deviceSecret: secret } = cred;
  const deviceId = cred.deviceId || `${pk}_${dn}`;
  const ca = tls ? ' --cacert "$CA"' : '';
  const caLine = tls ? 'CA=iotgate-device-ca.pem   # Connection & tools → Download certificate\n' : '';
  const alinkBody = JSON.stringify({ id: '1', version: '1.0', params: values });
  const iotdaBody = JSON.stringify({ services: [{ service_id: 'default', properties: values }] });
  const verify = tls ? ', verify="iotgate-device-ca.pem"' : '';
  const pyValues = JSON.stringify(values).replace(/":/g, '": ').replace(/,"/g, ', "');
  return {
    curlAlink: `# Alibaba dialect (Alink): authenticate, then post properties. Needs curl and openssl.
BASE=${baseUrl}
PK=${shq(pk)}; DN=${shq(dn)}; SECRET=${shq(secret)}
${caLine}SIGN=$(printf '%s' "clientId\${PK}.\${DN}deviceName\${DN}productKey\${PK}" | openssl dgst -sha256 -hmac "$SECRET" | sed 's/^.* //')
TOKEN=$(curl -s${ca} -H 'Content-Type: application/json' \\
  -d "{\\"productKey\\":\\"$PK\\",\\"deviceName\\":\\"$DN\\",\\"clientId\\":\\"$PK.$DN\\",\\"signmethod\\":\\"hmacsha256\\",\\"sign\\":\\"$SIGN\\"}" \\
  "$BASE/auth" | sed -n 's/.*"token":"\\([^"]*\\)".*/\\1/p')
curl -s${ca} -H "password: $TOKEN" -H 'Content-Type: application/octet-stream' \\
  --data ${shq(alinkBody)} \\
  "$BASE/topic/sys/$PK/$DN/thing/event/property/post"
`,
    curlIotda: `# Huawei dialect (IoTDA): authenticate, then report properties. Needs curl and openssl.
BASE=${baseUrl}
DEVICE_ID=${shq(deviceId)}; SECRET=${shq(secret)}
${caLine}TS=$(date -u +%Y%m%d%H)
PASSWORD=$(printf '%s' "$SECRET" | openssl dgst -sha256 -hmac "$TS" | sed 's/^.* //')
TOKEN=$(curl -s${ca} -H 'Content-Type: application/json' \\
  -d "{\\"device_id\\":\\"$DEVICE_ID\\",\\"sign_type\\":0,\\"timestamp\\":\\"$TS\\",\\"password\\":\\"$PASSWORD\\"}" \\
  "$BASE/v5/device-auth" | sed -n 's/.*"access_token":"\\([^"]*\\)".*/\\1/p')
curl -s${ca} -H "access_token: $TOKEN" -H 'Content-Type: application/json' \\
  --data ${shq(iotdaBody)} \\
  "$BASE/v5/devices/$DEVICE_ID/sys/properties/report"
`,
    pyAlink: `# Alibaba dialect with the iotgate device SDK (pip install iotgate)
from iotgate.client import AlinkDevice

with AlinkDevice(${JSON.stringify(pk)}, ${JSON.stringify(dn)}, ${JSON.stringify(secret)},
                 ${JSON.stringify(baseUrl)}${verify}) as device:
    message_id = device.post_properties(${pyValues})
    print("committed as message", message_id)
`,
    pyIotda: `# Huawei dialect with the iotgate device SDK (pip install iotgate)
from iotgate.client import IotdaDevice

with IotdaDevice(${JSON.stringify(deviceId)}, ${JSON.stringify(secret)},
                 ${JSON.stringify(baseUrl)}${verify}) as device:
    device.report_properties("default", ${pyValues})
    print("reported")
`,
  };
}

/** A tabbed snippet box for the credentials. */
export async function snippetBox(cred) {
  const box = h('div.snippets');
  let info;
  try {
    info = await connectionInfo();
  } catch (err) {
    append(box, h('div.form-error', err.message));
    return box;
  }
  const s = snippets(info, cred, await exampleValues(cred.productKey));
  const defs = [
    { id: 'curlAlink', label: 'curl · Alibaba' },
    { id: 'curlIotda', label: 'curl · Huawei' },
    { id: 'pyAlink', label: 'Python · Alibaba' },
    { id: 'pyIotda', label: 'Python · Huawei' },
  ];
  const panel = h('div.snippet');
  const t = tabs(defs.map((d) => ({ ...d, id: 'snippet-' + d.id })), null, (id) => {
    const key = id.replace('snippet-', '');
    append(clear(panel), h('pre', { dataset: { snippet: key } }, h('code', s[key])), copyButton(() => s[key], 'Copy', 'snippet'));
  });
  append(box, t.el, panel);
  t.select('snippet-curlAlink');
  if (info.tls) append(box, h('p.muted.small', 'The device listener uses TLS: ', h('a', { href: '/api/v1/tools/device-cert', download: 'iotgate-device-ca.pem' }, 'download its certificate'), ' and save it next to the script as iotgate-device-ca.pem.'));
  return box;
}
