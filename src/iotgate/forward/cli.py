"""`iotgate rule ...`: forwarding rules over a running server's management API.

    iotgate rule create --name hot --source property --product-key a1B2c3D4e5F \\
        --where "temperature > 40" --webhook https://example.com/hook --secret s3cret
    iotgate rule create --file rule.json
    iotgate rule list | show ID | update ID ... | enable ID | disable ID | delete ID
    iotgate rule stats ID
    iotgate rule dead-letters ID [--target T]
    iotgate rule replay ID [--target T] [--id N ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from iotgate import cli

RULE_COLUMNS = ["id", "name", "source", "productKey", "format", "enabled", "where", "targets"]
STAT_COLUMNS = [
    "targetId",
    "type",
    "matched",
    "filteredOut",
    "delivered",
    "deadLettered",
    "inFlight",
    "queued",
    "redelivered",
    "failing",
    "lastError",
]
DEAD_COLUMNS = ["id", "targetId", "deadAt", "productKey", "deviceName", "source", "tries", "lastError"]


def _targets(args: argparse.Namespace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for raw in args.target or []:
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise cli.CliError(f"--target must be a JSON object: {exc}") from None
        if not isinstance(doc, dict):
            raise cli.CliError("--target must be a JSON object")
        out.append(doc)
    for url in args.webhook or []:
        hook: dict[str, Any] = {"type": "webhook", "url": url}
        if args.secret:
            hook["secret"] = args.secret
        out.append(hook)
    for url in args.mqtt or []:
        if not args.topic:
            raise cli.CliError("--mqtt needs --topic (e.g. 'iotgate/{productKey}/{deviceName}')")
        out.append({"type": "mqtt", "url": url, "topic": args.topic})
    return out


def rule_body(args: argparse.Namespace, creating: bool) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.file:
        doc = json.loads(Path(args.file).read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise cli.CliError(f"{args.file}: expected a JSON object (a rule)")
        body.update(doc)
    for flag, field in (("name", "name"), ("source", "source"), ("product_key", "productKey"), ("format", "format")):
        value = getattr(args, flag)
        if value is not None:
            body[field] = value
    if args.where is not None:
        body["where"] = args.where or None
    targets = _targets(args)
    if targets:
        body["targets"] = targets
    if creating and "source" not in body:
        body["source"] = "property"
    return body


def _summary(rule: dict[str, Any]) -> dict[str, Any]:
    targets = ", ".join(
        f"{t['id']}:{t['type']} {t.get('url', '')}".strip() + (f" {t['topic']}" if t.get("topic") else "")
        for t in rule.get("targets", [])
    )
    return {**rule, "targets": targets}


def rule_cmd(args: argparse.Namespace) -> None:
    try:
        _rule_cmd(args)
    except cli.CliError as exc:  # also when run as `python -m iotgate.cli` (a second copy of the module)
        cli.err.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


def _rule_cmd(args: argparse.Namespace) -> None:
    api = cli.AdminClient(args)
    verb = args.verb
    one = f"/api/v1/rules/{getattr(args, 'rule_id', '')}"
    if verb == "create":
        cli.show_record(args, api.call("POST", "/api/v1/rules", json=rule_body(args, True)))
    elif verb == "update":
        body = rule_body(args, False)
        if not body:
            raise cli.CliError("nothing to change: give --name, --where, --target, --file, ...")
        cli.show_record(args, api.call("PATCH", one, json=body))
    elif verb in ("enable", "disable"):
        cli.show_record(args, api.call("PATCH", one, json={"enabled": verb == "enable"}))
    elif verb == "list":
        data = api.call("GET", "/api/v1/rules")
        if args.json:
            cli.output(args, data)
        else:
            cli.output(args, {**data, "items": [_summary(r) for r in data["items"]]}, RULE_COLUMNS)
    elif verb == "show":
        cli.show_record(args, api.call("GET", one))
    elif verb == "delete":
        api.call("DELETE", one)
        cli.console.print(f"deleted rule {args.rule_id}")
    elif verb == "stats":
        data = api.call("GET", f"{one}/stats")
        if args.json:
            cli.output(args, data)
            return
        cli.output(args, {"items": data["targets"]}, STAT_COLUMNS, title=f"rule {data['ruleId']} ({data['name']})")
        totals = ", ".join(f"{k} {data[k]}" for k in ("matched", "filteredOut", "delivered", "deadLettered"))
        cli.console.print(f"total: {totals}, in flight {data['inFlight']}, queued {data['queued']}")
    elif verb == "dead-letters":
        params: dict[str, Any] = {"limit": args.limit, "after": args.after}
        if args.target is not None:
            params["target"] = args.target
        cli.output(args, api.call("GET", f"{one}/dead-letters", params=params), DEAD_COLUMNS)
    elif verb == "replay":
        which: dict[str, Any] = {}
        if args.target is not None:
            which["target"] = args.target
        if args.ids:
            which["ids"] = args.ids
        result = api.call("POST", f"{one}/dead-letters:replay", json=which)
        if args.json:
            cli.output(args, result)
        else:
            cli.console.print(f"replayed {result['replayed']} dead letter(s) of rule {args.rule_id}")


def _rule_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", help="the rule as a JSON document (flags override its fields)")
    p.add_argument("--name", required=False)
    p.add_argument("--source", choices=["property", "event", "message", "lifecycle"])
    p.add_argument("--product-key", dest="product_key", help="only this product (default: all)")
    p.add_argument("--where", help="filter, e.g. \"temperature > 40 AND deviceName LIKE 'hall-%%'\" ('' removes it)")
    p.add_argument("--format", choices=["iotgate", "alibaba", "huawei"])
    p.add_argument("--target", action="append", help="a target as JSON (repeatable); see docs/forwarding.md")
    p.add_argument("--webhook", action="append", help="shorthand: a webhook target with this URL (repeatable)")
    p.add_argument("--secret", help="HMAC-SHA256 signing secret for --webhook targets")
    p.add_argument("--mqtt", action="append", help="shorthand: an MQTT target, e.g. mqtt://127.0.0.1:1883")
    p.add_argument("--topic", help="topic template for --mqtt, e.g. 'iotgate/{productKey}/{deviceName}'")


def register(subparsers: Any) -> None:
    """Hook `iotgate rule` into the CLI (called by `iotgate.cli._extra_commands`)."""
    rule = subparsers.add_parser("rule", help="manage forwarding rules").add_subparsers(dest="verb", required=True)
    p = rule.add_parser("create", help="create a rule (see docs/forwarding.md)")
    _rule_flags(p)
    p = rule.add_parser("update", help="change a rule; targets given replace the rule's targets")
    p.add_argument("rule_id", type=int)
    _rule_flags(p)
    rule.add_parser("list", help="rules with their targets")
    for verb in ("show", "delete", "enable", "disable", "stats"):
        rule.add_parser(verb).add_argument("rule_id", type=int)
    p = rule.add_parser("dead-letters", help="messages a target could not take")
    p.add_argument("rule_id", type=int)
    p.add_argument("--target", type=int, help="only this target id")
    p.add_argument("--after", type=int, default=0, help="dead-letter id to continue after")
    p.add_argument("--limit", type=int, default=100)
    p = rule.add_parser("replay", help="move dead letters back into the outbox for delivery")
    p.add_argument("rule_id", type=int)
    p.add_argument("--target", type=int, help="only this target id")
    p.add_argument("--id", dest="ids", type=int, action="append", help="only this dead letter (repeatable)")
    for p in rule.choices.values():
        cli.add_client_flags(p)
        p.set_defaults(func=rule_cmd)
