#!/usr/bin/env bash
# A temperature/humidity collector over Alibaba Cloud IoT HTTPS ("Alink") with nothing but curl and openssl.
#
# Usage:
#   collector_alink.sh [ENDPOINT PRODUCT_KEY DEVICE_NAME DEVICE_SECRET]
# or set IOTGATE_DEVICE_URL, IOTGATE_PRODUCT_KEY, IOTGATE_DEVICE_NAME, IOTGATE_DEVICE_SECRET.
# Optional: IOTGATE_CA_FILE (certificate to trust, e.g. <data-dir>/device-cert.pem; default: system CAs),
#           IOTGATE_INSECURE=1 (skip TLS verification, testing only), COUNT (readings, default 3),
#           INTERVAL (seconds between readings, default 5).
#
# 1. POST /auth with sign = hex(HMAC-SHA256(key=DeviceSecret,
#                                 msg="clientId<clientId>deviceName<dn>productKey<pk>"))
# 2. POST /topic/sys/<pk>/<dn>/thing/event/property/post with header "password: <token>"
#    Business errors come back as HTTP 200 with a non-zero "code"; 20001/20003 mean "authenticate again".
set -euo pipefail

URL=${1:-${IOTGATE_DEVICE_URL:?set IOTGATE_DEVICE_URL (e.g. https://127.0.0.1:8443) or pass it as the first argument}}
PK=${2:-${IOTGATE_PRODUCT_KEY:?set IOTGATE_PRODUCT_KEY}}
DN=${3:-${IOTGATE_DEVICE_NAME:?set IOTGATE_DEVICE_NAME}}
SECRET=${4:-${IOTGATE_DEVICE_SECRET:?set IOTGATE_DEVICE_SECRET}}
COUNT=${COUNT:-3}
INTERVAL=${INTERVAL:-5}
URL=${URL%/}

CURL=(curl -sS --max-time 15)
if [[ -n "${IOTGATE_CA_FILE:-}" ]]; then CURL+=(--cacert "$IOTGATE_CA_FILE"); fi
if [[ "${IOTGATE_INSECURE:-}" == 1 ]]; then CURL+=(-k); fi

json_field() { # json_field NAME JSON -> the value of the first "NAME": string or number (no jq needed)
  printf '%s' "$2" | sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\)\"\{0,1\}.*/\1/p"
}

authenticate() {
  local client_id="$PK.$DN" sign response code
  # everything but sign/signmethod/version, sorted by name, as name+value with no separators
  sign=$(printf '%s' "clientId${client_id}deviceName${DN}productKey${PK}" \
    | openssl dgst -sha256 -hmac "$SECRET" | awk '{print $NF}')
  response=$("${CURL[@]}" -X POST "$URL/auth" -H 'Content-Type: application/json' \
    -d "{\"productKey\":\"$PK\",\"deviceName\":\"$DN\",\"clientId\":\"$client_id\",\"signmethod\":\"hmacsha256\",\"sign\":\"$sign\"}")
  code=$(json_field code "$response")
  TOKEN=$(json_field token "$response")
  if [[ "$code" != 0 || -z "$TOKEN" ]]; then
    echo "auth failed: $response" >&2
    exit 1
  fi
}

post() { # post BODY -> sets RESPONSE and CODE
  RESPONSE=$("${CURL[@]}" -X POST "$URL/topic/sys/$PK/$DN/thing/event/property/post" \
    -H 'Content-Type: application/octet-stream' -H "password: $TOKEN" --data-binary "$1")
  CODE=$(json_field code "$RESPONSE")
}

authenticate
temperature=$((18 + RANDOM % 8))
humidity=$((35 + RANDOM % 25))
for ((i = 1; i <= COUNT; i++)); do
  temperature=$((temperature + RANDOM % 3 - 1))
  humidity=$((humidity + RANDOM % 5 - 2))
  body="{\"id\":\"$i\",\"version\":\"1.0\",\"params\":{\"temperature\":$temperature,\"humidity\":$humidity},\"method\":\"thing.event.property.post\"}"
  post "$body"
  if [[ "$CODE" == 20001 || "$CODE" == 20002 || "$CODE" == 20003 ]]; then # token expired or revoked
    authenticate
    post "$body"
  fi
  if [[ "$CODE" != 0 ]]; then
    echo "report refused: $RESPONSE" >&2
    exit 1
  fi
  echo "sent temperature=$temperature humidity=$humidity -> messageId $(json_field messageId "$RESPONSE")"
  if ((i < COUNT)); then sleep "$INTERVAL"; fi
done
