"""Helpers shared by the vendor importers/exporters.

Every vendor converter works on iotgate JSON dicts (as produced by :func:`model_to_dict`) so that the final
validation is always done by :func:`parse_model`.

Losslessness scheme (both vendors):

* import: vendor fields of an object that have no iotgate equivalent (and differ from the vendor default)
  are kept in ``extensions[<vendor>]`` of the iotgate object;
* export: those fields are written back; iotgate fields the vendor format cannot express are stashed in the
  exported object under ``"extensions": {"iotgate": {<iotgate field>: <value>}}`` (this is iotgate's own
  extension of the vendor formats), together with extensions of *other* vendors. Importing such a document
  restores the stashed values, so ``import(export(model)) == model``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from .types import ModelError, type_name

_INT_RE = re.compile(r"[+-]?\d+")


def obj(v: object, path: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ModelError(f"{path or 'document'}: must be an object, got {type_name(v)}")
    return v


def lst(v: object, path: str) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise ModelError(f"{path}: must be an array, got {type_name(v)}")
    return v


def num_in(v: object, path: str) -> int | float | None:
    """A vendor number: a JSON number or a numeric string (``"-10"``, ``"0.5"``). ``None``/``""`` -> None."""
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        raise ModelError(f"{path}: must be a number, got boolean")
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            raise ModelError(f"{path}: must be a finite number")
        return v
    if isinstance(v, str):
        s = v.strip()
        if _INT_RE.fullmatch(s) and len(s) <= 40:
            return int(s)
        try:
            f = float(s)
        except ValueError:
            raise ModelError(f"{path}: must be a number, got {v!r}") from None
        if not math.isfinite(f):
            raise ModelError(f"{path}: must be a finite number, got {v!r}")
        return f
    raise ModelError(f"{path}: must be a number, got {type_name(v)}")


def int_in(v: object, path: str) -> int | None:
    n = num_in(v, path)
    if n is None:
        return None
    if isinstance(n, float):
        if not n.is_integer():
            raise ModelError(f"{path}: must be an integer, got {v!r}")
        return int(n)
    return n


def num_str(n: int | float) -> str:
    """Number as a vendor spec string without exponent (``0.00001``, ``-10``, ``2.5``)."""
    if isinstance(n, int):
        return str(n)
    return format(Decimal(repr(n)), "f")


def own_fields(o: dict[str, Any], consumed: Iterable[str], defaults: dict[str, Any]) -> dict[str, Any]:
    """Vendor fields of ``o`` that are not mapped and differ from the vendor's default."""
    skip = set(consumed)
    skip.add("extensions")
    out: dict[str, Any] = {}
    for k, v in o.items():
        if k in skip:
            continue
        if k in defaults and defaults[k] == v and type(defaults[k]) is type(v):
            continue
        out[k] = v
    return out


def finish_import(
    result: dict[str, Any],
    vendor: str,
    o: dict[str, Any],
    consumed: Iterable[str],
    defaults: dict[str, Any],
    path: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Attach vendor extensions to an imported iotgate object and apply the ``iotgate`` stash."""
    own = own_fields(o, consumed, defaults)
    if extra:
        own.update(extra)
    exts: dict[str, Any] = {}
    raw = o.get("extensions")
    if raw is not None:
        exts = dict(obj(raw, f"{path}.extensions" if path else "extensions"))
        stash = exts.pop("iotgate", None)
    else:
        stash = None
    if own:
        prev = exts.get(vendor)
        exts[vendor] = {**prev, **own} if isinstance(prev, dict) else own
    if exts:
        result["extensions"] = exts
    else:
        result.pop("extensions", None)
    if isinstance(stash, dict):
        for k, v in stash.items():
            if k != "extensions":
                result[k] = v
            elif v:
                result["extensions"] = v
            else:
                result.pop("extensions", None)
    return result


def finish_export(
    iot: dict[str, Any],
    vendor: str,
    mapped: dict[str, Any],
    defaults: dict[str, Any],
    back: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    own_keys: Iterable[str] = (),
    check_ext: bool = True,
) -> dict[str, Any]:
    """Build a vendor object: defaults < kept vendor fields < mapped fields (``None`` = not set).

    ``back`` re-imports the vendor object; iotgate fields in ``own_keys`` that do not survive are stashed."""
    exts = dict(iot.get("extensions") or {})
    vend = exts.pop(vendor, None)
    out: dict[str, Any] = dict(defaults)
    if isinstance(vend, dict):
        out.update(vend)
    for k, v in mapped.items():
        if v is not None:
            out[k] = v
    if back is not None:
        again = back(out)
        stash = {k: iot[k] for k in own_keys if k in iot and again.get(k) != iot[k]}
        want = iot.get("extensions") or {}
        if check_ext and (again.get("extensions") or {}).get(vendor) != want.get(vendor):
            stash["extensions"] = want or None
        if stash:
            exts["iotgate"] = stash
    if exts:
        out["extensions"] = exts
    return out


def vendor_field(x: dict[str, Any], vendor: str, key: str) -> Any:
    """A kept vendor field of an iotgate object (``None`` if absent)."""
    ext = (x.get("extensions") or {}).get(vendor)
    return ext.get(key) if isinstance(ext, dict) else None


def strip_extensions(x: Any) -> Any:
    """A copy of a vendor document without iotgate's ``extensions`` keys (for strict vendor consoles)."""
    if isinstance(x, dict):
        return {k: strip_extensions(v) for k, v in x.items() if k != "extensions"}
    if isinstance(x, list):
        return [strip_extensions(v) for v in x]
    return x
