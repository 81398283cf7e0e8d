"""The console's server side through the real server: sign-in, session cookie, CSRF, stats, SSE, tools."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from conftest import SEED_MODEL, Admin, ServerProcess
from iotgate.admin.console import ConsoleSessions, LoginThrottle
from iotgate.admin.console_api import RateCounter
from iotgate.auth.signing import alink_auth_body, iotda_auth_body

COOKIE = "iotgate_console"


def sign_in(server: ServerProcess) -> tuple[str, str]:
    """(session id, CSRF token) of a fresh console session."""
    r = httpx.post(server.admin_url + "/console/session", json={"adminKey": server.admin_key}, timeout=10)
    assert r.status_code == 200, r.text
    return r.cookies[COOKIE], r.json()["csrfToken"]


@pytest.fixture(scope="module")
def session(server: ServerProcess) -> tuple[str, str]:
    return sign_in(server)


@pytest.fixture(scope="module")
def browser_like(server: ServerProcess, session: tuple[str, str]) -> Iterator[httpx.Client]:
    """A client authenticated only by the session cookie, as the console's page is."""
    with httpx.Client(base_url=server.admin_url, headers={"Cookie": f"{COOKIE}={session[0]}"}, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def device(admin: Admin) -> dict[str, Any]:
    pk = admin.product(SEED_MODEL)
    return admin.device(pk, "console-api-01")


def read_events(
    stream: httpx.Response,
    on_ready: Callable[[], None],
    done: Callable[[list[tuple[str, Any]]], bool],
    within_s: float,
) -> list[tuple[str, Any]]:
    """(event, data) of a Server-Sent Events stream, calling on_ready when `ready` arrives, until done(events)
    or within_s has passed (checked as lines arrive; the server sends a keep-alive every 15 s)."""
    events: list[tuple[str, Any]] = []
    name = None
    deadline = time.monotonic() + within_s
    for line in stream.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((str(name), json.loads(line[6:])))
            if name == "ready":
                on_ready()
        if done(events) or time.monotonic() > deadline:
            break
    return events


class AlinkReporter:
    def __init__(self, server: ServerProcess, dev: dict[str, Any]) -> None:
        self.client = server.device_client()
        self.dev = dev
        auth = self.client.post(
            "/auth", json=alink_auth_body(dev["productKey"], dev["deviceName"], dev["deviceSecret"])
        )
        assert auth.json()["code"] == 0, auth.text
        self.token = auth.json()["info"]["token"]

    def post(self, params: dict[str, Any]) -> dict[str, Any]:
        topic = f"/topic/sys/{self.dev['productKey']}/{self.dev['deviceName']}/thing/event/property/post"
        body = json.dumps({"id": "1", "version": "1.0", "params": params})
        r = self.client.post(topic, content=body, headers={"password": self.token})
        return dict(r.json())


def test_sign_in_refuses_a_wrong_key_and_sets_a_strict_httponly_cookie(server: ServerProcess) -> None:
    url = server.admin_url + "/console/session"
    wrong = httpx.post(url, json={"adminKey": "iga_not-the-key"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "wrong_admin_key"
    assert "set-cookie" not in wrong.headers
    assert httpx.post(url, json={}).status_code == 422
    form = httpx.post(url, content=f"adminKey={server.admin_key}", headers={"Content-Type": "text/plain"})
    assert form.status_code == 415  # only JSON: a cross-site form cannot sign in

    ok = httpx.post(url, json={"adminKey": server.admin_key})
    assert ok.status_code == 200 and ok.headers["cache-control"] == "no-store"
    cookie = ok.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    assert "Path=/" in cookie
    sid, csrf = ok.cookies[COOKIE], ok.json()["csrfToken"]
    assert len(sid) >= 40 and len(csrf) >= 40 and sid != csrf
    state = httpx.get(url, headers={"Cookie": f"{COOKIE}={sid}"}).json()
    assert state == {"authenticated": True, "csrfToken": csrf}
    assert httpx.get(url).json() == {"authenticated": False}
    assert httpx.get(url, headers={"Cookie": f"{COOKIE}=forged"}).json() == {"authenticated": False}
    # every sign-in gets a new session id
    assert sign_in(server)[0] != sid


def test_cookie_requests_need_the_csrf_header_on_unsafe_methods(server: ServerProcess, admin: Admin) -> None:
    sid, csrf = sign_in(server)
    with httpx.Client(base_url=server.admin_url, headers={"Cookie": f"{COOKIE}={sid}"}, timeout=10) as c:
        before = c.get("/api/v1/products").json()["total"]
        body = {"name": "csrf-check"}
        missing = c.post("/api/v1/products", json=body)
        assert missing.status_code == 403 and missing.json()["error"]["code"] == "csrf_failed"
        wrong = c.post("/api/v1/products", json=body, headers={"X-CSRF-Token": csrf[:-2] + "xx"})
        assert wrong.status_code == 403
        assert c.get("/api/v1/products").json()["total"] == before  # nothing was created
        made = c.post("/api/v1/products", json=body, headers={"X-CSRF-Token": csrf})
        assert made.status_code == 201, made.text
        pk = made.json()["productKey"]
        assert c.delete(f"/api/v1/products/{pk}").status_code == 403
        assert c.delete(f"/api/v1/products/{pk}", headers={"X-CSRF-Token": csrf}).status_code == 204

        # no cookie and no key: 401 as before; the Bearer key still works without any CSRF header
        assert httpx.post(server.admin_url + "/api/v1/products", json=body).status_code == 401
        assert admin.c.get("/api/v1/products").status_code == 200

        # sign out needs the token too, then the cookie is dead
        assert c.delete("/console/session").status_code == 403
        out = c.delete("/console/session", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 200 and f"{COOKIE}=" in out.headers["set-cookie"]
        assert c.get("/api/v1/products").status_code == 401


def test_console_page_and_assets_are_served_with_a_strict_policy(server: ServerProcess) -> None:
    root = httpx.get(server.admin_url + "/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/console/"
    page = httpx.get(server.admin_url + "/console/")
    assert page.status_code == 200 and "/console/static/js/main.js" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    js = httpx.get(server.admin_url + "/console/static/js/main.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert js.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(server.admin_url + "/console/static/../console.py").status_code == 404
    assert httpx.get(server.admin_url + "/console/static/nope.js").status_code == 404


def test_overview_counts_committed_and_rejected_reports(
    server: ServerProcess, browser_like: httpx.Client, device: dict[str, Any]
) -> None:
    before = browser_like.get("/api/v1/stats/overview").json()
    reporter = AlinkReporter(server, device)
    for t in (20, 21, 22):
        assert reporter.post({"temperature": t, "humidity": 50})["code"] == 0
    assert reporter.post({"temperature": 99})["code"] != 0
    after = browser_like.get("/api/v1/stats/overview").json()
    assert after["totals"]["messages"] - before["totals"]["messages"] == 3
    assert after["totals"]["rejected"] - before["totals"]["rejected"] == 1
    assert after["devices"]["total"] >= 1 and after["devices"]["online"] >= 1
    assert after["rate"]["windowSeconds"] == 10
    hour = after["lastHour"]
    assert hour["bucketSeconds"] == 10 and len(hour["messages"]) == len(hour["rejected"]) == 360
    assert sum(hour["messages"]) > 0 and sum(hour["rejected"]) > 0
    assert hour["start"] <= after["time"] <= hour["start"] + 3600 * 1000
    assert browser_like.get("/api/v1/stats/overview?bucket=60").json()["lastHour"]["bucketSeconds"] == 60
    bad = browser_like.get("/api/v1/stats/overview?bucket=7")
    assert bad.status_code == 422 and "bucket" in bad.json()["error"]["message"]


def test_overview_counts_online_devices_with_the_configured_window(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The overview's online count uses --online-window-s, as each device's `online` does."""
    window_s = 2.0
    data = tmp_path_factory.mktemp("console-window") / "data"
    srv = ServerProcess(data, "--device-plain-http", "--online-window-s", str(window_s)).start()
    try:
        with srv.admin() as c:
            admin = Admin(c)
            pk = admin.product(SEED_MODEL)
            dev = admin.device(pk, "window-01")
            reported = time.monotonic()
            assert AlinkReporter(srv, dev).post({"temperature": 20})["code"] == 0
            devices = c.get("/api/v1/stats/overview").json()["devices"]
            assert devices["onlineWindowSeconds"] == window_s and devices["online"] == 1
            time.sleep(max(0.0, reported + window_s + 0.3 - time.monotonic()))
            assert c.get(f"/api/v1/products/{pk}/devices/window-01").json()["online"] is False
            assert c.get("/api/v1/stats/overview").json()["devices"]["online"] == 0
    finally:
        srv.stop()


def test_event_stream_delivers_reports_as_they_commit(
    server: ServerProcess, session: tuple[str, str], device: dict[str, Any]
) -> None:
    path = f"/api/v1/products/{device['productKey']}/devices/{device['deviceName']}/events"
    reporter = AlinkReporter(server, device)

    def report() -> None:
        assert reporter.post({"temperature": 33, "humidity": 44})["code"] == 0
        assert reporter.post({"humidity": 0})["code"] != 0

    headers = {"Cookie": f"{COOKIE}={session[0]}"}
    with (
        httpx.Client(base_url=server.admin_url, timeout=10) as c,
        c.stream("GET", path, headers=headers) as stream,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = read_events(stream, report, lambda events: len(events) >= 3, 10)
    kinds = [e[0] for e in events]
    assert kinds == ["ready", "property", "message"], events
    assert events[0][1]["deviceId"] == device["deviceId"]
    assert events[1][1]["values"] == {"temperature": 33, "humidity": 44}
    assert events[2][1]["kind"] == "rejected" and "humidity" in events[2][1]["reason"]

    unknown = httpx.get(
        server.admin_url + f"/api/v1/products/{device['productKey']}/devices/nobody/events", headers=headers
    )
    assert unknown.status_code == 404
    assert httpx.get(server.admin_url + path).status_code == 401


def test_sign_tool_bodies_authenticate_at_the_device_listener(
    server: ServerProcess, browser_like: httpx.Client, session: tuple[str, str], device: dict[str, Any]
) -> None:
    csrf = {"X-CSRF-Token": session[1]}
    pk, dn, secret = device["productKey"], device["deviceName"], device["deviceSecret"]
    r = browser_like.post("/api/v1/tools/sign", json={"productKey": pk, "deviceName": dn}, headers=csrf)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["alink"]["body"] == alink_auth_body(pk, dn, secret)
    assert out["alink"]["url"] == server.device_url + "/auth"
    assert out["alink"]["signContent"] == f"clientId{pk}.{dn}deviceName{dn}productKey{pk}"
    assert out["iotda"]["body"] == iotda_auth_body(device["deviceId"], secret)
    with server.device_client() as dc:
        assert dc.post("/auth", json=out["alink"]["body"]).json()["code"] == 0
        assert dc.post("/v5/device-auth", json=out["iotda"]["body"]).status_code == 200

    # a given secret, sign method and timestamps are used as given
    r = browser_like.post(
        "/api/v1/tools/sign",
        json={
            "productKey": "pk1",
            "deviceName": "dev1",
            "deviceSecret": "s3cret",
            "signMethod": "hmacmd5",
            "timestamp": "1700000000000",
            "iotdaTimestamp": "2024010203",
        },
        headers=csrf,
    )
    assert r.status_code == 200, r.text
    assert r.json()["alink"]["body"] == alink_auth_body(
        "pk1", "dev1", "s3cret", sign_method="hmacmd5", timestamp_ms=1700000000000
    )
    assert r.json()["iotda"]["body"]["timestamp"] == "2024010203"

    bad = browser_like.post(
        "/api/v1/tools/sign",
        json={"deviceName": dn, "signMethod": "sha512", "iotdaTimestamp": "yesterday", "timestamp": "-5"},
        headers=csrf,
    )
    assert bad.status_code == 422
    fields = {d["field"] for d in bad.json()["error"]["details"]}
    assert fields == {"productKey", "signMethod", "iotdaTimestamp", "timestamp"}
    assert browser_like.post("/api/v1/tools/sign", content=b"[1]", headers=csrf).status_code == 422
    assert browser_like.post("/api/v1/tools/sign", content=b"{", headers=csrf).status_code == 422
    nobody = browser_like.post("/api/v1/tools/sign", json={"productKey": pk, "deviceName": "nobody"}, headers=csrf)
    assert nobody.status_code == 404


def test_connection_info_and_the_certificate_devices_can_trust(
    server: ServerProcess, browser_like: httpx.Client, tmp_path: Any
) -> None:
    info = browser_like.get("/api/v1/tools/connection").json()
    assert info["baseUrl"] == server.device_url and info["tls"] is True
    assert info["alink"]["auth"] == server.device_url + "/auth"
    assert info["iotda"]["auth"] == server.device_url + "/v5/device-auth"
    assert {c["keyType"].split()[0] for c in info["certificates"]} == {"RSA", "ECDSA"}
    assert all(len(c["sha256"]) == 64 and "127.0.0.1" in c["names"] for c in info["certificates"])
    pem = browser_like.get("/api/v1/tools/device-cert")
    assert pem.status_code == 200 and "attachment" in pem.headers["content-disposition"]
    assert pem.text.count("BEGIN CERTIFICATE") == 1
    rsa, ecdsa = info["certificates"]
    assert ecdsa["issuer"] == rsa["subject"]  # the ECDSA leaf is issued by the downloaded certificate
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pem.content)
    # the download is enough to verify the listener, whichever certificate it presents
    r = httpx.post(server.device_url + "/auth", json={}, verify=ssl.create_default_context(cafile=str(ca)))
    assert r.status_code == 200 and r.json()["code"] != 0


# -- pure units ---------------------------------------------------------------------------------


def test_rate_counter_rates_and_hour_series() -> None:
    c = RateCounter(horizon_s=3600)
    now = 1_000_000
    for s in range(now - 10, now):
        c.add(s, 5, 1)
    c.add(now, 100, 0)  # the current, incomplete second is not in the rate
    assert c.rate(now) == (5.0, 1.0)
    start, msgs, _ = c.series(now, 10)
    assert len(msgs) == 360 and start % 10 == 0 and start <= now < start + 3600
    assert sum(m * 10 for m in msgs[:-1]) + msgs[-1] * (now - (start + 3590) + 1) == pytest.approx(150)
    c.add(now + 3600, 7, 0)  # an hour later the slot is reused, not added to
    assert c._at(now) == (0, 0) and c._at(now + 3600) == (7, 0)
    assert c.total_messages == 157 and c.total_rejected == 10


def test_sessions_expire_and_check_csrf() -> None:
    s = ConsoleSessions(idle_s=0.05, absolute_s=10)
    sid, sess = s.create()
    scope: dict[str, Any] = {
        "method": "POST",
        "headers": [(b"cookie", f"a=b; {COOKIE}={sid}".encode()), (b"x-csrf-token", sess.csrf.encode())],
    }
    assert s.check(scope)
    scope["headers"] = scope["headers"][:1]
    assert not s.check(scope) and scope["iotgate.csrf_failed"]
    assert s.check({"method": "GET", "headers": scope["headers"]})
    time.sleep(0.08)
    assert s.get(sid) is None and len(s) == 0


def test_login_throttle_blocks_after_repeated_failures() -> None:
    t = LoginThrottle(limit=3, window_s=60)
    for i in range(3):
        assert t.retry_after("10.0.0.1", now=100 + i) == 0
        t.failed("10.0.0.1", now=100 + i)
    assert 55 <= t.retry_after("10.0.0.1", now=105) <= 60
    assert t.retry_after("10.0.0.2", now=105) == 0
    assert t.retry_after("10.0.0.1", now=161) == 0  # the oldest failure aged out
    t.succeeded("10.0.0.1")
    assert t.retry_after("10.0.0.1", now=162) == 0


def test_event_stream_follows_the_database_when_workers_ingest(
    tmp_path_factory: pytest.TempPathFactory, pg_url: str
) -> None:
    """With --workers the device reports commit in other processes: the stream reads them from the database."""
    from iotgate.auth.secretbox import SecretBox

    data = tmp_path_factory.mktemp("console-pg") / "data"
    srv = ServerProcess(
        data, "--database", pg_url, "--workers", "2", env={"IOTGATE_MASTER_KEY": SecretBox.new_key()}
    ).start()
    try:
        with srv.admin() as c:
            admin = Admin(c)
            dev = admin.device(admin.product(SEED_MODEL), "pg-live-01")
            stats = c.get("/api/v1/stats/overview").json()
            assert stats["ratesScope"] == "this-process"
        reporter = AlinkReporter(srv, dev)

        def report() -> None:
            assert reporter.post({"temperature": 31, "humidity": 41})["code"] == 0
            assert reporter.post({"temperature": 61})["code"] != 0

        path = f"/api/v1/products/{dev['productKey']}/devices/{dev['deviceName']}/events"
        with (
            srv.admin() as c,
            c.stream("GET", path) as stream,
        ):
            assert stream.status_code == 200
            events = read_events(stream, report, lambda events: {e[0] for e in events} >= {"property", "message"}, 20)
        props = [e[1] for e in events if e[0] == "property"]
        msgs = [e[1] for e in events if e[0] == "message"]
        assert props and props[-1]["values"] == {"temperature": 31, "humidity": 41}, events
        assert msgs and msgs[0]["kind"] == "rejected" and "temperature" in msgs[0]["reason"], events
    finally:
        srv.stop()
