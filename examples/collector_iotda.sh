#!/usr/bin/env bash
# A temperature/humidity collector over Huawei IoTDA HTTPS with nothing but curl and openssl.
#
# Usage:
#   collector_iotda.sh [ENDPOINT DEVICE_ID DEVICE_SECRET]
# or set IOTGATE_DEVICE_URL, IOTGATE_DEVICE_ID (on iotgate "<ProductKey>_<DeviceName>"), IOTGATE_DEVICE_SECRET.
# Optional: IOTGATE_CA_FILE (certificate to trust, e.g. <data-dir>/device-cert.pem; default: system CAs),
#           IOTGATE_INSECURE=1 (skip TLS verification, testing only), COUNT (readings, default 3),
#           INTERVAL (seconds between readings, default 5).
#
# 1. POST /v5/device-auth with timestamp = UTC YYYYMMDDHH and
#    password = hex(HMAC-SHA256(key=timestamp, msg=DeviceSecret))   <- note: the timestamp is the key
# 2. POST /v5/devices/<device_id>/sys/properties/report with header "access_token: <token>"
#    Errors are non-2xx with {"error_code":"IOTDA.xxxxxx","error_msg":"..."}; 403 IOTDA.000004 = authenticate again.
set -euo pipefail

URL=${1:-${IOTGATE_DEVICE_URL:?set IOTGATE_DEVICE_URL (e.g. https://127.0.0.1:8443) or pass it as the first argument}}
DEVICE_ID=${2:-${IOTGATE_DEVICE_ID:?set IOTGATE_DEVICE_ID}}
SECRET=${3:-${IOTGATE_DEVICE_SECRET:?set IOTGATE_DEVICE_SECRET}}
COUNT=${COUNT:-3}
INTERVAL=${INTERVAL:-5}
URL=${URL%/}

CURL=(curl -sS --max-time 15)
if [[ -n "${IOTGATE_CA_FILE:-}" ]]; then CURL+=(--cacert "$IOTGATE_CA_FILE"); fi
if [[ "${IOTGATE_INSECURE:-}" == 1 ]]; then CURL+=(-k); fi
BODY_FILE=$(mktemp)
trap 'rm -f "$BODY_FILE"' EXIT

json_field() { # json_field NAME JSON -> the value of the first "NAME": string or number (no jq needed)
  printf '%s' "$2" | sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\)\"\{0,1\}.*/\1/p"
}

request() { # request PATH JSON [HEADER...] -> sets STATUS and RESPONSE
  local path=$1 data=$2
  shift 2
  STATUS=$("${CURL[@]}" -o "$BODY_FILE" -w '%{http_code}' -X POST "$URL$path" \
    -H 'Content-Type: application/json' "$@" -d "$data")
  RESPONSE=$(cat "$BODY_FILE")
}

authenticate() {
  local timestamp password
  timestamp=$(date -u +%Y%m%d%H)
  password=$(printf '%s' "$SECRET" | openssl dgst -sha256 -hmac "$timestamp" | awk '{print $NF}')
  request /v5/device-auth \
    "{\"device_id\":\"$DEVICE_ID\",\"sign_type\":0,\"timestamp\":\"$timestamp\",\"password\":\"$password\"}"
  TOKEN=$(json_field access_token "$RESPONSE")
  if [[ "$STATUS" != 200 || -z "$TOKEN" ]]; then
    echo "auth failed: HTTP $STATUS $RESPONSE" >&2
    exit 1
  fi
  echo "authenticated; the token lives $(json_field expires_in "$RESPONSE") s"
}

authenticate
temperature=$((18 + RANDOM % 8))
humidity=$((35 + RANDOM % 25))
for ((i = 1; i <= COUNT; i++)); do
  temperature=$((temperature + RANDOM % 3 - 1))
  humidity=$((humidity + RANDOM % 5 - 2))
  now=$(date -u +%Y-%m-%dT%H:%M:%S.000Z)
  body="{\"services\":[{\"service_id\":\"default\",\"properties\":{\"temperature\":$temperature,\"humidity\":$humidity},\"event_time\":\"$now\"}]}"
  request "/v5/devices/$DEVICE_ID/sys/properties/report" "$body" -H "access_token: $TOKEN"
  if [[ "$STATUS" == 403 && "$(json_field error_code "$RESPONSE")" == IOTDA.000004 ]]; then # expired/revoked
    authenticate
    request "/v5/devices/$DEVICE_ID/sys/properties/report" "$body" -H "access_token: $TOKEN"
  fi
  if [[ "$STATUS" != 2* ]]; then
    echo "report refused: HTTP $STATUS $RESPONSE" >&2
    exit 1
  fi
  echo "reported temperature=$temperature humidity=$humidity"
  if ((i < COUNT)); then sleep "$INTERVAL"; fi
done
