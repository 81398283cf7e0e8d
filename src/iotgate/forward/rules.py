"""Forwarding rules: validating rule documents, compiling them, and their API representation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iotgate.errors import Invalid
from iotgate.forward.formats import FORMATS, RENDERERS, Renderer
from iotgate.forward.message import SOURCES, ForwardMessage, resolver
from iotgate.forward.rows import ForwardRuleRow, ForwardTargetRow
from iotgate.forward.targets import TargetSpec, masked, parse_target, spec_to_dict, unmask
from iotgate.forward.where import Predicate, WhereError, compile_where

RULE_FIELDS = {"name", "source", "productKey", "where", "format", "targets", "enabled"}
MAX_TARGETS = 16
MAX_NAME = 64


def _invalid(field: str, message: str, **extra: Any) -> Invalid:
    return Invalid(f"{field}: {message}", [{"field": field, "reason": message, **extra}])


def compile_filter(text: str, source: str) -> Predicate | None:
    """The rule's where filter; Invalid (422) naming the position of the first problem."""
    if not text.strip():
        return None
    try:
        return compile_where(text, resolver(source))
    except WhereError as exc:
        raise Invalid(f"where: {exc}", [{"field": "where", "reason": exc.reason, "position": exc.position}]) from None


def parse_rule(doc: dict[str, Any], current: ForwardRuleRow | None = None) -> ForwardRuleRow:
    """A rule from an API document (POST), or `current` changed by one (PATCH: absent fields stay).

    Targets come back with plain secrets; a PATCH may send a stored target back with its `id` and
    *** in place of secrets to keep them. Raises Invalid with the field (and position) at fault."""
    extra = sorted(set(doc) - RULE_FIELDS)
    if extra:
        raise Invalid(
            f"unknown field(s): {', '.join(extra)}; allowed: {', '.join(sorted(RULE_FIELDS))}",
            [{"field": f, "reason": "unknown"} for f in extra],
        )

    def text(name: str, default: str | None) -> str:
        if name not in doc:
            if default is None:
                raise _invalid(name, "is required")
            return default
        value = doc[name]
        if value is None and name in ("productKey", "where"):
            return ""
        if not isinstance(value, str):
            raise _invalid(name, "must be a string")
        return value

    name = text("name", current.name if current else None).strip()
    if not 1 <= len(name) <= MAX_NAME:
        raise _invalid("name", f"must be 1-{MAX_NAME} characters")
    source = text("source", current.source if current else None)
    if source not in SOURCES:
        raise _invalid("source", f"must be one of {', '.join(SOURCES)}")
    product_key = text("productKey", current.product_key if current else "").strip()
    where = text("where", current.where if current else "")
    compile_filter(where, source)
    fmt = text("format", current.format if current else "iotgate")
    if fmt not in FORMATS:
        raise _invalid("format", f"must be one of {', '.join(FORMATS)}")
    enabled = doc.get("enabled", current.enabled if current else True)
    if not isinstance(enabled, bool):
        raise _invalid("enabled", "must be true or false")
    new_targets = "targets" in doc or current is None
    targets = parse_targets(doc.get("targets"), current) if new_targets or current is None else current.targets
    return ForwardRuleRow(
        id=current.id if current else 0,
        name=name,
        source=source,
        product_key=product_key,
        where=where,
        format=fmt,
        enabled=enabled,
        created_at=current.created_at if current else 0,
        targets=targets,
    )


def parse_targets(value: Any, current: ForwardRuleRow | None) -> list[ForwardTargetRow]:
    if not isinstance(value, list) or not value:
        raise _invalid("targets", "must be a non-empty list of targets")
    if len(value) > MAX_TARGETS:
        raise _invalid("targets", f"at most {MAX_TARGETS} targets per rule")
    old = {t.id: t for t in current.targets} if current else {}
    out: list[ForwardTargetRow] = []
    for i, doc in enumerate(value):
        where = f"targets[{i}]"
        target_id = doc.get("id", 0) if isinstance(doc, dict) else 0
        if target_id:
            if isinstance(target_id, bool) or not isinstance(target_id, int) or target_id not in old:
                raise _invalid(f"{where}.id", "is not a target of this rule (omit id to add a target)")
            if any(t.id == target_id for t in out):
                raise _invalid(f"{where}.id", "appears twice")
            doc = unmask(doc, old[target_id].spec)
        try:
            spec = parse_target(doc, where)
        except ValueError as exc:
            raise Invalid(str(exc), [{"field": where, "reason": str(exc)}]) from None
        out.append(ForwardTargetRow(id=target_id or 0, position=i, spec=spec_to_dict(spec)))
    return out


def rule_json(rule: ForwardRuleRow) -> dict[str, Any]:
    """A rule as the API shows it: secrets masked."""
    return {
        "id": rule.id,
        "name": rule.name,
        "source": rule.source,
        "productKey": rule.product_key or None,
        "where": rule.where or None,
        "format": rule.format,
        "enabled": rule.enabled,
        "targets": [{"id": t.id, **masked(t.spec)} for t in rule.targets],
        "createdAt": rule.created_at,
        "updatedAt": rule.updated_at,
    }


class CompiledRule:
    """A stored rule ready for the hot path: source, product, filter, renderer, target ids."""

    __slots__ = ("format", "id", "name", "predicate", "product_key", "render", "row", "source", "specs", "target_ids")

    def __init__(self, row: ForwardRuleRow, specs: dict[int, TargetSpec]) -> None:
        self.row = row
        self.id = row.id
        self.name = row.name
        self.source = row.source
        self.product_key = row.product_key
        self.format = row.format
        self.predicate: Callable[[ForwardMessage], bool | None] | None = compile_filter(row.where, row.source)
        self.render: Renderer = RENDERERS[row.format]
        self.specs = specs
        self.target_ids = [t.id for t in row.targets]
