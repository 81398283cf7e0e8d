"""What each scenario sends: prebuilt requests for the wrk script, and how success looks."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from iotgate.benchmark.provision import Device, Server
from iotgate.benchmark.wrk import http_request

ALINK_OK = '"code":0'
AUTH_DEVICES = 8192  # the auth scenario rotates over this many devices (per-device auth rate limit)
IOTDA_BAD = '"error_code"'


@dataclass
class Scenario:
    name: str
    description: str
    unit: str  # what a data point is, for the report ("msg" when one message is one point)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("alink-post", "Alink property post, 2-10 properties, TLS keep-alive", "property"),
        Scenario("iotda-report", "IoTDA properties/report, 2-10 properties, TLS keep-alive", "property"),
        Scenario("iotda-gateway", "IoTDA gateway report: 50 sub-devices x 5 properties", "property"),
        Scenario("auth", "Alink /auth (hmacsha256): token issue rate, TLS keep-alive", "token"),
        Scenario("new-conn", "Alink property post on a new TLS connection per request", "property"),
    )
}
WRK_SCENARIOS = list(SCENARIOS)
# alink-post while a forwarding rule sends every report to MQTT and a webhook (only when named)
FORWARD = "forward"


@dataclass
class Workload:
    """The requests of one scenario and the reply test that goes with them."""

    requests: list[bytes]
    points: list[int]  # data points carried by each request
    must_contain: str | None
    must_not_contain: str | None

    @property
    def points_per_request(self) -> float:
        return sum(self.points) / len(self.points)


def property_values(rng: random.Random, count: int) -> dict[str, Any]:
    """`count` distinct properties of the bench model with valid random values."""
    makers: dict[str, Any] = {
        "temperature": lambda: round(rng.uniform(-20, 60), 2),
        "humidity": lambda: rng.randint(0, 100),
        "pressure": lambda: round(rng.uniform(900, 1100), 3),
        "voltage": lambda: round(rng.uniform(200, 240), 1),
        "current": lambda: round(rng.uniform(0, 30), 2),
        "power": lambda: rng.randint(0, 7000),
        "switch": lambda: rng.randint(0, 1),
        "mode": lambda: rng.randint(0, 2),
        "status": lambda: rng.choice(["ok", "warming-up", "degraded", "idle"]),
        "counter": lambda: rng.randint(0, 10**12),
    }
    names = rng.sample(sorted(makers), count)
    return {name: makers[name]() for name in names}


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def alink_posts(server: Server, devices: list[Device], variants: int, close: bool, seed: int = 1) -> Workload:
    rng = random.Random(seed)
    requests, points = [], []
    n = 0
    for v in range(variants):
        for d in devices:
            count = 2 + (n % 9)  # 2..10 properties, evenly spread
            n += 1
            body = _dumps(
                {
                    "id": str(n),
                    "version": "1.0",
                    "params": property_values(rng, count),
                    "method": "thing.event.property.post",
                }
            )
            headers = {"Content-Type": "application/octet-stream", "Password": d.alink_token}
            if close:
                headers["Connection"] = "close"
            path = f"/topic/sys/{d.product_key}/{d.device_name}/thing/event/property/post"
            requests.append(http_request("POST", path, server.host_header, headers, body))
            points.append(count)
        del v
    return Workload(requests, points, ALINK_OK, None)


def iotda_reports(server: Server, devices: list[Device], variants: int, seed: int = 2) -> Workload:
    rng = random.Random(seed)
    requests, points = [], []
    n = 0
    for _ in range(variants):
        for d in devices:
            count = 2 + (n % 9)
            n += 1
            body = _dumps({"services": [{"service_id": "default", "properties": property_values(rng, count)}]})
            headers = {"Content-Type": "application/json", "access_token": d.iotda_token}
            path = f"/v5/devices/{d.device_id}/sys/properties/report"
            requests.append(http_request("POST", path, server.host_header, headers, body))
            points.append(count)
    return Workload(requests, points, None, IOTDA_BAD)


def iotda_gateway_reports(
    server: Server, gateways: list[Device], variants: int, per_child: int = 5, seed: int = 3
) -> Workload:
    rng = random.Random(seed)
    requests, points = [], []
    for _ in range(variants):
        for gw in gateways:
            devices = [
                {
                    "device_id": child.device_id,
                    "services": [{"service_id": "default", "properties": property_values(rng, per_child)}],
                }
                for child in gw.children
            ]
            body = _dumps({"devices": devices})
            headers = {"Content-Type": "application/json", "access_token": gw.iotda_token}
            path = f"/v5/devices/{gw.device_id}/sys/gateway/sub-devices/properties/report"
            requests.append(http_request("POST", path, server.host_header, headers, body))
            points.append(per_child * len(gw.children))
    return Workload(requests, points, None, IOTDA_BAD)


def alink_auths(server: Server, devices: list[Device]) -> Workload:
    from iotgate.auth.signing import alink_auth_body

    requests = []
    for d in devices:
        body = _dumps(alink_auth_body(d.product_key, d.device_name, d.secret))
        path = "/auth?_v=sdk-c-4.1.0&"
        requests.append(http_request("POST", path, server.host_header, {"Content-Type": "application/json"}, body))
    return Workload(requests, [1] * len(requests), ALINK_OK, None)


def build(
    name: str, server: Server, devices: int, variants: int, gateway_children: int, per_child: int = 5
) -> Workload:
    """Provision what the scenario needs (once per server) and build its requests."""
    if name in ("alink-post", "new-conn"):
        direct = server.direct_devices(devices)
        server.alink_auth(direct)
        return alink_posts(server, direct, variants, close=name == "new-conn")
    if name == "iotda-report":
        direct = server.direct_devices(devices)
        server.iotda_auth(direct)
        return iotda_reports(server, direct, variants)
    if name == "iotda-gateway":
        gateways = server.gateways(devices, gateway_children)
        server.iotda_auth(gateways)
        return iotda_gateway_reports(server, gateways, max(1, variants // 4), per_child)
    if name == "auth":
        # a device may authenticate only a few times a second (auth_rate_per_s): spread over many
        return alink_auths(server, server.direct_devices(max(devices, AUTH_DEVICES), prefix="auth"))
    raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
