#!/usr/bin/env python3
"""A temperature/humidity collector that reports over Huawei IoTDA HTTPS with the iotgate SDK.

The product needs a published thing model with `temperature` and `humidity` (see docs/devices.md);
they are reported as service `default`. Every option can also come from the environment:

    IOTGATE_DEVICE_URL     device endpoint, e.g. https://127.0.0.1:8443
    IOTGATE_DEVICE_ID      device_id; on iotgate "{ProductKey}_{DeviceName}"
    IOTGATE_DEVICE_SECRET  DeviceSecret
    IOTGATE_CA_FILE        certificate to trust, e.g. the server's <data-dir>/device-cert.pem

Run:
    python examples/collector_iotda.py --endpoint https://127.0.0.1:8443 \
        --device-id a1TestPK001_collector-01 --device-secret ... \
        --ca iotgate-data/device-cert.pem --count 10 --interval 5
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from datetime import UTC, datetime

from iotgate.client import DeviceError, IotdaDevice


class Sensor:
    """Stands in for the real hardware: readings drift a little between samples."""

    def __init__(self) -> None:
        self.temperature = random.randint(18, 26)
        self.humidity = random.randint(35, 60)

    def read(self) -> dict[str, int]:
        self.temperature = min(50, max(-10, self.temperature + random.choice((-1, 0, 0, 1))))
        self.humidity = min(100, max(1, self.humidity + random.choice((-2, -1, 0, 1, 2))))
        return {"temperature": self.temperature, "humidity": self.humidity}


def env(name: str) -> str | None:
    return os.environ.get(name) or None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", default=env("IOTGATE_DEVICE_URL") or "https://127.0.0.1:8443")
    parser.add_argument("--device-id", default=env("IOTGATE_DEVICE_ID"))
    parser.add_argument("--device-secret", default=env("IOTGATE_DEVICE_SECRET"))
    parser.add_argument("--ca", default=env("IOTGATE_CA_FILE"), help="CA/certificate file (default: system CAs)")
    parser.add_argument("--insecure", action="store_true", help="skip TLS verification (testing only)")
    parser.add_argument("--count", type=int, default=0, help="readings to send (default: until Ctrl-C)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between readings")
    args = parser.parse_args()
    if not args.device_id or not args.device_secret:
        parser.error("missing --device-id/--device-secret (or IOTGATE_DEVICE_ID/IOTGATE_DEVICE_SECRET)")

    verify: bool | str = False if args.insecure else (args.ca or True)
    sensor = Sensor()
    sent = 0
    with IotdaDevice(args.device_id, args.device_secret, args.endpoint, verify=verify) as device:
        try:
            while args.count == 0 or sent < args.count:
                reading = sensor.read()
                device.report_properties("default", reading, event_time=datetime.now(UTC))
                sent += 1
                print(f"reported {reading}", flush=True)
                if args.count == 0 or sent < args.count:
                    time.sleep(args.interval)
        except DeviceError as exc:  # IotdaError carries Huawei's error_code, e.g. IOTDA.000002
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
