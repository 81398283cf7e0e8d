"""Operations verbs of the `iotgate` command: `iotgate admin rotate-key`, `iotgate admin audit`."""

from __future__ import annotations

import argparse
from typing import Any

from iotgate.cli import AdminClient, add_client_flags, console, output


def rotate_key(args: argparse.Namespace) -> None:
    api = AdminClient(args)
    result = api.call("POST", "/api/v1/admin/rotate-key")
    if args.json:
        output(args, result)
        return
    console.print(f"admin key rotated ({result['previousKeyId']} → {result['keyId']}); the old key no longer works.")
    console.print("The server stored the new key in its data dir's admin-key file. New key:")
    print(result["adminKey"])


def audit(args: argparse.Namespace) -> None:
    api = AdminClient(args)
    params: dict[str, Any] = {"limit": args.limit}
    if args.before:
        params["before"] = args.before
    output(args, api.call("GET", "/api/v1/audit", params=params), ["id", "at", "actor", "method", "path", "status"])


def register(sub: Any) -> None:
    admin = sub.add_parser("admin", help="operate the server: admin key, audit log").add_subparsers(
        dest="verb", required=True
    )
    p = admin.add_parser("rotate-key", help="replace the admin key (stored in the data dir; the old key stops working)")
    add_client_flags(p)
    p.set_defaults(func=rotate_key)
    p = admin.add_parser("audit", help="list admin actions, newest first")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--before", type=int, help="page: the id after which to continue (the previous page's last id)")
    add_client_flags(p)
    p.set_defaults(func=audit)
