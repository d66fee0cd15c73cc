"""The mirror tables, each piece only where absent.

The platform's own migrations may have created both tables already (with a
foreign key to workspaces(id), see shared/platform-schema.sql), perhaps before
its drift migration added installed_sha. So every object is checked first —
indexes and the CHECK by what they do, not by name — and only what is missing
is created. Running it on either database, or twice, ends in the same schema.

Revision ID: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text
from sqlalchemy.engine import Connection

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# gen_random_uuid() is built in from PostgreSQL 13 (pgcrypto before that).
_TABLES = {
    "workspace_plugins": """
        CREATE TABLE IF NOT EXISTS workspace_plugins (
            id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
            workspace_id UUID NOT NULL,
            plugin_name  TEXT NOT NULL,
            source_raw   TEXT NOT NULL,
            tracked_ref  TEXT NOT NULL DEFAULT 'none',
            installed_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
            updated_at   TIMESTAMPTZ NOT NULL DEFAULT NOW(),
            installed_sha TEXT NULL
        )""",
    "plugin_update_queue": """
        CREATE TABLE IF NOT EXISTS plugin_update_queue (
            id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
            workspace_id UUID NOT NULL,
            plugin_name  TEXT NOT NULL,
            tracked_ref  TEXT NOT NULL,
            current_sha  TEXT NOT NULL,
            latest_sha   TEXT NOT NULL,
            status       TEXT NOT NULL DEFAULT 'pending',
            created_at   TIMESTAMPTZ NOT NULL DEFAULT NOW()
        )""",
}

_DEFAULTS = {
    ("workspace_plugins", "id"): "gen_random_uuid()",
    ("workspace_plugins", "tracked_ref"): "'none'",
    ("workspace_plugins", "installed_at"): "now()",
    ("workspace_plugins", "updated_at"): "now()",
    ("plugin_update_queue", "id"): "gen_random_uuid()",
    ("plugin_update_queue", "status"): "'pending'",
    ("plugin_update_queue", "created_at"): "now()",
}

# (table, name, columns, predicate or None)
_UNIQUE_INDEXES = [
    ("workspace_plugins", "workspace_plugins_workspace_name", ("workspace_id", "plugin_name"), None),
    (
        "plugin_update_queue",
        "plugin_update_queue_pending_unique",
        ("workspace_id", "plugin_name"),
        "status = 'pending'",
    ),
]

_STATUS_CHECK = (
    "ALTER TABLE plugin_update_queue ADD CONSTRAINT plugin_update_queue_status "
    "CHECK (status IN ('pending', 'applied', 'dismissed'))"
)


def _has_default(conn: Connection, table: str, column: str) -> bool:
    found = conn.execute(
        text(
            "SELECT column_default FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = :table AND column_name = :column"
        ),
        {"table": table, "column": column},
    ).scalar_one_or_none()
    return found is not None


def _unique_indexes(conn: Connection, table: str) -> list[tuple[frozenset[str], str | None]]:
    rows = conn.execute(
        text(
            """
            SELECT array_agg(a.attname::text), pg_get_expr(i.indpred, i.indrelid)
            FROM pg_index i
            JOIN LATERAL unnest(i.indkey) AS k(attnum) ON true
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
            WHERE i.indrelid = to_regclass(:table) AND i.indisunique AND i.indexprs IS NULL
            GROUP BY i.indexrelid, i.indpred, i.indrelid
            """
        ),
        {"table": table},
    ).all()
    return [(frozenset(columns), predicate) for columns, predicate in rows]


def _same_predicate(found: str | None, wanted: str | None) -> bool:
    if wanted is None or found is None:
        return wanted is found

    # pg_get_expr renders `status = 'pending'` as `(status = 'pending'::text)`.
    def squash(expr: str) -> str:
        return expr.replace("::text", "").replace("(", "").replace(")", "").replace(" ", "").lower()

    return squash(found) == squash(wanted)


def _has_status_check(conn: Connection) -> bool:
    return bool(
        conn.execute(
            text(
                """
                SELECT EXISTS (
                    SELECT 1 FROM pg_constraint c
                    JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
                    WHERE c.conrelid = to_regclass('plugin_update_queue') AND c.contype = 'c'
                      AND a.attname = 'status'
                )
                """
            )
        ).scalar_one()
    )


def upgrade() -> None:
    conn = op.get_bind()
    for ddl in _TABLES.values():
        conn.execute(text(ddl))
    # Added by the platform's drift migration; absent on older platform schemas.
    conn.execute(text("ALTER TABLE workspace_plugins ADD COLUMN IF NOT EXISTS installed_sha TEXT NULL"))
    for (table, column), default in _DEFAULTS.items():
        if not _has_default(conn, table, column):
            conn.execute(text(f"ALTER TABLE {table} ALTER COLUMN {column} SET DEFAULT {default}"))
    for table, name, columns, predicate in _UNIQUE_INDEXES:
        wanted = frozenset(columns)
        if not any(
            found == wanted and _same_predicate(where, predicate) for found, where in _unique_indexes(conn, table)
        ):
            where = f" WHERE {predicate}" if predicate else ""
            conn.execute(text(f"CREATE UNIQUE INDEX IF NOT EXISTS {name} ON {table} ({', '.join(columns)}){where}"))
    if not _has_status_check(conn):
        conn.execute(text(_STATUS_CHECK))


def downgrade() -> None:
    # The tables may be the platform's, holding the platform's data: dropping
    # them is a decision for a person, not for a migration.
    raise NotImplementedError("the mirror tables may belong to the platform; drop them by hand if you mean it")
