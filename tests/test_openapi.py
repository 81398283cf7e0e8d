"""The OpenAPI document: valid OpenAPI 3.1 with JSON Schema 2020-12 schemas, an operation entry for
every route of the management API, real answers match it; the docs page needs nothing from outside."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from conftest import SEED_MODEL, Admin, ServerProcess, api_routes, free_port
from iotgate.admin.app import PUBLIC_API_PATHS
from iotgate.admin.openapi import OPERATIONS, build_document, documented_routes


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("openapi") / "data", "--device-plain-http").start()
    yield proc
    proc.stop()


def test_every_route_has_a_written_operation() -> None:
    routes = {(m, r.path) for r in documented_routes() for m in (r.methods or set()) - {"HEAD"}}
    served = {(m, path) for m, path in api_routes() if m != "HEAD" and path not in PUBLIC_API_PATHS}
    assert served == routes, "every /api route the admin app serves (console included) is documented"
    missing = routes - set(OPERATIONS)
    assert not missing, f"add these to iotgate.admin.openapi.OPERATIONS: {sorted(missing)}"
    assert not set(OPERATIONS) - routes, "OPERATIONS names a route that no longer exists"


def test_document_is_valid_openapi_3_1() -> None:
    doc = build_document()
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["adminKey"] == {"type": "http", "scheme": "bearer"}
    for name, schema in doc["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema), name
    refs = set(re.findall(r'"#/components/schemas/([A-Za-z]+)"', str(doc).replace("'", '"')))
    assert refs <= set(doc["components"]["schemas"]), refs - set(doc["components"]["schemas"])
    operation_ids = []
    for path, methods in doc["paths"].items():
        assert path.startswith("/api/v1/") and "_" not in re.sub(r"[^{}_a-zA-Z]", "", path.split("{")[0])
        for method, op in methods.items():
            operation_ids.append(op["operationId"])
            assert op["summary"] and op["tags"] and op["tags"] != ["other"], (method, path)
            assert "401" in op["responses"] and any(s < "300" for s in op["responses"]), (method, path)
            in_path = set(re.findall(r"\{(\w+)\}", path))
            assert {p["name"] for p in op["parameters"] if p["in"] == "path"} == in_path, (method, path)
            for p in op["parameters"]:
                jsonschema.Draft202012Validator.check_schema(p["schema"])
            if method in ("post", "put", "patch") and "requestBody" in op:
                assert "application/json" in op["requestBody"]["content"]
    assert len(operation_ids) == len(set(operation_ids)) >= 39


def validator(doc: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator for one component schema, resolving $refs inside the document."""
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry: Registry = Registry().with_resource("urn:iotgate", resource)
    return jsonschema.Draft202012Validator({"$ref": f"urn:iotgate#/components/schemas/{name}"}, registry=registry)


def test_real_answers_match_their_schemas(srv: ServerProcess) -> None:
    doc = httpx.get(srv.admin_url + "/api/v1/openapi.json").json()
    assert doc == build_document()
    with srv.admin() as client:
        adm = Admin(client)
        r = client.post("/api/v1/products", json={"name": "schema check", "ratePerSecond": 5})
        validator(doc, "Product").validate(r.json())
        pk = r.json()["productKey"]
        client.put(f"/api/v1/products/{pk}/thing-model", json=SEED_MODEL)
        validator(doc, "PublishResult").validate(client.post(f"/api/v1/products/{pk}/thing-model/publish").json())
        validator(doc, "ModelVersions").validate(client.get(f"/api/v1/products/{pk}/thing-model/versions").json())
        validator(doc, "ModelDiff").validate(client.get(f"/api/v1/products/{pk}/thing-model/diff").json())
        validator(doc, "Credentials").validate(adm.device(pk, "schema-dev"))
        r = client.post(f"/api/v1/products/{pk}/devices:batch", json={"count": 2})
        validator(doc, "BatchResult").validate(r.json())
        validator(doc, "ProductPage").validate(client.get("/api/v1/products").json())
        validator(doc, "Product").validate(client.get(f"/api/v1/products/{pk}").json())
        validator(doc, "DevicePage").validate(client.get("/api/v1/devices").json())
        validator(doc, "Device").validate(client.get(f"/api/v1/products/{pk}/devices/schema-dev").json())
        validator(doc, "Properties").validate(client.get(f"/api/v1/products/{pk}/devices/schema-dev/properties").json())
        validator(doc, "MessagePage").validate(client.get(f"/api/v1/products/{pk}/devices/schema-dev/messages").json())
        validator(doc, "History").validate(
            client.get(f"/api/v1/products/{pk}/devices/schema-dev/properties/temperature/history").json()
        )
        validator(doc, "AuditPage").validate(client.get("/api/v1/audit").json())

        # the console's endpoints
        validator(doc, "Overview").validate(client.get("/api/v1/stats/overview", params={"bucket": 60}).json())
        validator(doc, "Connection").validate(client.get("/api/v1/tools/connection").json())
        sign = client.post("/api/v1/tools/sign", json={"productKey": pk, "deviceName": "schema-dev"})
        validator(doc, "SignResult").validate(sign.json())
        r = client.get("/api/v1/tools/device-cert")  # --device-plain-http: no certificate
        assert r.status_code == 404
        validator(doc, "Error").validate(r.json())

        # forwarding rules (disabled, to a closed loopback port: nothing is delivered)
        hook = {"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/hook", "secret": "s3cret"}
        rule = {"name": "schema rule", "source": "property", "productKey": pk, "targets": [hook], "enabled": False}
        validator(doc, "RuleInput").validate(rule)
        r = client.post("/api/v1/rules", json=rule)
        assert r.status_code == 201, r.text
        validator(doc, "Rule").validate(r.json())
        rule_id = r.json()["id"]
        assert r.json()["targets"][0]["secret"] == "***"
        patched = client.patch(f"/api/v1/rules/{rule_id}", json={"where": "temperature > 40"})
        validator(doc, "Rule").validate(patched.json())
        rules = client.get("/api/v1/rules").json()
        validator(doc, "RulePage").validate(rules)
        assert [t["stats"]["targetId"] for t in rules["items"][0]["targets"]] == [rules["items"][0]["targets"][0]["id"]]
        validator(doc, "RuleStats").validate(client.get(f"/api/v1/rules/{rule_id}/stats").json())
        validator(doc, "DeadLetterPage").validate(client.get(f"/api/v1/rules/{rule_id}/dead-letters").json())
        validator(doc, "ReplayResult").validate(client.post(f"/api/v1/rules/{rule_id}/dead-letters:replay").json())
        assert client.delete(f"/api/v1/rules/{rule_id}").status_code == 204
        r = client.get(f"/api/v1/rules/{rule_id}")
        assert r.status_code == 404
        validator(doc, "Error").validate(r.json())
        r = client.post("/api/v1/products", json={"name": ""})
        assert r.status_code == 422
        validator(doc, "Error").validate(r.json())
        with pytest.raises(jsonschema.ValidationError):  # the schemas do constrain: a wrong shape fails
            validator(doc, "Product").validate({"productKey": 1})


def test_docs_page_is_self_contained(srv: ServerProcess) -> None:
    r = httpx.get(srv.admin_url + "/api/v1/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "/api/v1/openapi.json" in html and "<script>" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the docs page loads nothing from outside"
    assert "default-src 'self'" in r.headers["content-security-policy"]


def test_undecodable_bodies_are_422_not_500(srv: ServerProcess) -> None:
    """Bodies a JSON generator never produces: invalid UTF-8 inside a string, nesting past any recursion limit."""
    with srv.admin() as client:
        for raw in (b'{"name": "\xd8\xff"}', b'"\xc3"', b"[" * 100000 + b"]" * 100000):
            for method, path in (
                ("POST", "/api/v1/products"),
                ("PUT", "/api/v1/products/x/thing-model"),
                ("POST", "/api/v1/tools/sign"),
            ):
                r = client.request(method, path, content=raw, headers={"Content-Type": "application/json"})
                assert r.status_code == 422, (path, raw[:20], r.text)
                assert r.json()["error"]["code"] == "invalid_json"

    with httpx.Client(base_url=srv.admin_url) as anon:  # the console's sign-in takes JSON too
        r = anon.post("/console/session", content=b'{"adminKey": "\xd8"}', headers={"Content-Type": "application/json"})
        assert r.status_code == 422, r.text
