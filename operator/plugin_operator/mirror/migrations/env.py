"""Alembic environment of the mirror tables. The connection comes from
`plugin_operator.mirror.migrate` (config.attributes["connection"]), else from
sqlalchemy.url / DATABASE_URL."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection

from plugin_operator.mirror.models import Base
from plugin_operator.mirror.urls import normalize_url

VERSION_TABLE = "plugin_operator_alembic_version"
# Two operator pods (or a pod and a `db upgrade` job) may migrate at once.
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('plugin-operator mirror migrations'))"


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=context.config.get_main_option("version_table") or VERSION_TABLE,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        connection.execute(text(_LOCK))
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("DATABASE_URL is not set")
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("the mirror migrations inspect the database; offline (--sql) mode is not supported")
run_migrations_online()
