"""Forwarding rules under /api/v1/rules (docs/forwarding.md): CRUD, counters, dead letters, replay."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from iotgate.admin.api import MAX_PAGE, body_object, int_param, json
from iotgate.admin.errors import ApiError
from iotgate.forward.rows import DeadLetterRow

if TYPE_CHECKING:
    from iotgate.forward.engine import Forwarder


def forwarder(request: Request) -> Forwarder:
    engine: Forwarder | None = getattr(request.app.state.platform, "forwarder", None)
    if engine is None:
        raise ApiError(503, "unavailable", "forwarding is not running on this server")
    return engine


def rule_id(request: Request) -> int:
    raw = request.path_params["rule_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(404, "not_found", f"rule {raw!r} not found")
    return int(raw)


async def create_rule(request: Request) -> Response:
    return json(await forwarder(request).create_rule(await body_object(request)), 201)


async def list_rules(request: Request) -> Response:
    engine = forwarder(request)
    rules = await engine.list_rules()
    stats = {s["targetId"]: s for s in await engine.all_target_stats()}
    for rule in rules:
        for target in rule["targets"]:
            target["stats"] = stats.get(target["id"])
    return json({"items": rules, "total": len(rules)})


async def get_rule(request: Request) -> Response:
    return json(await forwarder(request).get_rule(rule_id(request)))


async def update_rule(request: Request) -> Response:
    return json(await forwarder(request).update_rule(rule_id(request), await body_object(request)))


async def delete_rule(request: Request) -> Response:
    await forwarder(request).delete_rule(rule_id(request))
    return Response(status_code=204)


async def rule_stats(request: Request) -> Response:
    return json(await forwarder(request).stats(rule_id(request)))


def _target_param(request: Request) -> int | None:
    raw = request.query_params.get("target")
    if raw is None or raw == "":
        return None
    return int_param(request, "target", 0, 1)


def dead_letter_json(d: DeadLetterRow) -> dict[str, Any]:
    try:
        body: str = d.body.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(d.body).decode(), "base64"
    return {
        "id": d.id,
        "targetId": d.target_id,
        "messageId": str(d.message_id),
        "productKey": d.product_key,
        "deviceName": d.device_name,
        "source": d.source,
        "identifier": d.identifier,
        "topic": d.topic or None,
        "contentType": d.content_type,
        "body": body,
        "bodyEncoding": encoding,
        "createdAt": d.created_at,
        "deadAt": d.dead_at,
        "tries": d.tries,
        "failures": d.failures,
        "lastError": d.last_error or None,
    }


async def dead_letters(request: Request) -> Response:
    after = int_param(request, "after", 0)
    limit = int_param(request, "limit", 100, 1, MAX_PAGE)
    items = await forwarder(request).dead_letters(rule_id(request), _target_param(request), after, limit)
    nxt = str(items[-1].id) if len(items) == limit else None
    return json({"items": [dead_letter_json(d) for d in items], "next": nxt})


async def replay(request: Request) -> Response:
    """Body (optional): {"target": id, "ids": [dead-letter ids]}; default: all of the rule's dead letters."""
    doc: dict[str, Any] = {}
    if (await request.body()).strip():
        doc = await body_object(request)
    extra = sorted(set(doc) - {"target", "ids"})
    if extra:
        raise ApiError(422, "invalid", f"unknown field(s): {', '.join(extra)}; allowed: ids, target")
    target = doc.get("target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, int) or target < 1):
        raise ApiError(422, "invalid", "target must be a target id", [{"field": "target", "reason": "type"}])
    ids = doc.get("ids")
    if ids is not None:
        if (
            not isinstance(ids, list)
            or len(ids) > MAX_PAGE * 10
            or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in ids)
        ):
            raise ApiError(
                422,
                "invalid",
                "ids must be a list of dead-letter ids (at most 10000)",
                [{"field": "ids", "reason": "type"}],
            )
    if target is None:
        target = _target_param(request)
    count = await forwarder(request).replay(rule_id(request), target, ids)
    return json({"replayed": count})


ROUTES = [
    Route("/api/v1/rules", create_rule, methods=["POST"]),
    Route("/api/v1/rules", list_rules, methods=["GET"]),
    Route("/api/v1/rules/{rule_id}", get_rule, methods=["GET"]),
    Route("/api/v1/rules/{rule_id}", update_rule, methods=["PATCH"]),
    Route("/api/v1/rules/{rule_id}", delete_rule, methods=["DELETE"]),
    Route("/api/v1/rules/{rule_id}/stats", rule_stats, methods=["GET"]),
    Route("/api/v1/rules/{rule_id}/dead-letters", dead_letters, methods=["GET"]),
    Route("/api/v1/rules/{rule_id}/dead-letters:replay", replay, methods=["POST"]),
]
