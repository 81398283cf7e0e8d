"""Versioned schema migrations, shared by both backends (portable SQL only).

A migration is never edited once released: add a new named entry at the end. Each applied
migration is recorded in the `meta` table as `migration:<name>`, so features developed side by
side can each add theirs without fighting over version numbers.
"""

from __future__ import annotations

# Each entry: list of statements. Types are portable: BIGINT/TEXT/DOUBLE PRECISION work in both,
# and SQLite maps them onto its storage classes. BYTEA/BLOB differ, so {blob} is substituted.
MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "0001-core",
        [
            """CREATE TABLE products (
            product_key TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            node_type TEXT NOT NULL,
            data_format TEXT NOT NULL,
            auth_type TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            rate_per_s DOUBLE PRECISION,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL)""",
            """CREATE TABLE model_drafts (
            product_key TEXT PRIMARY KEY REFERENCES products(product_key) ON DELETE CASCADE,
            document TEXT NOT NULL,
            updated_at BIGINT NOT NULL)""",
            """CREATE TABLE model_versions (
            product_key TEXT NOT NULL REFERENCES products(product_key) ON DELETE CASCADE,
            version INTEGER NOT NULL,
            document TEXT NOT NULL,
            published_at BIGINT NOT NULL,
            PRIMARY KEY (product_key, version))""",
            """CREATE TABLE devices (
            id {serial} PRIMARY KEY,
            product_key TEXT NOT NULL REFERENCES products(product_key),
            device_name TEXT NOT NULL,
            secret TEXT NOT NULL,
            enabled BOOLEAN NOT NULL DEFAULT TRUE,
            generation INTEGER NOT NULL DEFAULT 1,
            gateway_id BIGINT REFERENCES devices(id) ON DELETE SET NULL,
            nickname TEXT NOT NULL DEFAULT '',
            token_epoch_ms BIGINT NOT NULL DEFAULT 0,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            UNIQUE (product_key, device_name))""",
            "CREATE INDEX devices_gateway ON devices (gateway_id)",
            """CREATE TABLE registry_events (
            seq {serial} PRIMARY KEY,
            device_id BIGINT NOT NULL,
            change TEXT NOT NULL,
            at BIGINT NOT NULL)""",
            # One history row per report: a report's values stay together (one insert per report,
            # not per data point); per-property queries read the device's rows in the time range.
            """CREATE TABLE history (
            message_id BIGINT PRIMARY KEY,
            device_id BIGINT NOT NULL,
            ts BIGINT NOT NULL,
            data TEXT NOT NULL)""",
            "CREATE INDEX history_device_ts ON history (device_id, ts)",
            """CREATE TABLE latest (
            device_id BIGINT NOT NULL,
            identifier TEXT NOT NULL,
            value TEXT NOT NULL,
            ts BIGINT NOT NULL,
            message_id BIGINT NOT NULL,
            PRIMARY KEY (device_id, identifier))""",
            """CREATE TABLE messages (
            message_id BIGINT PRIMARY KEY,
            device_id BIGINT NOT NULL,
            kind TEXT NOT NULL,
            ts BIGINT NOT NULL,
            received_at BIGINT NOT NULL,
            topic TEXT NOT NULL DEFAULT '',
            identifier TEXT NOT NULL DEFAULT '',
            payload {blob} NOT NULL,
            detail TEXT NOT NULL DEFAULT '')""",
            "CREATE INDEX messages_device ON messages (device_id, message_id)",
            """CREATE TABLE device_seen (
            device_id BIGINT PRIMARY KEY,
            last_seen BIGINT NOT NULL)""",
        ],
    ),
    (
        "0002-admin-audit",
        [
            # Who (key id or console session), what (method, path, target, status), when, from where.
            """CREATE TABLE admin_audit (
            id {serial} PRIMARY KEY,
            at BIGINT NOT NULL,
            actor TEXT NOT NULL,
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            target TEXT NOT NULL DEFAULT '',
            status INTEGER NOT NULL,
            client TEXT NOT NULL DEFAULT '')""",
            "CREATE INDEX admin_audit_at ON admin_audit (at)",
        ],
    ),
    # forwarding (iotgate.forward): rules, targets with their counters, the outbox, dead letters
    (
        "0003-forward",
        [
            """CREATE TABLE forward_rules (
                id {serial_pk},
                name TEXT NOT NULL UNIQUE,
                source TEXT NOT NULL,
                product_key TEXT NOT NULL DEFAULT '',
                where_text TEXT NOT NULL DEFAULT '',
                format TEXT NOT NULL,
                enabled BOOLEAN NOT NULL DEFAULT TRUE,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL)""",
            # counters live with the target and change in the same transactions as the outbox rows
            """CREATE TABLE forward_targets (
                id {serial_pk},
                rule_id BIGINT NOT NULL REFERENCES forward_rules(id) ON DELETE CASCADE,
                pos INTEGER NOT NULL,
                spec TEXT NOT NULL,
                matched BIGINT NOT NULL DEFAULT 0,
                filtered BIGINT NOT NULL DEFAULT 0,
                delivered BIGINT NOT NULL DEFAULT 0,
                redelivered BIGINT NOT NULL DEFAULT 0,
                retries BIGINT NOT NULL DEFAULT 0,
                replayed BIGINT NOT NULL DEFAULT 0,
                last_error TEXT NOT NULL DEFAULT '',
                last_error_at BIGINT NOT NULL DEFAULT 0,
                last_delivered_at BIGINT NOT NULL DEFAULT 0)""",
            "CREATE INDEX forward_targets_rule ON forward_targets (rule_id)",
            """CREATE TABLE forward_outbox (
                id {serial_pk},
                target_id BIGINT NOT NULL,
                node_id INTEGER NOT NULL DEFAULT 0,
                device_id BIGINT NOT NULL,
                message_id BIGINT NOT NULL,
                product_key TEXT NOT NULL,
                device_name TEXT NOT NULL,
                source TEXT NOT NULL,
                identifier TEXT NOT NULL DEFAULT '',
                topic TEXT NOT NULL DEFAULT '',
                content_type TEXT NOT NULL,
                body {blob} NOT NULL,
                created_at BIGINT NOT NULL,
                tries INTEGER NOT NULL DEFAULT 0,
                failures INTEGER NOT NULL DEFAULT 0,
                inflight INTEGER NOT NULL DEFAULT 0,
                first_failed_at BIGINT NOT NULL DEFAULT 0,
                last_error TEXT NOT NULL DEFAULT '')""",
            "CREATE INDEX forward_outbox_target ON forward_outbox (target_id, node_id, id)",
            """CREATE TABLE forward_dead_letters (
                id {serial_pk},
                target_id BIGINT NOT NULL,
                node_id INTEGER NOT NULL DEFAULT 0,
                device_id BIGINT NOT NULL,
                message_id BIGINT NOT NULL,
                product_key TEXT NOT NULL,
                device_name TEXT NOT NULL,
                source TEXT NOT NULL,
                identifier TEXT NOT NULL DEFAULT '',
                topic TEXT NOT NULL DEFAULT '',
                content_type TEXT NOT NULL,
                body {blob} NOT NULL,
                created_at BIGINT NOT NULL,
                tries INTEGER NOT NULL DEFAULT 0,
                failures INTEGER NOT NULL DEFAULT 0,
                last_error TEXT NOT NULL DEFAULT '',
                dead_at BIGINT NOT NULL)""",
            "CREATE INDEX forward_dead_letters_target ON forward_dead_letters (target_id, id)",
        ],
    ),
]


def render(statement: str, dialect: str) -> str:
    """{serial}: an integer key; {serial_pk}: a primary key whose values are never reused after a delete."""
    if dialect == "sqlite":
        return statement.format(serial="INTEGER", blob="BLOB", serial_pk="INTEGER PRIMARY KEY AUTOINCREMENT")
    return statement.format(serial="BIGSERIAL", blob="BYTEA", serial_pk="BIGSERIAL PRIMARY KEY")
