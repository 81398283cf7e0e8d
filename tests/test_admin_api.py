"""The management API: every endpoint, good and bad input, against the real server process."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from conftest import SEED_MODEL, Admin, ServerProcess

P = "/api/v1/products"


def err(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["message"]
    if code:
        assert body["code"] == code, body
    return dict(body)


def test_auth_required(server: ServerProcess) -> None:
    for method, path in [("GET", P), ("POST", P), ("GET", "/api/v1/devices"), ("GET", f"{P}/x/devices")]:
        r = httpx.request(method, server.admin_url + path)
        err(r, 401, "unauthorized")
        r = httpx.request(method, server.admin_url + path, headers={"Authorization": "Bearer wrong"})
        err(r, 401, "unauthorized")
    assert httpx.get(server.admin_url + "/healthz").status_code == 200
    assert httpx.get(server.admin_url + "/api/v1/openapi.json").json()["openapi"].startswith("3.")


def test_products_crud_and_bad_input(admin: Admin) -> None:
    c = admin.c
    r = c.post(
        P, json={"name": "meter", "nodeType": "gateway", "dataFormat": "alink-json", "authType": "device-secret"}
    )
    assert r.status_code == 201
    pk = r.json()["productKey"]
    assert len(pk) == 11 and pk.isalnum()
    assert c.get(f"{P}/{pk}").json()["nodeType"] == "gateway"
    assert any(p["productKey"] == pk for p in c.get(P, params={"limit": 1000}).json()["items"])
    r = c.patch(f"{P}/{pk}", json={"name": "meter v2", "description": "d"})
    assert r.status_code == 200 and r.json()["name"] == "meter v2"

    err(c.post(P, content=b"{not json"), 422, "invalid_json")
    err(c.post(P, json=[1, 2]), 422)
    err(c.post(P, json={}), 422)
    err(c.post(P, json={"name": ""}), 422)
    err(c.post(P, json={"name": 5}), 422)
    err(c.post(P, json={"name": "x", "nodeType": "router"}), 422)
    err(c.post(P, json={"name": "x", "dataFormat": "xml"}), 422)
    err(c.post(P, json={"name": "x", "authType": "x509"}), 422)
    err(c.post(P, json={"name": "x", "colour": "red"}), 422)
    err(c.patch(f"{P}/{pk}", json={"nodeType": "nope"}), 422)
    err(c.patch(f"{P}/{pk}", json={"ratePerSecond": -1}), 422)
    err(c.get(P, params={"limit": "abc"}), 422)
    err(c.get(P, params={"limit": 0}), 422)
    err(c.get(P, params={"offset": -1}), 422)
    err(c.get(f"{P}/NoSuchProduc"), 404, "not_found")
    err(c.patch(f"{P}/NoSuchProduc", json={"name": "x"}), 404)
    err(c.delete(f"{P}/NoSuchProduc"), 404)

    admin.device(pk, "gw-0001")
    err(c.delete(f"{P}/{pk}"), 409, "conflict")
    assert c.delete(f"{P}/{pk}/devices/gw-0001").status_code == 204
    assert c.delete(f"{P}/{pk}").status_code == 204
    err(c.get(f"{P}/{pk}"), 404)


def test_thing_model_draft_publish_versions(admin: Admin) -> None:
    c = admin.c
    pk = admin.product()
    err(c.get(f"{P}/{pk}/thing-model", params={"version": "latest"}), 404)
    assert c.put(f"{P}/{pk}/thing-model", json=SEED_MODEL).status_code == 200
    assert c.post(f"{P}/{pk}/thing-model/publish").json()["version"] == 1
    more = {
        "properties": [
            *SEED_MODEL["properties"],
            {"identifier": "co2", "name": "CO2", "dataType": {"type": "int32", "specs": {"min": 0, "max": 5000}}},
        ]
    }
    assert c.put(f"{P}/{pk}/thing-model", json=more).status_code == 200
    assert c.post(f"{P}/{pk}/thing-model/publish").json()["version"] == 2
    versions = c.get(f"{P}/{pk}/thing-model/versions").json()["items"]
    assert [v["version"] for v in versions] == [1, 2]
    v1 = c.get(f"{P}/{pk}/thing-model", params={"version": 1})
    assert v1.headers["X-Model-Version"] == "1" and len(v1.json()["properties"]) == 2
    diff = c.get(f"{P}/{pk}/thing-model/diff", params={"from": 1, "to": 2}).json()["changes"]
    assert diff == [{"change": "added", "kind": "property", "identifier": "co2"}]
    for fmt in ("alibaba", "huawei"):
        exported = c.get(f"{P}/{pk}/thing-model", params={"format": fmt, "version": "latest"})
        assert exported.status_code == 200
        assert c.put(f"{P}/{pk}/thing-model", params={"format": fmt}, json=exported.json()).status_code == 200
        again = c.get(f"{P}/{pk}/thing-model").json()
        assert [p["identifier"] for p in again["properties"]] == ["temperature", "humidity", "co2"]

    err(c.put(f"{P}/{pk}/thing-model", params={"format": "yaml"}, json=SEED_MODEL), 422)
    err(c.put(f"{P}/{pk}/thing-model", content=b"[[["), 422, "invalid_json")
    bad = {
        "properties": [{"identifier": "t", "name": "T", "dataType": {"type": "int32", "specs": {"min": 5, "max": 1}}}]
    }
    e = err(c.put(f"{P}/{pk}/thing-model", json=bad), 422, "invalid_model")
    assert "min" in e["message"]
    err(c.put(f"{P}/{pk}/thing-model", json={"properties": [{"identifier": "t"}]}), 422, "invalid_model")
    err(c.put(f"{P}/{pk}/thing-model", params={"format": "alibaba"}, json={"properties": 3}), 422)
    err(c.put(f"{P}/{pk}/thing-model", params={"format": "huawei"}, json={"services": "x"}), 422)
    err(c.get(f"{P}/{pk}/thing-model", params={"version": 99}), 404)
    err(c.get(f"{P}/{pk}/thing-model", params={"version": "abc"}), 422)
    err(c.get(f"{P}/{pk}/thing-model/diff", params={"from": "x"}), 422)
    err(c.put(f"{P}/NoSuchProduc/thing-model", json=SEED_MODEL), 404)
    err(c.post(f"{P}/NoSuchProduc/thing-model/publish"), 404)


def test_devices_and_bad_input(admin: Admin) -> None:
    c = admin.c
    pk = admin.product(SEED_MODEL)
    dev = admin.device(pk, "sensor-a")
    assert set(dev) == {"productKey", "deviceName", "deviceSecret", "deviceId"}
    generated = admin.device(pk)
    assert len(generated["deviceName"]) == 20
    err(c.post(f"{P}/{pk}/devices", json={"deviceName": "sensor-a"}), 409, "conflict")
    err(c.post(f"{P}/{pk}/devices", json={"deviceName": "a b"}), 422)
    err(c.post(f"{P}/{pk}/devices", json={"deviceName": "abc"}), 422)
    err(c.post(f"{P}/{pk}/devices", json={"deviceName": 7}), 422)
    err(c.post(f"{P}/{pk}/devices", json={"name": "x"}), 422)
    err(c.post(f"{P}/NoSuchProduc/devices", json={}), 404)

    batch = c.post(f"{P}/{pk}/devices:batch", json={"devices": [{"deviceName": f"b-{i:04d}"} for i in range(300)]})
    assert batch.status_code == 201 and batch.json()["count"] == 300
    csv = "deviceName,location\ncsv-0001,hall\ncsv-0002,roof\n"
    r = c.post(f"{P}/{pk}/devices:batch", content=csv, headers={"Content-Type": "text/csv"})
    assert r.status_code == 201 and [d["deviceName"] for d in r.json()["devices"]] == ["csv-0001", "csv-0002"]
    assert c.post(f"{P}/{pk}/devices:batch", json={"count": 3}).json()["count"] == 3
    err(c.post(f"{P}/{pk}/devices:batch", json={"devices": [{"deviceName": "b-0001"}]}), 409)
    err(c.post(f"{P}/{pk}/devices:batch", json={"devices": [{"deviceName": "dup-1"}, {"deviceName": "dup-1"}]}), 409)
    err(c.post(f"{P}/{pk}/devices:batch", json={"devices": "x"}), 422)
    err(c.post(f"{P}/{pk}/devices:batch", json={"count": 0}), 422)
    err(c.post(f"{P}/{pk}/devices:batch", json={"devices": []}), 422)
    err(c.post(f"{P}/{pk}/devices:batch", json={"devices": [3]}), 422)
    # a failed batch stores nothing
    assert c.get(f"{P}/{pk}/devices", params={"search": "dup-1"}).json()["total"] == 0

    page = c.get(f"{P}/{pk}/devices", params={"limit": 50, "offset": 100}).json()
    assert page["total"] == 307 and len(page["items"]) == 50
    assert c.get(f"{P}/{pk}/devices", params={"search": "csv-"}).json()["total"] == 2
    assert c.get(f"{P}/{pk}/devices", params={"search": "%"}).json()["total"] == 0
    assert c.get("/api/v1/devices", params={"productKey": pk, "limit": 1}).json()["total"] == 307
    err(c.get(f"{P}/{pk}/devices", params={"limit": 5000}), 422)

    one = f"{P}/{pk}/devices/sensor-a"
    shown = c.get(one).json()
    assert shown["deviceSecret"] == dev["deviceSecret"] and shown["enabled"] is True and shown["online"] is False
    assert c.patch(one, json={"enabled": False}).json()["enabled"] is False
    assert c.patch(one, json={"enabled": True, "nickname": "hall"}).json()["nickname"] == "hall"
    err(c.patch(one, json={"enabled": "no"}), 422)
    err(c.patch(one, json={"secret": "x"}), 422)
    new = c.post(f"{one}/reset-secret").json()
    assert new["deviceSecret"] != dev["deviceSecret"] and len(new["deviceSecret"]) == 32
    err(c.get(f"{P}/{pk}/devices/nope-nope"), 404)
    err(c.patch(f"{P}/{pk}/devices/nope-nope", json={"enabled": False}), 404)
    err(c.post(f"{P}/{pk}/devices/nope-nope/reset-secret"), 404)
    assert c.delete(one).status_code == 204
    err(c.delete(one), 404)


def test_gateway_topology(admin: Admin) -> None:
    c = admin.c
    gw_pk = admin.product(SEED_MODEL, node_type="gateway", name="gateway")
    sub_pk = admin.product(SEED_MODEL, node_type="sub-device", name="child")
    admin.device(gw_pk, "gw-1")
    admin.device(gw_pk, "gw-2")
    for i in range(3):
        admin.device(sub_pk, f"child-{i}")
    base = f"{P}/{gw_pk}/devices/gw-1/sub-devices"
    r = c.post(base, json={"devices": [{"productKey": sub_pk, "deviceName": f"child-{i}"} for i in range(2)]})
    assert r.status_code == 200, r.text
    assert c.get(base).json()["total"] == 2
    assert c.get(f"{P}/{sub_pk}/devices/child-0").json()["gateway"] == {"productKey": gw_pk, "deviceName": "gw-1"}
    # a child belongs to one gateway; gateways cannot be children; only gateways have children
    err(
        c.post(
            f"{P}/{gw_pk}/devices/gw-2/sub-devices", json={"devices": [{"productKey": sub_pk, "deviceName": "child-0"}]}
        ),
        409,
    )
    err(c.post(base, json={"devices": [{"productKey": gw_pk, "deviceName": "gw-2"}]}), 422)
    err(
        c.post(
            f"{P}/{sub_pk}/devices/child-2/sub-devices",
            json={"devices": [{"productKey": sub_pk, "deviceName": "child-1"}]},
        ),
        422,
    )
    err(c.post(base, json={"devices": [{"productKey": sub_pk, "deviceName": "missing"}]}), 404)
    err(c.post(base, json={"devices": []}), 422)
    err(c.post(base, json={"devices": [{"productKey": sub_pk}]}), 422)
    assert c.delete(f"{base}/{sub_pk}/child-0").status_code == 204
    err(c.delete(f"{base}/{sub_pk}/child-0"), 404)
    assert c.get(base).json()["total"] == 1


def test_device_data_endpoints_bad_input(admin: Admin, seed_product: str) -> None:
    c = admin.c
    admin.device(seed_product, "data-dev")
    base = f"{P}/{seed_product}/devices/data-dev"
    props = c.get(f"{base}/properties").json()["items"]
    assert [p["identifier"] for p in props] == ["temperature", "humidity"] and props[0]["value"] is None
    assert c.get(f"{base}/properties/temperature/history").json()["items"] == []
    err(c.get(f"{base}/properties/temperature/history", params={"from": 10, "to": 5}), 422)
    err(c.get(f"{base}/properties/temperature/history", params={"limit": "x"}), 422)
    err(c.get(f"{base}/messages", params={"kind": "bogus"}), 422)
    err(c.get(f"{base}/messages", params={"before": "x"}), 422)
    err(c.get(f"{P}/{seed_product}/devices/nope-nope/properties"), 404)
    err(c.get(f"{P}/{seed_product}/devices/nope-nope/messages"), 404)


@pytest.mark.parametrize("path", ["/api/v1/nothing", f"{P}/x/y/z/w"])
def test_unknown_routes_are_json_404(admin: Admin, path: str) -> None:
    err(admin.c.get(path), 404)


def test_wrong_method_is_json_405(admin: Admin) -> None:
    err(admin.c.put(P, json={}), 405)
