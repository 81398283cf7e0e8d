"""The web console in a real browser (Debian's Chromium through Playwright) against the real server.

The seed flow: sign in → create a product → define temperature and humidity in the thing-model editor →
publish → add a device → the device reports through the Alibaba dialect → Running status shows the values
without a reload; a rejected value appears under Messages with its reason. Screenshots of every page go to
test-artifacts/console/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import SEED_MODEL, Admin, ServerProcess
from iotgate.auth.signing import alink_auth_body

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test extra: pip install -e '.[test]'")

CHROMIUM = os.environ.get("IOTGATE_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 15_000

if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 820}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def shot(page: Any, name: str, full: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full)


def sign_in(page: Any, server: ServerProcess) -> None:
    page.goto(server.admin_url + "/console/")
    page.fill("#admin-key", server.admin_key)
    page.press("#admin-key", "Enter")  # the keyboard submits the form
    page.wait_for_selector("#card-devices")


class Device:
    """A device speaking the Alibaba dialect over TLS (httpx + the shared signing helpers)."""

    def __init__(self, server: ServerProcess, pk: str, dn: str, secret: str) -> None:
        self.client = server.device_client()
        self.topic = f"/topic/sys/{pk}/{dn}/thing/event/property/post"
        auth = self.client.post("/auth", json=alink_auth_body(pk, dn, secret))
        assert auth.json()["code"] == 0, auth.text
        self.token = auth.json()["info"]["token"]

    def report(self, params: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps({"id": "1", "version": "1.0", "params": params})
        return dict(self.client.post(self.topic, content=body, headers={"password": self.token}).json())


def add_number_property(page: Any, name: str, ident: str, lo: str, hi: str, unit: str) -> None:
    page.click("#add-property")
    page.fill("#feature-name", name)
    page.fill("#feature-identifier", ident)
    page.select_option("#dt-type", "int32")
    page.fill("#dt-min", lo)
    page.fill("#dt-max", hi)
    page.fill("#dt-step", "1")
    page.fill("#dt-unit", unit)
    page.get_by_label("Read-only").check()
    page.click("dialog button[type=submit]")
    page.wait_for_selector("dialog", state="detached")


def test_wrong_key_is_refused_in_the_page(page: Any, server: ServerProcess) -> None:
    page.goto(server.admin_url + "/console/")
    page.fill("#admin-key", "iga_wrong")
    page.click("button[type=submit]")
    error = page.locator("#admin-key-error")
    error.wait_for()
    assert error.inner_text() == "That is not the admin key."
    assert page.get_attribute("#admin-key", "aria-invalid") == "true"
    assert page.locator("#card-devices").count() == 0
    shot(page, "01-sign-in")
    # the cookie is not readable by scripts
    sign_in(page, server)
    assert page.evaluate("document.cookie") == ""


def test_seed_flow_in_the_console(page: Any, server: ServerProcess, tmp_path: Path) -> None:
    sign_in(page, server)

    # 1. a product, created with the console's form
    page.click("a[href='#/products']")
    page.click("#create-product")
    page.click("dialog button[type=submit]")  # empty name: told where
    assert page.inner_text("#product-name-error") == "Enter a product name."
    page.fill("#product-name", "Collector")
    page.get_by_label("Directly connected device").check()
    page.select_option("#product-data-format", "alink-json")
    page.click("dialog button[type=submit]")
    page.wait_for_selector("#model-status")
    pk = page.inner_text("#product-key")
    assert re.fullmatch(r"[A-Za-z0-9]{6,32}", pk)

    # 2. the thing model: validation messages first, then temperature and humidity
    page.click("#add-property")
    page.fill("#feature-name", "Temperature")
    page.fill("#feature-identifier", "1temperature")
    page.fill("#dt-min", "60")
    page.fill("#dt-max", "50")
    page.click("dialog button[type=submit]")
    assert "not starting with a digit" in page.inner_text("#feature-identifier-error")
    assert page.inner_text("#dt-max-error") == "Max must not be less than min."
    page.press("dialog", "Escape")
    page.wait_for_selector("dialog", state="detached")
    add_number_property(page, "Temperature", "temperature", "-10", "50", "°C")
    add_number_property(page, "Humidity", "humidity", "1", "100", "%")
    rows = page.locator("table tbody tr")
    assert rows.count() == 2
    assert "int32 · -10 … 50 · step 1 · °C" in rows.nth(0).inner_text()
    assert "read-only" in rows.nth(1).inner_text()
    assert "Not published" in page.inner_text("#model-status")
    shot(page, "03-thing-model-editor")

    # 3. publish, with the changes listed first
    page.click("#publish-model")
    dialog = page.locator("dialog")
    assert "temperature" in dialog.inner_text() and "humidity" in dialog.inner_text()
    shot(page, "04-publish-dialog")
    page.click("dialog button[type=submit]")
    page.wait_for_selector("#model-status:has-text('Published · version 1')")
    page.click("#tab-versions")
    page.wait_for_selector("text=Published versions")
    shot(page, "05-model-versions")
    with page.expect_download() as dl:
        page.click("#tab-io")
        page.click("button[data-export=alibaba]")
    tsl = json.loads(Path(dl.value.path()).read_text())
    assert [p["identifier"] for p in tsl["properties"]] == ["temperature", "humidity"]
    shot(page, "06-import-export")

    # 4. a device: credentials shown once, with connection snippets
    page.click("a[href='#/devices']")
    page.click("#add-device")
    page.select_option("#device-product", pk)
    page.fill("#device-name", "no")  # too short: refused in place
    page.click("dialog button[type=submit]")
    assert "4–32" in page.inner_text("#device-name-error")
    page.fill("#device-name", "collector-01")
    page.click("dialog button[type=submit]")
    page.wait_for_selector("#cred-device-secret")
    secret = page.inner_text("#cred-device-secret")
    assert re.fullmatch(r"[A-Za-z0-9]{32}", secret)
    assert page.inner_text("#cred-device-id") == f"{pk}_collector-01"
    snippets = {}
    for key in ("curlAlink", "curlIotda", "pyAlink", "pyIotda"):
        page.click(f"#tab-snippet-{key}")
        snippets[key] = page.inner_text(f"pre[data-snippet={key}]")
    assert secret in snippets["curlAlink"] and '"temperature":20' in snippets["curlAlink"]
    page.click("#tab-snippet-curlAlink")
    shot(page, "07-device-credentials")
    page.get_by_role("button", name="Done").click()
    page.wait_for_selector("a:has-text('collector-01')")
    shot(page, "08-devices")

    # 5. running status, live: the device reports while the page stays loaded
    page.click("a:has-text('collector-01')")
    page.wait_for_selector("#live-state[data-connected=true]")
    page.evaluate("window.__notReloaded = true")
    assert page.inner_text("#prop-temperature .value") == "—"
    device = Device(server, pk, "collector-01", secret)
    first = device.report({"temperature": 21, "humidity": 45})
    assert first["code"] == 0, (first, server.log_path.read_text()[-3000:])
    page.wait_for_selector("#prop-temperature[data-value='21']")
    page.wait_for_selector("#prop-humidity[data-value='45']")
    assert page.inner_text("#prop-temperature .value") == "21°C"
    assert page.inner_text("#prop-humidity .value") == "45%"
    assert page.evaluate("window.__notReloaded") is True
    assert device.report({"temperature": 23, "humidity": 47})["code"] == 0
    page.wait_for_selector("#prop-temperature[data-value='23']")
    # values the device stamps with older times go to history; the running status keeps the latest
    now_ms = int(time.time() * 1000)
    for i in range(12):
        at = now_ms - (56 - 4 * i) * 60_000
        old = device.report(
            {
                "temperature": {"value": 12 + (i * 7) % 9, "time": at},
                "humidity": {"value": 30 + (i * 5) % 20, "time": at},
            }
        )
        assert old["code"] == 0, old
    assert device.report({"humidity": 48})["code"] == 0
    page.wait_for_selector("#prop-humidity[data-value='48']")  # events arrive in commit order
    assert page.get_attribute("#prop-temperature", "data-value") == "23"
    assert page.evaluate("window.__notReloaded") is True
    shot(page, "09-running-status")

    # 6. a rejected report shows up under Messages with its reason (live too)
    page.click("#tab-messages")
    page.wait_for_selector("#messages-table")
    bad = device.report({"temperature": 51, "humidity": 47})
    assert bad["code"] != 0
    row = page.locator("#messages-table tr[data-kind=rejected]").first
    row.wait_for()
    assert "above max 50" in row.inner_text() and "temperature" in row.inner_text()
    assert page.evaluate("window.__notReloaded") is True
    shot(page, "10-messages")

    # 7. history: a chart per property, CSV download
    page.click("#tab-history")
    page.wait_for_selector("[data-history=temperature] svg.chart")
    assert "14 values" in page.inner_text("[data-history=temperature]")
    assert "15 values" in page.inner_text("[data-history=humidity]")
    with page.expect_download() as dl:
        page.click("#history-csv")
    lines = Path(dl.value.path()).read_text().strip().splitlines()
    assert lines[0] == "time,timeMs,identifier,value" and len(lines) == 1 + 14 + 15
    shot(page, "11-history")

    # 8. the snippets shown in the credentials dialog work as pasted (curl + openssl, and the SDK)
    ca = page.context.request.get(server.admin_url + "/api/v1/tools/device-cert")
    assert ca.ok
    (tmp_path / "iotgate-device-ca.pem").write_bytes(ca.body())
    runs = [(key, ["bash", "-c", snippets[key]]) for key in ("curlAlink", "curlIotda")]
    runs += [(key, [sys.executable, "-c", snippets[key]]) for key in ("pyAlink", "pyIotda")]
    with server.admin() as admin:
        history = f"/api/v1/products/{pk}/devices/collector-01/properties/temperature/history"
        for key, cmd in runs:
            if cmd[0] == "bash" and not (shutil.which("curl") and shutil.which("openssl")):
                continue
            before = len(admin.get(history).json()["items"])
            run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert run.returncode == 0, (key, run.stdout, run.stderr)
            assert len(admin.get(history).json()["items"]) == before + 1, (key, run.stdout, run.stderr)
    page.click("#tab-status")
    page.wait_for_selector("#prop-temperature[data-value='20']")

    # 9. overview, tools, forwarding
    page.click("a[href='#/overview']")
    page.wait_for_selector("#card-online")
    assert page.inner_text("#card-devices .value") == "1" and page.inner_text("#card-online .value") == "1"
    shot(page, "02-overview")
    page.click("a[href='#/tools']")
    page.fill("#sign-product-key", pk)
    page.fill("#sign-device-name", "collector-01")
    page.click("#sign-form button[type=submit]")
    page.wait_for_selector("#sign-alink")
    assert json.loads(page.inner_text("#sign-alink")) == alink_auth_body(pk, "collector-01", secret)
    shot(page, "12-connection-and-tools", full=True)
    page.click("a[href='#/forwarding']")
    page.wait_for_selector("main h2")
    page.click("a[href='#/products']")
    page.wait_for_selector(f"a[href='#/products/{pk}']")
    shot(page, "14-products")


def test_bulk_import_and_device_actions(page: Any, server: ServerProcess, tmp_path: Path) -> None:
    with server.admin() as c:
        r = c.post("/api/v1/products", json={"name": "meters"})
        pk = r.json()["productKey"]
    csv_file = tmp_path / "devices.csv"
    csv_file.write_text("deviceName,comment\n" + "".join(f"meter-{i:03d},x\n" for i in range(450)))
    sign_in(page, server)
    page.goto(server.admin_url + f"/console/#/devices?product={pk}")
    page.click("#import-devices")
    page.select_option("#import-product", pk)
    page.set_input_files("#import-csv", str(csv_file))
    page.wait_for_selector("text=450 devices in the file")
    page.click("dialog button[type=submit]")
    page.wait_for_selector("text=450 of 450 devices created")
    with page.expect_download() as dl:
        page.click("dialog button[type=submit]")
    creds = Path(dl.value.path()).read_text().strip().splitlines()
    assert creds[0] == "productKey,deviceName,deviceSecret,deviceId" and len(creds) == 451
    page.press("dialog", "Escape")
    page.wait_for_selector("text=1–20 of 450")

    # search, then disable and delete from the list
    page.fill("#filter-search", "meter-04")
    page.press("#filter-search", "Enter")
    page.wait_for_selector("text=1–10 of 10")
    page.get_by_role("button", name="Disable meter-040").click()
    page.get_by_role("button", name="Enable meter-040").wait_for()
    page.get_by_role("button", name="Delete meter-041").click()
    page.click("dialog button[type=submit]")
    page.wait_for_selector("text=1–9 of 9")
    with server.admin() as c:
        assert c.get(f"/api/v1/products/{pk}/devices/meter-040").json()["enabled"] is False
        assert c.get(f"/api/v1/products/{pk}/devices/meter-041").status_code == 404

    # reset the secret from the device page: the new one is shown and is the registered one
    page.goto(server.admin_url + f"/console/#/devices/{pk}/meter-042")
    page.click("#reset-secret")
    page.click("dialog button[type=submit]")
    page.wait_for_selector("#cred-device-secret")
    new_secret = page.inner_text("#cred-device-secret")
    with server.admin() as c:
        assert c.get(f"/api/v1/products/{pk}/devices/meter-042").json()["deviceSecret"] == new_secret
    # an import of the same names is refused with the server's reason, nothing half-done
    page.get_by_role("button", name="Done").click()
    page.goto(server.admin_url + f"/console/#/devices?product={pk}")
    page.click("#import-devices")
    page.set_input_files("#import-csv", str(csv_file))
    page.click("dialog button[type=submit]")
    error = page.locator("dialog .form-error")
    error.wait_for()
    assert "Stopped at device 1" in error.inner_text() and "0 device(s) were created" in error.inner_text()


def test_sign_out_ends_the_session(page: Any, server: ServerProcess) -> None:
    sign_in(page, server)
    cookies = page.context.cookies()
    [cookie] = [c for c in cookies if c["name"] == "iotgate_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.click("#sign-out")
    page.wait_for_selector("#admin-key")
    stale = httpx.get(server.admin_url + "/api/v1/products", headers={"Cookie": f"iotgate_console={cookie['value']}"})
    assert stale.status_code == 401


def test_thing_model_editor_events_services_modules_and_import(page: Any, server: ServerProcess) -> None:
    with server.admin() as c:
        pk = c.post("/api/v1/products", json={"name": "editor"}).json()["productKey"]
    sign_in(page, server)
    page.goto(server.admin_url + f"/console/#/products/{pk}?tab=model")
    page.wait_for_selector("#model-status")

    # an alert event with an enum output parameter; a duplicate enum value is refused in place
    page.click("#add-event")
    page.fill("#feature-name", "Overheat")
    page.fill("#feature-identifier", "overheat")
    page.get_by_label("Alert").check()
    page.get_by_role("button", name="Add output parameter").click()
    row = page.locator("dialog .param-row").first
    row.locator("input[name=param-name]").fill("Level")
    row.locator("input[name=param-identifier]").fill("level")
    row.locator("select[name=type]").select_option("enum")
    row.locator("input[name=enum-label]").first.fill("low")
    row.get_by_role("button", name="Add value").click()
    row.locator("input[name=enum-value]").nth(1).fill("0")
    row.locator("input[name=enum-label]").nth(1).fill("high")
    page.click("dialog button[type=submit]")
    assert "listed twice" in row.inner_text()
    row.locator("input[name=enum-value]").nth(1).fill("1")
    shot(page, "04-feature-dialog")
    page.click("dialog button[type=submit]")
    page.wait_for_selector("dialog", state="detached")

    # a synchronous service whose input is a struct of two members
    page.click("#add-service")
    page.fill("#feature-name", "Set target")
    page.fill("#feature-identifier", "setTarget")
    page.get_by_label("Synchronous", exact=True).check()
    page.get_by_role("button", name="Add input parameter").click()
    param = page.locator("dialog .param-row").first
    param.locator("input[name=param-name]").first.fill("Target")
    param.locator("input[name=param-identifier]").first.fill("target")
    param.locator("select[name=type]").first.select_option("struct")
    for ident, kind in (("value", "int32"), ("note", "text")):
        param.get_by_role("button", name="Add member").click()
        member = param.locator(".param-row").last
        member.locator("input[name=param-name]").fill(ident.title())
        member.locator("input[name=param-identifier]").fill(ident)
        member.locator("select[name=type]").select_option(kind)
    page.click("dialog button[type=submit]")
    page.wait_for_selector("dialog", state="detached")

    # an array property, then edited; a module with its own property
    page.click("#add-property")
    page.fill("#feature-name", "Samples")
    page.fill("#feature-identifier", "samples")
    page.select_option("#dt-type", "array")
    page.fill("#dt-size", "10")
    page.select_option("#dt-item-type", "double")
    page.click("dialog button[type=submit]")
    page.wait_for_selector("dialog", state="detached")
    page.get_by_role("button", name="Edit samples").click()
    page.fill("#dt-size", "600")
    page.click("dialog button[type=submit]")
    assert "1 to 512" in page.inner_text("#dt-size-error")
    page.fill("#dt-size", "20")
    page.click("dialog button[type=submit]")
    page.wait_for_selector("dialog", state="detached")
    page.click("#add-module")
    page.fill("#module-name", "Battery")
    page.fill("#module-identifier", "battery")
    page.click("dialog button[type=submit]")
    page.wait_for_selector("button[aria-pressed=true]:has-text('Battery')")
    add_number_property(page, "Charge", "charge", "0", "100", "%")
    page.get_by_role("button", name="Default module").click()
    page.get_by_role("button", name="Delete overheat").click()
    page.click("dialog button[type=submit]")
    page.wait_for_selector("text=Event overheat deleted")

    with server.admin() as c:
        draft = c.get(f"/api/v1/products/{pk}/thing-model").json()
    assert draft["events"] == []
    [service] = draft["services"]
    assert service["callType"] == "sync"
    members = service["inputData"][0]["dataType"]
    assert members["type"] == "struct" and [m["identifier"] for m in members["specs"]] == ["value", "note"]
    [samples] = draft["properties"]
    assert samples["dataType"] == {"type": "array", "specs": {"size": 20, "item": {"type": "double", "specs": {}}}}
    [battery] = draft["modules"]
    assert battery["identifier"] == "battery" and battery["properties"][0]["dataType"]["specs"]["max"] == 100

    # import: a broken file is refused with the server's reason under the field; a vendor file replaces the draft
    page.click("#tab-io")
    page.set_input_files(
        "#import-file",
        files=[{"name": "bad.json", "mimeType": "application/json", "buffer": b'{"properties": [{"identifier": 5}]}'}],
    )
    page.click("#import-submit")
    page.wait_for_selector("#import-file[aria-invalid=true]")
    assert "properties[0]" in page.inner_text("#import-file-error")
    fixture = Path(__file__).parent / "fixtures" / "models" / "alibaba_th_collector.json"
    page.set_input_files("#import-file", str(fixture))
    page.click("#import-submit")
    page.wait_for_selector("text=Imported 2 properties")
    page.click("#tab-model")
    page.wait_for_selector("code:has-text('humidity')")
    with server.admin() as c:
        draft = c.get(f"/api/v1/products/{pk}/thing-model").json()
    assert [p["identifier"] for p in draft["properties"]] == ["temperature", "humidity"]
    assert draft["modules"] == []


class Receiver(BaseHTTPRequestHandler):
    """A webhook endpoint: /ok takes every message, /fail refuses it."""

    received: list[bytes] = []  # noqa: RUF012 - shared by the handler instances of one test

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/ok":
            Receiver.received.append(body)
        self.send_response(200 if self.path == "/ok" else 500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_forwarding_page_shows_counters_and_dead_letters(page: Any, tmp_path: Path) -> None:
    srv = ServerProcess(
        tmp_path / "fwd",
        "--forward-dead-letter-after-s",
        "0.3",
        "--forward-retry-initial-s",
        "0.1",
        "--forward-retry-max-s",
        "0.2",
    ).start()
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{hook.server_address[1]}"
    try:
        with srv.admin() as c:
            admin = Admin(c)
            if c.get("/api/v1/rules").status_code == 404:  # a build without forwarding: the page says so
                sign_in(page, srv)
                page.click("a[href='#/forwarding']")
                page.wait_for_selector("#forwarding-unavailable")
                return
            pk = admin.product(SEED_MODEL)
            dev = admin.device(pk, "fwd-01")
            rule = c.post(
                "/api/v1/rules",
                json={
                    "name": "to-webhooks",
                    "source": "property",
                    "productKey": pk,
                    "where": "temperature > 0",
                    "targets": [{"type": "webhook", "url": f"{base}/ok"}, {"type": "webhook", "url": f"{base}/fail"}],
                },
            )
            assert rule.status_code == 201, rule.text
            device = Device(srv, pk, "fwd-01", dev["deviceSecret"])
            for t in (21, 22):
                assert device.report({"temperature": t, "humidity": 40})["code"] == 0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                [good, bad] = c.get("/api/v1/rules").json()["items"][0]["targets"]
                if (good["stats"] or {}).get("delivered") == 2 and (bad["stats"] or {}).get("deadLettered") == 2:
                    break
                time.sleep(0.2)
            assert good["stats"]["delivered"] == 2 and bad["stats"]["deadLettered"] == 2, (good, bad)
        assert len(Receiver.received) == 2

        sign_in(page, srv)
        page.click("a[href='#/forwarding']")
        page.wait_for_selector("text=to-webhooks")
        targets = page.locator(".target")
        assert targets.nth(0).locator("[data-counter=delivered] strong").inner_text() == "2"
        assert targets.nth(1).locator("[data-counter=deadLettered] strong").inner_text() == "2"
        dead_rows = page.locator("section:has(h2:text('Dead letters')) tbody tr")
        dead_rows.first.wait_for()
        assert dead_rows.count() == 2 and "fwd-01" in dead_rows.nth(0).inner_text()
        shot(page, "13-forwarding")
    finally:
        hook.shutdown()
        srv.stop()
