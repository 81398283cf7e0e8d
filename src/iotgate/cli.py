"""The `iotgate` command: serve, and admin verbs over a running server's management API."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from iotgate import __version__
from iotgate.config import DESCRIPTIONS, Settings, field_names, load_settings

console = Console()
err = Console(stderr=True)
IMPORT_CHUNK = 500


class CliError(Exception):
    pass


# -- talking to the admin API ------------------------------------------------------------------
class AdminClient:
    def __init__(self, args: argparse.Namespace) -> None:
        data_dir = Path(args.data_dir or os.environ.get("IOTGATE_DATA_DIR", "./iotgate-data"))
        url, key = args.url or os.environ.get("IOTGATE_URL"), args.key or os.environ.get("IOTGATE_ADMIN_KEY")
        info_file, key_file = data_dir / "server.json", data_dir / "admin-key"
        if not url and info_file.exists():
            url = json.loads(info_file.read_text()).get("adminUrl")
        if not key and key_file.exists():
            key = key_file.read_text().strip()
        if not url:
            url = "http://127.0.0.1:8080"
        if not key:
            raise CliError(f"no admin key: pass --key, set IOTGATE_ADMIN_KEY, or run where {key_file} exists")
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise CliError(f"cannot reach the iotgate admin API at {self.http.base_url}: {exc}") from None
        if resp.status_code >= 400:
            try:
                error = resp.json()["error"]
                raise CliError(f"{resp.status_code} {error['code']}: {error['message']}")
            except (ValueError, KeyError, TypeError):
                raise CliError(f"{resp.status_code}: {resp.text[:300]}") from None
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()


# Millisecond timestamps the API returns; tables show them in local time (--json keeps the numbers).
TIME_FIELDS = frozenset({"time", "receivedAt", "lastSeen", "createdAt", "updatedAt", "publishedAt", "at", "deadAt"})


def time_cell(column: str, value: Any) -> str | None:
    """A millisecond timestamp column as local date and time, else None."""
    if column in TIME_FIELDS and isinstance(value, int) and not isinstance(value, bool) and value > 10**11:
        return datetime.fromtimestamp(value / 1000).isoformat(sep=" ", timespec="milliseconds")
    return None


def print_field(data: Any, field: str) -> None:
    """`--field NAME`: only that field's value (one line per item of a list), for shell scripts."""
    rows = data.get("items", data) if isinstance(data, dict) else data
    for row in [rows] if isinstance(rows, dict) else rows:
        if not isinstance(row, dict) or field not in row:
            raise CliError(
                f"no field {field!r} in the result (fields: {', '.join(row) if isinstance(row, dict) else '-'})"
            )
        value = row[field]
        print(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def output(args: argparse.Namespace, data: Any, columns: list[str] | None = None, title: str = "") -> None:
    if getattr(args, "field", None):
        print_field(data, args.field)
        return
    if args.json or columns is None:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return
    rows = data.get("items", data) if isinstance(data, dict) else data
    if isinstance(rows, dict):
        rows = [rows]
    table = Table(title=title or None)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*["" if row.get(c) is None else time_cell(c, row[c]) or str(row[c]) for c in columns])
    console.print(table)
    if isinstance(data, dict) and "total" in data:
        console.print(f"{len(rows)} of {data['total']}")


def show_record(args: argparse.Namespace, data: dict[str, Any]) -> None:
    if getattr(args, "field", None):
        print_field(data, args.field)
        return
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return
    table = Table(show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in data.items():
        shown = time_cell(key, value) or (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        table.add_row(key, shown)
    console.print(table)


# -- product verbs -----------------------------------------------------------------------------
PRODUCT_COLUMNS = ["productKey", "name", "nodeType", "dataFormat", "authType"]


def product_cmd(args: argparse.Namespace) -> None:
    api = AdminClient(args)
    verb = args.verb
    if verb == "create":
        body = {
            "name": args.name,
            "nodeType": args.node_type,
            "dataFormat": args.data_format,
            "authType": args.auth_type,
        }
        if args.description:
            body["description"] = args.description
        show_record(args, api.call("POST", "/api/v1/products", json=body))
    elif verb == "list":
        output(
            args,
            api.call("GET", "/api/v1/products", params={"limit": args.limit, "offset": args.offset}),
            PRODUCT_COLUMNS,
        )
    elif verb == "show":
        show_record(args, api.call("GET", f"/api/v1/products/{args.product_key}"))
    elif verb == "delete":
        api.call("DELETE", f"/api/v1/products/{args.product_key}")
        console.print(f"deleted product {args.product_key}")
    elif verb == "publish":
        result = api.call("POST", f"/api/v1/products/{args.product_key}/thing-model/publish")
        show_record(args, result)
    elif verb == "import-model":
        doc = json.loads(Path(args.file).read_text(encoding="utf-8"))
        api.call(
            "PUT",
            f"/api/v1/products/{args.product_key}/thing-model",
            params={"format": args.format},
            json=doc,
        )
        hint = "" if args.publish else "; publish it to use it"
        err.print(f"imported {args.format} model into the draft of {args.product_key}{hint}")
        if args.publish:
            show_record(args, api.call("POST", f"/api/v1/products/{args.product_key}/thing-model/publish"))
    elif verb == "export-model":
        params = {"format": args.format, "version": args.version}
        doc = api.call("GET", f"/api/v1/products/{args.product_key}/thing-model", params=params)
        text = json.dumps(doc, indent=2, ensure_ascii=False)
        if args.output:
            Path(args.output).write_text(text + "\n", encoding="utf-8")
            console.print(f"wrote {args.output}")
        else:
            print(text)


# -- device verbs ------------------------------------------------------------------------------
DEVICE_COLUMNS = ["productKey", "deviceName", "deviceId", "enabled", "online", "lastSeen"]


def read_device_names(path: str) -> list[dict[str, str]]:
    text = Path(path).read_text(encoding="utf-8-sig")
    if path.endswith(".json") or text.lstrip().startswith(("[", "{")):
        doc = json.loads(text)
        items = doc.get("devices", doc) if isinstance(doc, dict) else doc
        return [{"deviceName": d} if isinstance(d, str) else d for d in items]
    from iotgate.registry.names import device_names_from_csv

    try:
        names = device_names_from_csv(text)
    except csv.Error as exc:
        raise ValueError(f"{path}: the CSV cannot be read: {exc}") from None
    return [{"deviceName": name} for name in names if name]  # a blank cell names no device


def import_devices(args: argparse.Namespace, api: AdminClient) -> None:
    from rich.progress import Progress

    devices = read_device_names(args.file)
    created: list[dict[str, Any]] = []
    with Progress(console=err, disable=args.json) as progress:
        task = progress.add_task(f"importing {len(devices)} devices", total=len(devices))
        for start in range(0, len(devices), IMPORT_CHUNK):
            chunk = devices[start : start + IMPORT_CHUNK]
            result = api.call("POST", f"/api/v1/products/{args.product_key}/devices:batch", json={"devices": chunk})
            created += result["devices"]
            progress.advance(task, len(chunk))
    if args.output:
        with open(args.output, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, ["productKey", "deviceName", "deviceSecret", "deviceId"])
            writer.writeheader()
            writer.writerows(created)
        err.print(f"created {len(created)} devices; credentials written to {args.output}")
    output(args, {"items": created, "total": len(created)}, ["productKey", "deviceName", "deviceSecret"])


def device_cmd(args: argparse.Namespace) -> None:
    api = AdminClient(args)
    verb = args.verb
    base = f"/api/v1/products/{args.product_key}/devices" if getattr(args, "product_key", None) else ""
    one = f"{base}/{getattr(args, 'device_name', '')}"
    if verb == "add":
        body = {"deviceName": args.name} if args.name else {}
        show_record(args, api.call("POST", base, json=body))
    elif verb == "import":
        import_devices(args, api)
    elif verb == "list":
        params: dict[str, Any] = {"limit": args.limit, "offset": args.offset}
        if args.search:
            params["search"] = args.search
        path = base or "/api/v1/devices"
        output(args, api.call("GET", path, params=params), DEVICE_COLUMNS)
    elif verb == "show":
        show_record(args, api.call("GET", one))
    elif verb in ("enable", "disable"):
        show_record(args, api.call("PATCH", one, json={"enabled": verb == "enable"}))
    elif verb == "reset-secret":
        show_record(args, api.call("POST", f"{one}/reset-secret"))
    elif verb == "delete":
        api.call("DELETE", one)
        console.print(f"deleted device {args.product_key}/{args.device_name}")
    elif verb == "properties":
        output(args, api.call("GET", f"{one}/properties"), ["identifier", "name", "value", "unit", "time"])
    elif verb == "history":
        params = {"limit": args.limit}
        if args.since is not None:
            params["from"] = args.since
        if args.until is not None:
            params["to"] = args.until
        output(
            args,
            api.call("GET", f"{one}/properties/{args.identifier}/history", params=params),
            ["time", "value"],
        )
    elif verb == "messages":
        params = {"limit": args.limit}
        if args.kind:
            params["kind"] = args.kind
        output(
            args,
            api.call("GET", f"{one}/messages", params=params),
            ["time", "kind", "topic", "reason", "payload"],
        )


# -- serve / config ----------------------------------------------------------------------------
def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {name: getattr(args, name, None) for name in field_names()}
    return load_settings(overrides, args.config or os.environ.get("IOTGATE_CONFIG") or None)


def serve_cmd(args: argparse.Namespace) -> None:
    settings = settings_from_args(args)
    setup_logging(settings.log_level, settings.log_format)
    from iotgate.processes import install_uvloop
    from iotgate.server import serve

    install_uvloop()
    asyncio.run(serve(settings))


def config_cmd(args: argparse.Namespace) -> None:
    settings = settings_from_args(args)
    print(json.dumps(settings.masked(), indent=2))


def setup_logging(level: str, fmt: str = "auto") -> None:
    from iotgate.logs import configure

    configure(level, None if fmt == "auto" else fmt == "json")


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    parser.add_argument("--config", help="TOML file with settings (keys as the flag names; default: IOTGATE_CONFIG)")
    for name in field_names():
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        about = DESCRIPTIONS.get(name, "").replace("%", "%%")
        if isinstance(default, bool):  # --flag / --no-flag: a flag can also undo an IOTGATE_* variable
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=about)
        else:
            parser.add_argument(
                flag,
                dest=name,
                default=None,
                metavar=type(default).__name__.upper(),
                help=f"{about} (default {default!r})".strip(),
            )


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="admin API URL (default: from the data dir, else http://127.0.0.1:8080)")
    parser.add_argument("--key", help="admin API key (default: IOTGATE_ADMIN_KEY or the data dir's admin-key)")
    parser.add_argument("--data-dir", dest="data_dir", help="data dir to read URL and key from")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def add_field_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--field", metavar="NAME", help="print only this field of the result, e.g. productKey (one line per item)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iotgate", description="Self-hosted IoT device-access platform")
    parser.add_argument("--version", action="version", version=f"iotgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the platform (device listener + admin API/console)")
    add_settings_flags(serve)
    serve.set_defaults(func=serve_cmd)

    cfg = sub.add_parser("config", help="configuration").add_subparsers(dest="verb", required=True)
    show = cfg.add_parser("show", help="print the effective configuration, secrets masked")
    add_settings_flags(show)
    show.set_defaults(func=config_cmd)

    product = sub.add_parser("product", help="manage products").add_subparsers(dest="verb", required=True)
    p = product.add_parser("create")
    p.add_argument("--name", required=True)
    p.add_argument("--node-type", default="direct", choices=["direct", "gateway", "sub-device"])
    p.add_argument("--data-format", default="alink-json", choices=["alink-json", "custom"])
    p.add_argument("--auth-type", default="device-secret", choices=["device-secret"])
    p.add_argument("--description", default="")
    p = product.add_parser("list")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--offset", type=int, default=0)
    for verb in ("show", "publish", "delete"):
        product.add_parser(verb).add_argument("product_key")
    p = product.add_parser("import-model", help="load an iotgate, Alibaba TSL or Huawei model into the draft")
    p.add_argument("product_key")
    p.add_argument("file")
    p.add_argument("--format", default="iotgate", choices=["iotgate", "alibaba", "huawei"])
    p.add_argument("--publish", action="store_true", help="publish right after importing")
    p = product.add_parser("export-model")
    p.add_argument("product_key")
    p.add_argument("--format", default="iotgate", choices=["iotgate", "alibaba", "huawei"])
    p.add_argument("--version", default="latest", help="draft, latest or a version number")
    p.add_argument("-o", "--output")
    for name, p in product.choices.items():
        add_client_flags(p)
        if name not in ("delete", "export-model"):
            add_field_flag(p)
        p.set_defaults(func=product_cmd)

    device = sub.add_parser("device", help="manage devices").add_subparsers(dest="verb", required=True)
    p = device.add_parser("add")
    p.add_argument("product_key")
    p.add_argument("--name", help="DeviceName (generated when omitted)")
    p = device.add_parser("import", help="add devices in bulk from CSV (deviceName column) or JSON")
    p.add_argument("product_key")
    p.add_argument("file")
    p.add_argument("-o", "--output", help="write the created credentials to this CSV file")
    p = device.add_parser("list")
    p.add_argument("product_key", nargs="?")
    p.add_argument("--search")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--offset", type=int, default=0)
    for verb in ("show", "enable", "disable", "reset-secret", "delete", "properties"):
        p = device.add_parser(verb)
        p.add_argument("product_key")
        p.add_argument("device_name")
    p = device.add_parser("history")
    p.add_argument("product_key")
    p.add_argument("device_name")
    p.add_argument("identifier")
    p.add_argument("--from", dest="since", type=int)
    p.add_argument("--to", dest="until", type=int)
    p.add_argument("--limit", type=int, default=100)
    p = device.add_parser("messages")
    p.add_argument("product_key")
    p.add_argument("device_name")
    p.add_argument("--kind", help="comma-separated: message,event,rejected,deviceinfo,ota")
    p.add_argument("--limit", type=int, default=50)
    for name, p in device.choices.items():
        add_client_flags(p)
        if name not in ("delete",):
            add_field_flag(p)
        p.set_defaults(func=device_cmd)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Any]:
    """Commands that live in their own modules (simulate, bench, rules, ...), when present."""
    found = []
    for module in ("iotgate.simulate", "iotgate.bench", "iotgate.forward.cli", "iotgate.opscli"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ImportError:
            continue
        register = getattr(mod, "register", None)
        if register:
            found.append(register)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except CliError as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(1)
    except (ValueError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    # `python -m iotgate.cli` runs this file as `__main__`; plug-in commands import `iotgate.cli`.
    # Run the imported module's main so both see the same CliError class.
    from iotgate import cli as _cli

    logging.basicConfig()
    _cli.main()
