"""Helpers shared by the operations tests: scrape /metrics, authenticate devices, read the server log."""

from __future__ import annotations

import json
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from conftest import ServerProcess
from iotgate.auth.signing import alink_auth_body


class Scrape:
    """One /metrics scrape: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples.append((s.name, dict(s.labels), float(s.value)))

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when there is none)."""
        return sum(v for n, lab, v in self.samples if n == name and all(lab.get(k) == w for k, w in labels.items()))

    def has(self, name: str) -> bool:
        return any(n == name for n, _, _ in self.samples)


def scrape(server: ServerProcess) -> Scrape:
    r = httpx.get(server.admin_url + "/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return Scrape(r.text)


def alink_token(device: httpx.Client, pk: str, dn: str, secret: str) -> str:
    r = device.post("/auth", json=alink_auth_body(pk, dn, secret))
    assert r.json()["code"] == 0, r.text
    return str(r.json()["info"]["token"])


def post_props(device: httpx.Client, token: str, pk: str, dn: str, params: dict[str, Any]) -> dict[str, Any]:
    r = device.post(
        f"/topic/sys/{pk}/{dn}/thing/event/property/post",
        content=json.dumps({"id": "1", "version": "1.0", "params": params}),
        headers={"password": token, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """The server's JSON log lines (stderr is not a TTY under the tests, so logs are JSON)."""
    out = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
