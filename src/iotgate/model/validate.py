"""Compiled validator: checks reported property values / event parameters against a thing model.

A :class:`CompiledModel` is built once per published model version; every property gets a checker closure
specialised for its data type and specs, so validating a report is a dict lookup plus a few comparisons
per value. Validation never raises on bad input: every problem becomes a :class:`ValidationIssue`.

Normalisation of accepted values: ``bool`` -> int 0/1, ``date`` -> int milliseconds, ``float``/``double``
-> Python float; everything else is returned unchanged (structs/arrays are rebuilt from normalised parts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgspec

from .types import (
    DEFAULT_MODULE,
    TEXT_MAX_LENGTH,
    TYPE_BOUNDS,
    ArraySpecs,
    BoolSpecs,
    DataType,
    EnumSpecs,
    Event,
    NumberSpecs,
    Param,
    Property,
    Service,
    StructSpecs,
    TextSpecs,
    ThingModel,
)

__all__ = ["RULES", "CompiledModel", "ValidationIssue", "validate_properties"]

RULES = frozenset(
    {"unknown", "type", "min", "max", "step", "length", "enum", "size", "required", "member", "item", "time"}
)


class ValidationIssue(msgspec.Struct, frozen=True):
    """One validation problem of one value."""

    identifier: str  # "temperature", "battery:level", "pos.x", "arr[3]"
    rule: str  # one of RULES
    message: str  # "temperature: 60 is above max 50"


class _Invalid:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<invalid>"


INVALID: Any = _Invalid()
Issues = list[ValidationIssue]
#: checker(value, identifier, issues) -> normalised value, or INVALID after appending issue(s)
Checker = Callable[[object, str, Issues], object]


def _show(v: object) -> str:
    """A short, never-raising rendering of an arbitrary value for messages."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if type(v) is int:
        if -(10**30) < v < 10**30:
            return str(v)
        return f"<integer of {v.bit_length()} bits>"
    if type(v) is float:
        return repr(v)
    if type(v) is str:
        return repr(v) if len(v) <= 40 else repr(v[:40]) + "…"
    if isinstance(v, list):
        return f"<array of {len(v)}>"
    if isinstance(v, dict):
        return "<object>"
    return f"<{type(v).__name__}>"


def _kind(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


# --------------------------------------------------------------------------------------------- checkers


def _number_checker(t: str, s: NumberSpecs) -> Checker:
    tlo, thi = TYPE_BOUNDS[t]
    lo, hi, step = s.min, s.max, s.step
    is_int = t in ("int32", "int64")
    want = "an integer" if is_int else "a number"
    base = lo if lo is not None else 0
    exact_step = is_int and isinstance(step, int) and isinstance(base, int)
    tol = 1e-9 * max(1.0, abs(step)) if step is not None else 0.0
    fstep = float(step) if step is not None else 0.0
    fbase = float(base)

    def check(v: object, ident: str, issues: Issues) -> object:
        tv = type(v)
        if tv is int:
            pass
        elif tv is float and not is_int:
            if not math.isfinite(v):  # type: ignore[arg-type]
                issues.append(ValidationIssue(ident, "type", f"{ident}: {_show(v)} is not a finite number"))
                return INVALID
        else:
            issues.append(ValidationIssue(ident, "type", f"{ident}: expected {want}, got {_kind(v)} {_show(v)}"))
            return INVALID
        n: Any = v
        if lo is not None and n < lo:
            issues.append(ValidationIssue(ident, "min", f"{ident}: {_show(n)} is below min {_show(lo)}"))
            return INVALID
        if hi is not None and n > hi:
            issues.append(ValidationIssue(ident, "max", f"{ident}: {_show(n)} is above max {_show(hi)}"))
            return INVALID
        if n < tlo:
            issues.append(ValidationIssue(ident, "min", f"{ident}: {_show(n)} is below the {t} minimum"))
            return INVALID
        if n > thi:
            issues.append(ValidationIssue(ident, "max", f"{ident}: {_show(n)} is above the {t} maximum"))
            return INVALID
        if step is not None:
            if exact_step:
                ok = (n - base) % step == 0
            else:
                d = float(n) - fbase
                if not math.isfinite(d):
                    ok = False
                else:
                    r = math.remainder(d, fstep)
                    ok = abs(r) <= max(tol, abs(d) * 1e-12)
            if not ok:
                issues.append(
                    ValidationIssue(
                        ident,
                        "step",
                        f"{ident}: {_show(n)} is not a multiple of step {_show(step)}"
                        + (f" from min {_show(lo)}" if lo is not None else ""),
                    )
                )
                return INVALID
        return n if is_int else float(n)

    return check


def _text_checker(s: TextSpecs) -> Checker:
    limit = s.length if s.length is not None else TEXT_MAX_LENGTH
    quick = limit // 4

    def check(v: object, ident: str, issues: Issues) -> object:
        if type(v) is not str:
            issues.append(ValidationIssue(ident, "type", f"{ident}: expected a string, got {_kind(v)} {_show(v)}"))
            return INVALID
        if len(v) > quick:
            n = len(v.encode("utf-8", "surrogatepass"))
            if n > limit:
                issues.append(
                    ValidationIssue(ident, "length", f"{ident}: text of {n} bytes is longer than length {limit}")
                )
                return INVALID
        return v

    return check


def _bool_checker(_s: BoolSpecs) -> Checker:
    def check(v: object, ident: str, issues: Issues) -> object:
        if v is True:
            return 1
        if v is False:
            return 0
        if type(v) is int and (v == 0 or v == 1):
            return v
        issues.append(
            ValidationIssue(ident, "type", f"{ident}: expected a bool (0/1 or true/false), got {_kind(v)} {_show(v)}")
        )
        return INVALID

    return check


def _enum_checker(s: EnumSpecs) -> Checker:
    keys = frozenset(s.values)
    int_keys: set[int] = set()
    for k in keys:
        try:
            i = int(k)
        except ValueError:
            continue
        if str(i) == k:
            int_keys.add(i)
    allowed = ", ".join(list(s.values)[:20])

    def check(v: object, ident: str, issues: Issues) -> object:
        tv = type(v)
        if tv is int:
            if v in int_keys:
                return v
        elif tv is str:
            if v in keys:
                return v
        else:
            issues.append(ValidationIssue(ident, "type", f"{ident}: expected an enum value, got {_kind(v)} {_show(v)}"))
            return INVALID
        issues.append(ValidationIssue(ident, "enum", f"{ident}: {_show(v)} is not one of the enum values ({allowed})"))
        return INVALID

    return check


_DATE_MAX = 2**63 - 1


def _date_checker() -> Checker:
    def check(v: object, ident: str, issues: Issues) -> object:
        tv = type(v)
        if tv is int:
            n: Any = v
            if 0 <= n <= _DATE_MAX:
                return n
        elif tv is str:
            sv: Any = v
            if sv.isascii() and sv.isdigit() and len(sv) <= 19:
                n = int(sv)
                if n <= _DATE_MAX:
                    return n
        else:
            issues.append(
                ValidationIssue(ident, "type", f"{ident}: expected a date (UTC ms), got {_kind(v)} {_show(v)}")
            )
            return INVALID
        issues.append(ValidationIssue(ident, "time", f"{ident}: {_show(v)} is not a valid UTC timestamp in ms"))
        return INVALID

    return check


def _struct_checker(s: StructSpecs) -> Checker:
    members: dict[str, Checker] = {m.identifier: compile_data_type(m.data_type) for m in s.members}
    free = not members

    def check(v: object, ident: str, issues: Issues) -> object:
        if not isinstance(v, dict):
            issues.append(ValidationIssue(ident, "type", f"{ident}: expected an object, got {_kind(v)} {_show(v)}"))
            return INVALID
        if free:
            return v
        out: dict[str, object] = {}
        ok = True
        for k, mv in v.items():
            mid = f"{ident}.{k}"
            chk = members.get(k) if type(k) is str else None
            if chk is None:
                issues.append(ValidationIssue(mid, "member", f"{mid}: unknown struct member"))
                ok = False
                continue
            r = chk(mv, mid, issues)
            if r is INVALID:
                ok = False
            else:
                out[k] = r
        return out if ok else INVALID

    return check


def _array_checker(s: ArraySpecs) -> Checker:
    size = s.size
    item = compile_data_type(s.item)

    def check(v: object, ident: str, issues: Issues) -> object:
        if not isinstance(v, list):
            issues.append(ValidationIssue(ident, "type", f"{ident}: expected an array, got {_kind(v)} {_show(v)}"))
            return INVALID
        if len(v) > size:
            issues.append(ValidationIssue(ident, "size", f"{ident}: array of {len(v)} items exceeds size {size}"))
            return INVALID
        out: list[object] = []
        ok = True
        for i, x in enumerate(v):
            r = item(x, f"{ident}[{i}]", issues)
            if r is INVALID:
                ok = False
            else:
                out.append(r)
        return out if ok else INVALID

    return check


def compile_data_type(dt: DataType) -> Checker:
    """Build the checker closure of one data type."""
    s = dt.specs
    if isinstance(s, NumberSpecs):
        return _number_checker(dt.type, s)
    if isinstance(s, TextSpecs):
        return _text_checker(s)
    if isinstance(s, BoolSpecs):
        return _bool_checker(s)
    if isinstance(s, EnumSpecs):
        return _enum_checker(s)
    if isinstance(s, StructSpecs):
        return _struct_checker(s)
    if isinstance(s, ArraySpecs):
        return _array_checker(s)
    return _date_checker()


# --------------------------------------------------------------------------------------------- compiled model


def _full(module: str, ident: str) -> str:
    return ident if module == DEFAULT_MODULE else f"{module}:{ident}"


class _Params:
    __slots__ = ("checkers", "defs")

    def __init__(self, params: list[Param]) -> None:
        self.defs = {p.identifier: p for p in params}
        self.checkers: dict[str, Checker] = {p.identifier: compile_data_type(p.data_type) for p in params}


class CompiledModel:
    """A thing model prepared for fast validation of device reports."""

    def __init__(self, model: ThingModel) -> None:
        self.model = model
        self._props: dict[str, tuple[str, Checker]] = {}
        self._defs: dict[str, Property] = {}
        self._modules: dict[str, dict[str, tuple[str, Checker]]] = {}
        self._events: dict[str, tuple[Event, _Params]] = {}
        self._services: dict[str, tuple[Service, _Params, _Params]] = {}
        self._required: list[tuple[str, str]] = []  # (module, full identifier)
        blocks: list[tuple[str, list[Property], list[Event], list[Service]]] = [
            (DEFAULT_MODULE, model.properties, model.events, model.services)
        ]
        blocks += [(m.identifier, m.properties, m.events, m.services) for m in model.modules]
        for mod, props, events, services in blocks:
            table: dict[str, tuple[str, Checker]] = {}
            for p in props:
                full = _full(mod, p.identifier)
                entry = (full, compile_data_type(p.data_type))
                table[p.identifier] = entry
                self._props[full] = entry
                self._defs[full] = p
                if p.required:
                    self._required.append((mod, full))
            self._modules[mod] = table
            for e in events:
                self._events[_full(mod, e.identifier)] = (e, _Params(e.output_data))
            for sv in services:
                self._services[_full(mod, sv.identifier)] = (
                    sv,
                    _Params(sv.input_data),
                    _Params(sv.output_data),
                )

    # ----------------------------------------------------------------------------------------- lookups

    def module_ids(self) -> set[str]:
        """Identifiers of all modules, including ``"default"``."""
        return set(self._modules)

    def property(self, identifier: str) -> Property | None:
        """The property definition by full identifier (``"temperature"``, ``"battery:level"``)."""
        return self._defs.get(identifier)

    def properties(self) -> list[tuple[str, Property]]:
        """(full identifier, definition) of every property, in model order."""
        return list(self._defs.items())

    def event(self, identifier: str) -> Event | None:
        entry = self._events.get(identifier)
        return entry[0] if entry else None

    def service(self, identifier: str) -> Service | None:
        entry = self._services.get(identifier)
        return entry[0] if entry else None

    # ----------------------------------------------------------------------------------------- validation

    def validate_properties(
        self, values: dict[str, object], module: str | None = None
    ) -> tuple[dict[str, object], list[ValidationIssue]]:
        """Validate a (partial) property report.

        ``module=None``: keys are full identifiers (``"battery:level"``). ``module="battery"`` (a Huawei
        service_id): keys are bare and the returned keys are prefixed; ``"default"`` is the default module.
        Returns the accepted values (normalised, keyed by full identifier) and the issues; valid properties
        are accepted even when others fail.
        """
        issues: list[ValidationIssue] = []
        if module is None:
            table = self._props
            prefix = ""
        else:
            t = self._modules.get(module) if type(module) is str else None
            if t is None:
                m = _show(module) if type(module) is not str else module
                return {}, [ValidationIssue(m, "unknown", f"{m}: unknown module (service_id)")]
            table = t
            prefix = "" if module == DEFAULT_MODULE else module + ":"
        if not isinstance(values, dict):
            where = module or "properties"
            return {}, [ValidationIssue(where, "type", f"{where}: expected an object of property values")]
        accepted: dict[str, object] = {}
        for key, value in values.items():
            entry = table.get(key) if type(key) is str else None
            if entry is None:
                ident = f"{prefix}{key}"
                issues.append(ValidationIssue(ident, "unknown", f"{ident}: unknown property"))
                continue
            full, chk = entry
            r = chk(value, full, issues)
            if r is not INVALID:
                accepted[full] = r
        return accepted, issues

    def missing_required(self, values: dict[str, object], module: str | None = None) -> list[ValidationIssue]:
        """Issues (rule ``required``) for required properties absent from ``values`` (keys as in
        :meth:`validate_properties`; with ``module`` only that module's properties are checked)."""
        out: list[ValidationIssue] = []
        for mod, full in self._required:
            if module is None:
                key = full
            elif mod != module:
                continue
            else:
                key = self._defs[full].identifier
            if key not in values:
                out.append(ValidationIssue(full, "required", f"{full}: required property is missing"))
        return out

    def _validate_params(
        self, where: str, params: _Params, values: object
    ) -> tuple[dict[str, object], list[ValidationIssue]]:
        if not isinstance(values, dict):
            return {}, [ValidationIssue(where, "type", f"{where}: expected an object of parameters")]
        issues: list[ValidationIssue] = []
        accepted: dict[str, object] = {}
        checkers = params.checkers
        for key, value in values.items():
            ident = f"{where}.{key}"
            chk = checkers.get(key) if type(key) is str else None
            if chk is None:
                issues.append(ValidationIssue(ident, "unknown", f"{ident}: unknown parameter"))
                continue
            r = chk(value, ident, issues)
            if r is not INVALID:
                accepted[key] = r
        return accepted, issues

    def validate_event(
        self, identifier: str, params: dict[str, object]
    ) -> tuple[dict[str, object], list[ValidationIssue]]:
        """Validate event parameters against the event's outputData (``identifier`` may be ``"mod:id"``).

        Issue identifiers of parameters are ``"<event>.<param>"``."""
        return self._validate_feature(self._events, "event", 1, identifier, params)

    def validate_service_input(
        self, identifier: str, params: dict[str, object]
    ) -> tuple[dict[str, object], list[ValidationIssue]]:
        """Validate service call parameters against the service's inputData."""
        return self._validate_feature(self._services, "service", 1, identifier, params)

    def validate_service_output(
        self, identifier: str, params: dict[str, object]
    ) -> tuple[dict[str, object], list[ValidationIssue]]:
        """Validate a service reply's data against the service's outputData."""
        return self._validate_feature(self._services, "service", 2, identifier, params)

    def _validate_feature(
        self, table: dict[str, Any], kind: str, which: int, identifier: str, params: dict[str, object]
    ) -> tuple[dict[str, object], list[ValidationIssue]]:
        """Validate params against parameter list `which` of the event or service `identifier`."""
        entry = table.get(identifier) if type(identifier) is str else None
        if entry is None:
            ident = str(identifier) if type(identifier) is str else _show(identifier)
            return {}, [ValidationIssue(ident, "unknown", f"{ident}: unknown {kind}")]
        return self._validate_params(identifier, entry[which], params)


def validate_properties(
    model: CompiledModel, values: dict[str, object], module: str | None = None
) -> tuple[dict[str, object], list[ValidationIssue]]:
    """Functional form of :meth:`CompiledModel.validate_properties`."""
    return model.validate_properties(values, module)
