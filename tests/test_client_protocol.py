"""The SDK's sans-IO core, fed the vendors' documented and captured responses (protocols.md), plus the
signing vectors of docs/devices.md. Flows are driven by a scripted driver: no sockets, a fake clock."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from iotgate.auth.signing import alink_auth_body, iotda_password
from iotgate.client import AlinkError, DeviceConnectionError, GatewayBatchError, IotdaError, RetryPolicy
from iotgate.client.protocol import (
    AlinkSession,
    Authenticate,
    Flow,
    HttpRequest,
    HttpResponse,
    IotdaSession,
    Sleep,
    TransportFailure,
    iotda_event_time,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "devices.md"
SECRET = "SECRET0123456789abcdefSECRET0123"
LINK_SDK_AUTH = (  # the body Link SDK C 4.1.0 sent (protocols.md §1.2)
    b'{"clientId":"a1TestPK001.dev01","signmethod":"hmacsha256","deviceName":"dev01","productKey":"a1TestPK001",'
    b'"sign":"E891480434B2FBFF73176B9781114F4331C402B5DE01196146E5DD7494007EB5"}'
)
TOKEN_EXPIRED = b'{"code":20001,"info":{"messageId":1207967842654323713},"message":"token is expired"}'  # §1.3
ALINK_OK = b'{"code":0,"message":"success","info":{"messageId":892687627916247040}}'  # §1.3, > 2**53
ALINK_TOKEN = b'{"code":0,"message":"success","info":{"token":"6944e5bfb92e4d4ea3918d1eda3942f6"}}'  # §1.2
IOTDA_TOKEN = b'{"access_token":"d144a524-1997-4b99-94bf-f27128da8a34","expires_in":86399}'  # §2.2
IOTDA_BAD_TOKEN = b'{"error_code":"IOTDA.000004","error_msg":"Invalid access token."}'


class Script:
    """A driver with canned replies: records every step, answers requests in order."""

    def __init__(self, session: AlinkSession | IotdaSession, replies: list[HttpResponse | TransportFailure]) -> None:
        self.session = session
        self.replies = list(replies)
        self.requests: list[HttpRequest] = []
        self.sleeps: list[float] = []
        self.auth_reasons: list[str] = []

    def run(self, flow: Flow[Any]) -> Any:
        reply: Any = None
        while True:
            try:
                step = flow.send(reply)
            except StopIteration as done:
                return done.value
            if isinstance(step, HttpRequest):
                self.requests.append(step)
                reply = self.replies.pop(0)
            elif isinstance(step, Sleep):
                self.sleeps.append(step.seconds)
                reply = None
            else:
                assert isinstance(step, Authenticate)
                self.auth_reasons.append(step.reason)
                if self.session.token_due():
                    self.run(self.session.auth_flow(step.reason))
                reply = None


def ok(body: bytes = b"") -> HttpResponse:
    return HttpResponse(200, body)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- signing ---------------------------------------------------------------------------------------
def doc_vectors() -> list[tuple[str, str, str, str, str]]:
    rows = []
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| (alink|iotda) \| (\w+) \| `([^`]*)` \| `([^`]*)` \| `([0-9a-f]+)` \|$", line)
        if m:
            rows.append((m[1], m[2], m[3], m[4], m[5]))
    return rows


def test_docs_signing_vectors_are_right() -> None:
    rows = doc_vectors()
    assert len(rows) == 6  # the table in docs/devices.md, parsed; a malformed row would go missing here
    for scheme, alg, key, message, expected in rows:
        digest = {"hmacsha256": hashlib.sha256, "hmacsha1": hashlib.sha1, "hmacmd5": hashlib.md5}[alg]
        assert hmac.new(key.encode(), message.encode(), digest).hexdigest() == expected, (scheme, alg, message)
        if scheme == "iotda":
            assert iotda_password(message, key) == expected
        else:
            ts = message.partition("timestamp")[2]
            body = alink_auth_body("a1TestPK001", "dev01", key, sign_method=alg, timestamp_ms=int(ts) if ts else None)
            assert body["sign"] == expected


def test_alink_auth_request_matches_link_sdk_c() -> None:
    session = AlinkSession("a1TestPK001", "dev01", SECRET)
    script = Script(session, [ok(ALINK_TOKEN)])
    assert script.run(session.auth_flow()) == "6944e5bfb92e4d4ea3918d1eda3942f6"
    [request] = script.requests
    assert request.path == "/auth" and request.headers["Content-Type"] == "application/json"
    sent, real = json.loads(request.body), json.loads(LINK_SDK_AUTH)
    assert sent.pop("sign") == real.pop("sign").lower()
    assert sent == real


def test_iotda_auth_request_is_keyed_by_the_hour() -> None:
    at = datetime(2024, 6, 26, 2, 59, 59, tzinfo=UTC).timestamp()
    session = IotdaSession("pk_dev", "mySecret123", sign_type=1, wall_clock=lambda: at)
    script = Script(session, [ok(IOTDA_TOKEN)])
    script.run(session.auth_flow())
    assert json.loads(script.requests[0].body) == {
        "device_id": "pk_dev",
        "sign_type": 1,
        "timestamp": "2024062602",
        "password": "62848cf541323e6b5040779ffde6dcf230d6bfd7b3469695f0822fc5729e95fe",
    }


# -- tokens ----------------------------------------------------------------------------------------
def test_alink_expired_token_captured_from_link_sdk_is_renewed_and_the_report_resent() -> None:
    session = AlinkSession("a1TestPK001", "dev01", SECRET)
    script = Script(session, [ok(ALINK_TOKEN), ok(TOKEN_EXPIRED), ok(ALINK_TOKEN), ok(ALINK_OK)])
    assert script.run(session.post_properties({"LightSwitch": 0})) == 892687627916247040
    paths = [r.path for r in script.requests]
    assert paths == ["/auth", "/topic/sys/a1TestPK001/dev01/thing/event/property/post", "/auth", paths[1]]
    assert script.requests[1].body == script.requests[3].body  # the same message, not a new one
    assert script.requests[3].headers["password"] == "6944e5bfb92e4d4ea3918d1eda3942f6"
    assert script.auth_reasons == ["initial", "rejected"]
    assert (session.stats.auths, session.stats.reauths, session.stats.token_rejections) == (2, 1, 1)


def test_alink_gives_up_when_a_fresh_token_is_refused_too() -> None:
    session = AlinkSession("pk", "dn", "s")
    refused = ok(b'{"code":20003,"message":"check token error"}')
    script = Script(session, [ok(ALINK_TOKEN), refused, ok(ALINK_TOKEN), refused])
    with pytest.raises(AlinkError) as exc:
        script.run(session.publish("/pk/dn/user/x", b"1"))
    assert exc.value.code == 20003 and exc.value.token_invalid and len(script.requests) == 4


def test_alink_auth_answered_200_without_token_is_an_auth_error() -> None:
    # The real service answers a wrong secret with HTTP 200 and a body without a token (protocols.md §1.2).
    session = AlinkSession("pk", "dn", "wrong")
    for body in (b'{"code":0,"message":"success","info":{}}', b'{"code":20000,"message":"auth check error"}'):
        with pytest.raises(AlinkError) as exc:
            Script(session, [ok(body)]).run(session.auth_flow())
        assert exc.value.code == 20000 and exc.value.auth_failed and session.token is None


def test_alink_token_is_renewed_before_the_configured_lifetime_ends() -> None:
    clock = Clock()
    session = AlinkSession("pk", "dn", "s", token_ttl_s=7 * 24 * 3600, clock=clock)
    script = Script(session, [ok(ALINK_TOKEN), ok(ALINK_OK)])
    script.run(session.post_properties({"t": 1}))
    clock.now += 7 * 24 * 3600 - 301  # more than the 5-minute margin left
    assert not session.token_due()
    clock.now += 2
    assert session.token_due()
    script.replies += [ok(ALINK_TOKEN), ok(ALINK_OK)]
    script.run(session.post_properties({"t": 2}))
    assert script.auth_reasons == ["initial", "renew"] and session.stats.renewals == 1


def test_iotda_renews_ahead_of_expires_in() -> None:
    clock = Clock()
    session = IotdaSession("pk_dev", "s", clock=clock)
    script = Script(session, [ok(IOTDA_TOKEN), ok()])
    script.run(session.report_properties("default", {"t": 1}))
    assert session.expires_in() == 86399
    clock.now += 86399 - 300.5
    assert not session.token_due()
    clock.now += 1
    script.replies += [ok(IOTDA_TOKEN), ok()]
    script.run(session.report_properties("default", {"t": 2}))
    assert script.auth_reasons == ["initial", "renew"]
    assert script.requests[-1].headers["access_token"] == "d144a524-1997-4b99-94bf-f27128da8a34"


def test_short_lifetimes_renew_at_ten_percent() -> None:
    clock = Clock()
    session = IotdaSession("pk_dev", "s", clock=clock)
    Script(session, [ok(b'{"access_token":"t","expires_in":2}')]).run(session.auth_flow())
    clock.now += 1.79
    assert not session.token_due()
    clock.now += 0.02
    assert session.token_due()


def test_iotda_invalid_token_then_success_and_then_twice() -> None:
    session = IotdaSession("pk_dev", "s")
    bad = HttpResponse(403, IOTDA_BAD_TOKEN)
    script = Script(session, [ok(IOTDA_TOKEN), bad, ok(IOTDA_TOKEN), ok()])
    script.run(session.send_message("hi"))
    assert session.stats.reauths == 1
    script.replies += [bad, ok(IOTDA_TOKEN), bad]
    with pytest.raises(IotdaError) as exc:
        script.run(session.send_message("again"))
    assert (exc.value.code, exc.value.status, exc.value.message) == ("IOTDA.000004", 403, "Invalid access token.")


def test_iotda_rate_limit_403_is_not_mistaken_for_a_token_error() -> None:
    session = IotdaSession("pk_dev", "s")
    limited = HttpResponse(403, b'{"error_code":"IOTDA.021101","error_msg":"Request reached the maximum rate limit."}')
    script = Script(session, [ok(IOTDA_TOKEN), limited])
    with pytest.raises(IotdaError) as exc:
        script.run(session.report_properties("default", {"t": 1}))
    assert exc.value.rate_limited and session.stats.token_rejections == 0 and len(script.requests) == 2


# -- retries ---------------------------------------------------------------------------------------
def test_network_failures_are_retried_with_bounded_exponential_backoff() -> None:
    session = AlinkSession("pk", "dn", "s", retry=RetryPolicy(retries=3, backoff_s=0.2, max_backoff_s=0.5))
    down = TransportFailure("ConnectError: refused")
    script = Script(session, [down, down, down, ok(ALINK_TOKEN)])
    script.run(session.auth_flow())
    assert len(script.sleeps) == 3
    for slept, full in zip(script.sleeps, (0.2, 0.4, 0.5), strict=True):
        assert full / 2 <= slept < full
    script = Script(session, [down] * 4)
    with pytest.raises(DeviceConnectionError) as exc:
        script.run(session.auth_flow())
    assert exc.value.retryable and len(script.requests) == 4 and "after 4 attempts" in str(exc.value)


def test_certificate_failures_are_not_retried() -> None:
    session = IotdaSession("pk_dev", "s")
    script = Script(session, [TransportFailure("certificate did not verify", retryable=False)])
    with pytest.raises(DeviceConnectionError) as exc:
        script.run(session.auth_flow())
    assert not exc.value.retryable and len(script.requests) == 1 and not script.sleeps


@pytest.mark.parametrize(
    ("make", "unavailable", "check"),
    [
        (
            lambda: IotdaSession("pk_dev", "s", retry=RetryPolicy(backoff_s=0)),
            HttpResponse(503, b'{"error_code":"IOTDA.000001","error_msg":"Service temporarily unavailable"}'),
            lambda e: isinstance(e, IotdaError) and e.code == "IOTDA.000001" and e.status == 503,
        ),
        (
            lambda: AlinkSession("pk", "dn", "s", retry=RetryPolicy(backoff_s=0)),
            HttpResponse(503, b'{"code":10000,"message":"common error: server unavailable"}'),
            lambda e: isinstance(e, AlinkError) and e.code == 10000,
        ),
    ],
)
def test_unavailable_server_is_retried_then_reported(
    make: Callable[[], AlinkSession | IotdaSession], unavailable: HttpResponse, check: Callable[[Exception], bool]
) -> None:
    session = make()
    token = ALINK_TOKEN if isinstance(session, AlinkSession) else IOTDA_TOKEN
    script = Script(session, [unavailable, ok(token)])
    script.run(session.auth_flow())
    assert session.stats.retries == 1
    script = Script(session, [unavailable] * 4)
    with pytest.raises(Exception) as exc:
        script.run(session.auth_flow())
    assert check(exc.value) and len(script.requests) == 4


def test_non_vendor_answers_become_typed_errors() -> None:
    alink = AlinkSession("pk", "dn", "s")
    with pytest.raises(AlinkError) as a:
        Script(alink, [HttpResponse(502, b"<html>Bad Gateway</html>")] * 4).run(alink.auth_flow())
    assert a.value.code == 10000 and a.value.status == 502 and "Bad Gateway" in a.value.message
    iotda = IotdaSession("pk_dev", "s")
    with pytest.raises(IotdaError) as h:
        Script(iotda, [HttpResponse(418, b"teapot")]).run(iotda.auth_flow())
    assert (h.value.code, h.value.status) == ("HTTP.418", 418)


# -- payloads --------------------------------------------------------------------------------------
def test_alink_payloads() -> None:
    session = AlinkSession("pk", "dn", "s")
    short = json.loads(session.property_payload({"Power": "on", "WF": 23.6}))
    assert short["params"] == {"Power": "on", "WF": 23.6} and short["method"] == "thing.event.property.post"
    assert short["version"] == "1.0" and short["id"] == "1"
    at = datetime(2018, 4, 23, 1, 58, 42, tzinfo=UTC)
    long = json.loads(session.property_payload({"WF": 10.0}, at))
    assert long["params"] == {"WF": {"value": 10.0, "time": 1524448722000}} and long["id"] == "2"
    assert b'"value":10.0' in session.property_payload({"WF": 10.0}, at)  # floats keep their decimal
    event = json.loads(session.event_payload("alarm", {"Power": "on"}, 1524448722000))
    assert event["params"] == {"value": {"Power": "on"}, "time": 1524448722000}
    assert event["method"] == "thing.event.alarm.post"
    with pytest.raises(ValueError):
        session.publish("no-leading-slash", b"")


def test_iotda_event_times() -> None:
    assert iotda_event_time(datetime(2021, 8, 13, 10, 10, 10, 555000, tzinfo=UTC)) == "2021-08-13T10:10:10.555Z"
    assert iotda_event_time(1628849410555) == "2021-08-13T10:10:10.555Z"
    assert iotda_event_time("20210813T101010Z") == "20210813T101010Z"
    assert iotda_event_time(None) is None


def test_gateway_batches_are_split_in_fifties_and_a_failed_chunk_says_what_was_stored() -> None:
    session = IotdaSession("gw_1", "s")
    entries = [
        {"device_id": f"pk_{i}", "services": [{"service_id": "default", "properties": {"t": i}}]} for i in range(120)
    ]
    script = Script(session, [ok(IOTDA_TOKEN), ok(), ok(), ok()])
    assert script.run(session.report_sub_properties(entries)) == [50, 50, 20]
    bodies = [json.loads(r.body)["devices"] for r in script.requests[1:]]
    assert [len(b) for b in bodies] == [50, 50, 20] and [d for b in bodies for d in b] == entries
    assert all(r.path == "/v5/devices/gw_1/sys/gateway/sub-devices/properties/report" for r in script.requests[1:])

    foreign = HttpResponse(400, b'{"error_code":"IOTDA.021104","error_msg":"Subdevices ... gateway."}')
    script = Script(session, [ok(), foreign])
    with pytest.raises(GatewayBatchError) as exc:
        script.run(session.report_sub_properties(entries))
    assert (exc.value.code, exc.value.accepted, exc.value.chunk) == ("IOTDA.021104", 50, 1)
    with pytest.raises(ValueError):
        session.report_sub_properties(entries, chunk_size=51)
