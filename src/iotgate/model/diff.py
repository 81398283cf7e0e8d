"""Differences between two thing-model versions."""

from __future__ import annotations

from typing import Any

from .types import DEFAULT_MODULE, Event, Module, Property, Service, ThingModel

__all__ = ["diff_models"]


def _features(props: list[Property], events: list[Event], services: list[Service]) -> list[tuple[str, str, Any]]:
    out: list[tuple[str, str, Any]] = [("property", p.identifier, p) for p in props]
    out += [("event", e.identifier, e) for e in events]
    out += [("service", s.identifier, s) for s in services]
    return out


def _full(module: str, ident: str) -> str:
    return ident if module == DEFAULT_MODULE else f"{module}:{ident}"


def _module_meta(m: Module) -> tuple[str, str, object]:
    return (m.name, m.description, m.extensions)


def _diff_block(
    module: str, old: list[tuple[str, str, Any]], new: list[tuple[str, str, Any]], out: list[dict[str, str]]
) -> None:
    old_map = {(k, i): d for k, i, d in old}
    new_map = {(k, i): d for k, i, d in new}
    for k, i, d in old:
        if (k, i) not in new_map:
            out.append({"change": "removed", "kind": k, "identifier": _full(module, i)})
        elif new_map[(k, i)] != d:
            out.append({"change": "changed", "kind": k, "identifier": _full(module, i)})
    for k, i, _d in new:
        if (k, i) not in old_map:
            out.append({"change": "added", "kind": k, "identifier": _full(module, i)})


def diff_models(old: ThingModel, new: ThingModel) -> list[dict[str, str]]:
    """List the changes from ``old`` to ``new``.

    Each entry is ``{"change": "added"|"removed"|"changed", "kind": "property"|"event"|"service"|"module",
    "identifier": ...}``; identifiers are full (``"mod:id"``, bare for the default module, the module id for
    ``kind == "module"``). Features of an added/removed module are reported individually too. A feature that
    moves between properties/events/services is reported as removed + added.
    """
    out: list[dict[str, str]] = []
    _diff_block(
        DEFAULT_MODULE,
        _features(old.properties, old.events, old.services),
        _features(new.properties, new.events, new.services),
        out,
    )
    old_mods = {m.identifier: m for m in old.modules}
    new_mods = {m.identifier: m for m in new.modules}
    for m in old.modules:
        n = new_mods.get(m.identifier)
        if n is None:
            out.append({"change": "removed", "kind": "module", "identifier": m.identifier})
            _diff_block(m.identifier, _features(m.properties, m.events, m.services), [], out)
            continue
        if _module_meta(m) != _module_meta(n):
            out.append({"change": "changed", "kind": "module", "identifier": m.identifier})
        _diff_block(
            m.identifier,
            _features(m.properties, m.events, m.services),
            _features(n.properties, n.events, n.services),
            out,
        )
    for n in new.modules:
        if n.identifier not in old_mods:
            out.append({"change": "added", "kind": "module", "identifier": n.identifier})
            _diff_block(n.identifier, [], _features(n.properties, n.events, n.services), out)
    return out
