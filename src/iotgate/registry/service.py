"""The device registry: products, thing models, devices, credentials and gateway topology.

Like Eclipse Hono's device registry it is the one source of truth the protocol adapters ask.
The hot path reads an in-memory view (`DeviceInfo`, compiled models) that other nodes' changes
reach through the `registry_events` log, polled every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import string
from collections.abc import Callable
from typing import Any

import msgspec

from iotgate.clock import now_ms
from iotgate.errors import Conflict, Invalid, NotFound
from iotgate.model import CompiledModel, ModelError, ThingModel, empty_model, model_to_dict, parse_model
from iotgate.storage.base import DeviceRow, ProductRow, Storage

log = logging.getLogger("iotgate.registry")

ALNUM = string.ascii_letters + string.digits
NODE_TYPES = ("direct", "gateway", "sub-device")
DATA_FORMATS = ("alink-json", "custom")
AUTH_TYPES = ("device-secret",)
PRODUCT_KEY_LEN = 11
DEVICE_NAME_RE = re.compile(r"^[A-Za-z0-9_\-.@:]{4,32}$")
DEVICE_NAME_RULE = "4-32 characters of letters, digits and - _ . @ :"
CACHE_LIMIT = 200_000
SYNC_PAGE = 10_000


def new_product_key() -> str:
    return "".join(secrets.choice(ALNUM) for _ in range(PRODUCT_KEY_LEN))


def new_device_secret() -> str:
    return "".join(secrets.choice(ALNUM) for _ in range(32))


def new_device_name() -> str:
    return "".join(secrets.choice(ALNUM) for _ in range(20))


def device_id_of(product_key: str, device_name: str) -> str:
    """Huawei's identity of a device: `{ProductKey}_{DeviceName}`."""
    return f"{product_key}_{device_name}"


def split_device_id(device_id: str) -> tuple[str, str] | None:
    if len(device_id) <= PRODUCT_KEY_LEN + 1 or device_id[PRODUCT_KEY_LEN] != "_":
        return None
    return device_id[:PRODUCT_KEY_LEN], device_id[PRODUCT_KEY_LEN + 1 :]


class DeviceInfo(msgspec.Struct):
    """What the hot path needs to know of a device (no secret)."""

    id: int
    product_key: str
    device_name: str
    enabled: bool
    generation: int
    gateway_id: int | None
    token_epoch_ms: int

    @property
    def device_id(self) -> str:
        return device_id_of(self.product_key, self.device_name)


def _info(row: DeviceRow) -> DeviceInfo:
    return DeviceInfo(
        row.id,
        row.product_key,
        row.device_name,
        row.enabled,
        row.generation,
        row.gateway_id,
        row.token_epoch_ms,
    )


class Registry:
    def __init__(self, storage: Storage, poll_s: float = 2.0) -> None:
        self.storage = storage
        self.poll_s = poll_s
        self._devices: dict[int, DeviceInfo] = {}
        self._by_name: dict[tuple[str, str], int] = {}
        self._models: dict[str, CompiledModel | None] = {}
        self._products: dict[str, ProductRow | None] = {}
        self._seq = 0
        self._syncs = 0  # bumped whenever changes are applied: a load spanning one may be stale
        self._task: asyncio.Task[None] | None = None
        # called (change, row) after an admin action on this node created, changed or deleted a device
        # (forwarding's lifecycle events); a failing listener is logged and does not undo the change
        self.listeners: list[Callable[[str, DeviceRow], None]] = []

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._seq = await self.storage.last_registry_seq()
        self._task = asyncio.get_running_loop().create_task(self._poll(), name="registry-poll")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.sync()
            except Exception as exc:  # the database may be briefly away; keep serving from memory
                log.warning("registry sync failed: %s", exc)

    async def sync(self) -> None:
        """Apply changes logged by any node since the last sync (all of them, page by page)."""
        while True:
            events = await self.storage.registry_events_since(self._seq, SYNC_PAGE)
            if events:
                self._syncs += 1
            for event in events:
                self._seq = event.seq
                if event.change.startswith("model:"):
                    self._models.pop(event.change[6:], None)
                    continue
                if event.change.startswith("product:"):
                    self._products.pop(event.change[8:], None)
                    continue
                self._forget(event.device_id)
            if len(events) < SYNC_PAGE:
                return

    def _forget(self, device_id: int) -> None:
        info = self._devices.pop(device_id, None)
        if info:
            self._by_name.pop((info.product_key, info.device_name), None)

    def _remember(self, info: DeviceInfo) -> DeviceInfo:
        if len(self._devices) >= CACHE_LIMIT:
            oldest = next(iter(self._devices))
            self._forget(oldest)
        self._devices[info.id] = info
        self._by_name[(info.product_key, info.device_name)] = info.id
        return info

    # -- products -------------------------------------------------------------------------
    async def create_product(
        self, name: str, node_type: str, data_format: str, auth_type: str, description: str = ""
    ) -> ProductRow:
        check_product_fields({"name": name, "node_type": node_type, "data_format": data_format, "auth_type": auth_type})
        at = now_ms()
        for _ in range(5):
            row = ProductRow(
                product_key=new_product_key(),
                name=name,
                node_type=node_type,
                data_format=data_format,
                auth_type=auth_type,
                description=description,
                created_at=at,
                updated_at=at,
            )
            try:
                await self.storage.insert_product(row)
            except Conflict:
                continue
            await self.storage.put_draft(row.product_key, model_to_dict(empty_model()))
            return row
        raise Conflict("could not allocate a unique ProductKey")

    async def product(self, product_key: str) -> ProductRow:
        row = await self.storage.get_product(product_key)
        if row is None:
            raise NotFound(f"product {product_key!r} not found")
        return row

    async def product_cached(self, product_key: str) -> ProductRow | None:
        if product_key not in self._products:
            self._products[product_key] = await self.storage.get_product(product_key)
        return self._products[product_key]

    async def update_product(self, product_key: str, fields: dict[str, Any]) -> ProductRow:
        check_product_fields(fields)
        row = await self.storage.update_product(product_key, fields)
        if row is None:
            raise NotFound(f"product {product_key!r} not found")
        self._products.pop(product_key, None)
        await self.storage.log_registry_event(0, f"product:{product_key}")
        return row

    async def delete_product(self, product_key: str) -> None:
        if not await self.storage.delete_product(product_key):
            raise NotFound(f"product {product_key!r} not found")
        self._products.pop(product_key, None)
        self._models.pop(product_key, None)

    # -- thing models ---------------------------------------------------------------------
    async def draft(self, product_key: str) -> ThingModel:
        await self.product(product_key)
        doc = await self.storage.get_draft(product_key)
        return parse_model(doc) if doc else empty_model()

    async def save_draft(self, product_key: str, model: ThingModel) -> None:
        await self.product(product_key)
        await self.storage.put_draft(product_key, model_to_dict(model))

    async def publish(self, product_key: str) -> int:
        model = await self.draft(product_key)
        version = await self.storage.publish_model(product_key, model_to_dict(model), now_ms())
        self._models[product_key] = CompiledModel(model)
        # tell the other nodes (device_id 0: a product-level event)
        await self.storage.log_registry_event(0, f"model:{product_key}")
        return version

    async def published(self, product_key: str, version: int | None = None) -> tuple[int, ThingModel]:
        await self.product(product_key)
        row = await self.storage.get_model_version(product_key, version)
        if row is None:
            which = "no published version" if version is None else f"no version {version}"
            raise NotFound(f"product {product_key!r} has {which}")
        return row.version, parse_model(row.document)

    async def compiled_model(self, product_key: str) -> CompiledModel | None:
        """The published model the hot path validates against (None: never published)."""
        if product_key in self._models:
            return self._models[product_key]
        row = await self.storage.get_model_version(product_key, None)
        compiled = None
        if row is not None:
            try:
                compiled = CompiledModel(parse_model(row.document))
            except ModelError as exc:  # stored by an older release with other rules
                log.error("published model of %s does not parse: %s", product_key, exc)
        self._models[product_key] = compiled
        return compiled

    # -- devices --------------------------------------------------------------------------
    async def add_devices(self, product_key: str, names: list[str | None]) -> list[DeviceRow]:
        await self.product(product_key)
        at = now_ms()
        rows = []
        seen: set[str] = set()
        for i, name in enumerate(names):
            name = name or new_device_name()
            if not DEVICE_NAME_RE.match(name):
                raise Invalid(
                    f"devices[{i}].deviceName {name!r}: {DEVICE_NAME_RULE}",
                    [{"field": f"devices[{i}].deviceName", "reason": "pattern"}],
                )
            if name in seen:
                raise Conflict(f"deviceName {name!r} appears twice in the request")
            seen.add(name)
            rows.append(
                DeviceRow(
                    id=0,
                    product_key=product_key,
                    device_name=name,
                    secret=new_device_secret(),
                    created_at=at,
                    updated_at=at,
                )
            )
        created = await self.storage.insert_devices(rows)
        self._notify("created", created)
        return created

    async def device(self, product_key: str, device_name: str) -> DeviceRow:
        row = await self.storage.get_device(product_key, device_name)
        if row is None:
            raise NotFound(f"device {product_key}/{device_name} not found")
        return row

    # Hot-path peeks: a cache hit without a coroutine (creating and awaiting one per lookup is a
    # measurable share of a request; a gateway report looks up 50 sub-devices). None: not cached
    # (or, for products and models, cached as absent) - then await the loading method.
    def cached_info(self, device_id: int) -> DeviceInfo | None:
        return self._devices.get(device_id)

    def cached_info_by_name(self, product_key: str, device_name: str) -> DeviceInfo | None:
        device_id = self._by_name.get((product_key, device_name))
        return None if device_id is None else self._devices.get(device_id)

    def cached_product(self, product_key: str) -> ProductRow | None:
        return self._products.get(product_key)

    def cached_model(self, product_key: str) -> CompiledModel | None:
        return self._models.get(product_key)

    async def info(self, device_id: int) -> DeviceInfo | None:
        """Hot path: the cached view of a device, loaded on a miss."""
        info = self._devices.get(device_id)
        if info is not None:
            return info
        syncs = self._syncs
        row = await self.storage.get_device_by_id(device_id)
        return self._loaded(row, syncs)

    async def info_by_name(self, product_key: str, device_name: str) -> DeviceInfo | None:
        device_id = self._by_name.get((product_key, device_name))
        if device_id is not None and device_id in self._devices:
            return self._devices[device_id]
        syncs = self._syncs
        row = await self.storage.get_device(product_key, device_name)
        return self._loaded(row, syncs)

    def _loaded(self, row: DeviceRow | None, syncs: int) -> DeviceInfo | None:
        """Cache a row read from storage, unless changes were applied while it was read: the row
        may predate an event that was just processed (and would then stay stale in the cache)."""
        if row is None:
            return None
        return self._remember(_info(row)) if syncs == self._syncs else _info(row)

    async def _change(self, row: DeviceRow, fields: dict[str, Any], change: str) -> DeviceRow:
        updated = await self.storage.update_device(row.id, fields, change)
        if updated is None:
            raise NotFound(f"device {row.product_key}/{row.device_name} not found")
        self._forget(row.id)
        self._remember(_info(updated))
        self._notify(change, [updated])
        return updated

    async def set_enabled(self, product_key: str, device_name: str, enabled: bool) -> DeviceRow:
        row = await self.device(product_key, device_name)
        if row.enabled == enabled:
            return row
        fields: dict[str, Any] = {"enabled": enabled, "generation": row.generation + 1}
        return await self._change(row, fields, "enabled" if enabled else "disabled")

    async def update_device(self, product_key: str, device_name: str, fields: dict[str, Any]) -> DeviceRow:
        row = await self.device(product_key, device_name)
        if "enabled" in fields:
            row = await self.set_enabled(product_key, device_name, bool(fields.pop("enabled")))
        if "nickname" in fields:
            row = await self._change(row, {"nickname": fields["nickname"]}, "updated")
        return row

    async def reset_secret(self, product_key: str, device_name: str) -> DeviceRow:
        row = await self.device(product_key, device_name)
        return await self._change(
            row, {"secret": new_device_secret(), "generation": row.generation + 1}, "secret-reset"
        )

    async def delete_device(self, product_key: str, device_name: str) -> None:
        row = await self.device(product_key, device_name)
        await self.storage.delete_device(row.id)
        self._forget(row.id)
        self._notify("deleted", [row])

    async def note_token_issued(self, info: DeviceInfo, at_ms: int) -> None:
        """Record the newest IoTDA token time so older tokens expire after the grace period."""
        row = await self.storage.update_device(info.id, {"token_epoch_ms": at_ms}, "token-epoch")
        if row:
            self._forget(info.id)
            self._remember(_info(row))

    # -- topology -------------------------------------------------------------------------
    async def attach(self, gateway: DeviceRow, children: list[tuple[str, str]]) -> list[DeviceRow]:
        product = await self.product(gateway.product_key)
        if product.node_type != "gateway":
            raise Invalid(f"{gateway.product_key}/{gateway.device_name} is not a gateway (product node type)")
        rows = []
        for pk, dn in children:
            child = await self.device(pk, dn)
            if child.id == gateway.id:
                raise Invalid("a gateway cannot be its own sub-device")
            if (await self.product(pk)).node_type == "gateway":
                raise Invalid(f"{pk}/{dn} is a gateway; gateways cannot be nested")
            if child.gateway_id not in (None, gateway.id):
                raise Conflict(f"{pk}/{dn} is already attached to another gateway")
            rows.append(child)
        return [await self._change(c, {"gateway_id": gateway.id}, "updated") for c in rows]

    async def detach(self, gateway: DeviceRow, child_pk: str, child_dn: str) -> None:
        child = await self.device(child_pk, child_dn)
        if child.gateway_id != gateway.id:
            raise NotFound(f"{child_pk}/{child_dn} is not a sub-device of {gateway.device_name}")
        await self._change(child, {"gateway_id": None}, "updated")

    async def sub_devices(self, gateway: DeviceRow, offset: int = 0, limit: int = 1000) -> tuple[list[DeviceRow], int]:
        return await self.storage.list_devices(None, None, offset, limit, gateway_id=gateway.id)

    def _notify(self, change: str, rows: list[DeviceRow]) -> None:
        for listener in self.listeners:
            for row in rows:
                try:
                    listener(change, row)
                except Exception:
                    log.exception("registry listener failed")


def check_product_fields(fields: dict[str, Any]) -> None:
    allowed = {"node_type": NODE_TYPES, "data_format": DATA_FORMATS, "auth_type": AUTH_TYPES}
    for name, choices in allowed.items():
        if name in fields and fields[name] not in choices:
            raise Invalid(
                f"{_camel(name)} must be one of {', '.join(choices)}",
                [{"field": _camel(name), "reason": "enum"}],
            )
    if "name" in fields:
        name = fields["name"]
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 64:
            raise Invalid("name must be 1-64 characters", [{"field": "name", "reason": "length"}])


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)
