"""The Postgres mirror against a real PostgreSQL: migrations on an empty and on
a platform-made database, upsert semantics, the pending-row rule, resync after
a real outage (the server stopped and started again) and `db check`."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from localdev.postgres import PostgresServer
from localdev.slowproxy import FaultProxy
from plugin_operator import cli_db
from plugin_operator.config import Settings
from plugin_operator.domain.mirror_rows import QUEUE_STATUS, InstallRow, install_row, rows_from_objects, update_row
from plugin_operator.mirror import Mirror, MirrorService
from plugin_operator.mirror.models import PENDING_PREDICATE

pytestmark = pytest.mark.postgres

SHA = {n: f"{n}" * 40 for n in "0123456789abcdef"}


# -- cluster objects as kopf hands them over ------------------------------------


def plugin_install(
    workspace: str, plugin: str, *, sha: str | None = None, source: str | None = None, track: str | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"workspace": workspace, "source": source or f"github://acme/{plugin}#main"}
    if track:
        spec["track"] = track
    return {
        "metadata": {"name": plugin, "namespace": "team", "uid": str(uuid.uuid4())},
        "spec": spec,
        "status": {"pluginName": plugin, "installedSHA": sha, "installedAt": "2026-01-01T00:00:00Z"},
    }


def plugin_update(
    workspace: str, plugin: str, to_sha: str, *, state: str = "Pending", uid: str | None = None, age: int = 0
) -> dict[str, Any]:
    created = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=age)
    return {
        "metadata": {
            "name": f"{plugin}-{to_sha[:12]}",
            "uid": uid or str(uuid.uuid4()),
            "creationTimestamp": created.isoformat().replace("+00:00", "Z"),
        },
        "spec": {
            "workspace": workspace,
            "plugin": plugin,
            "trackedRef": "ref:main",
            "fromSHA": SHA["0"],
            "toSHA": to_sha,
        },
        "status": {"state": state},
    }


def ws() -> str:
    return str(uuid.uuid4())


# -- fixtures ---------------------------------------------------------------------


@contextlib.contextmanager
def _migrated(url: str) -> Iterator[Mirror]:
    m = Mirror(url)
    m.upgrade()
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def mirror(database_url: str) -> Iterator[Mirror]:
    with _migrated(database_url) as m:
        yield m


@pytest.fixture
def platform_mirror(platform_database_url: str) -> Iterator[Mirror]:
    with _migrated(platform_database_url) as m:
        yield m


def query(m: Mirror, sql: str, **params: Any) -> list[Any]:
    with m.engine.connect() as conn:
        return list(conn.execute(text(sql), params).all())


def pending_per_pair(m: Mirror) -> list[Any]:
    return query(
        m,
        "SELECT workspace_id, plugin_name, count(*) FROM plugin_update_queue "
        "WHERE status = 'pending' GROUP BY 1, 2 HAVING count(*) > 1",
    )


def unique_indexes(m: Mirror, table: str) -> list[tuple[str, str | None]]:
    return [
        (row[0], row[1])
        for row in query(
            m,
            "SELECT pg_get_indexdef(indexrelid), pg_get_expr(indpred, indrelid) FROM pg_index "
            "WHERE indrelid = to_regclass(:t) AND indisunique AND NOT indisprimary",
            t=table,
        )
    ]


# -- migrations -------------------------------------------------------------------


def test_migrations_create_both_tables_on_an_empty_database(mirror: Mirror) -> None:
    columns = {
        (r.table_name, r.column_name): (r.is_nullable, r.column_default)
        for r in query(
            mirror,
            "SELECT table_name, column_name, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_name IN ('workspace_plugins', 'plugin_update_queue')",
        )
    }
    assert columns[("workspace_plugins", "installed_sha")] == ("YES", None)
    assert columns[("workspace_plugins", "tracked_ref")][1] == "'none'::text"
    assert columns[("plugin_update_queue", "status")][1] == "'pending'::text"
    assert "gen_random_uuid()" in columns[("plugin_update_queue", "id")][1]
    assert [pred for _, pred in unique_indexes(mirror, "workspace_plugins")] == [None]
    assert [pred for _, pred in unique_indexes(mirror, "plugin_update_queue")] == ["(status = 'pending'::text)"]
    with pytest.raises(Exception, match="plugin_update_queue_status"), mirror.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO plugin_update_queue (workspace_id, plugin_name, tracked_ref, current_sha, latest_sha, "
                "status) VALUES (gen_random_uuid(), 'p', 'none', 'a', 'b', 'maybe')"
            )
        )


def test_migrations_leave_a_platform_database_as_it_was_and_run_twice(platform_mirror: Mirror) -> None:
    platform_mirror.upgrade()
    assert len(unique_indexes(platform_mirror, "workspace_plugins")) == 1
    assert [pred for _, pred in unique_indexes(platform_mirror, "plugin_update_queue")] == [
        "(status = 'pending'::text)"
    ]
    checks = query(
        platform_mirror,
        "SELECT conname FROM pg_constraint WHERE conrelid = 'plugin_update_queue'::regclass AND contype = 'c'",
    )
    assert [c[0] for c in checks] == ["plugin_update_queue_status"]
    foreign_keys = query(
        platform_mirror,
        "SELECT conrelid::regclass::text FROM pg_constraint WHERE contype = 'f' "
        "AND confrelid = 'workspaces'::regclass AND conrelid::regclass::text <> 'org_plugin_allowlist' "
        "AND conrelid <> 'workspaces'::regclass ORDER BY 1",
    )
    assert [f[0] for f in foreign_keys] == ["plugin_update_queue", "workspace_plugins"]


def test_migrations_add_what_an_older_platform_schema_lacks(platform_database_url: str) -> None:
    m = Mirror(platform_database_url)
    try:
        with m.engine.begin() as conn:
            conn.execute(text("ALTER TABLE workspace_plugins DROP COLUMN installed_sha"))
            conn.execute(text("DROP INDEX plugin_update_queue_pending_unique"))
            conn.execute(text("ALTER TABLE plugin_update_queue DROP CONSTRAINT plugin_update_queue_status"))
            conn.execute(text("ALTER TABLE workspace_plugins ALTER COLUMN tracked_ref DROP DEFAULT"))
        m.upgrade()
        assert query(m, "SELECT 1 FROM information_schema.columns WHERE column_name = 'installed_sha'")
        assert [p for _, p in unique_indexes(m, "plugin_update_queue")] == ["(status = 'pending'::text)"]
        assert PENDING_PREDICATE in unique_indexes(m, "plugin_update_queue")[0][0]
        assert query(m, "SELECT 1 FROM pg_constraint WHERE conname = 'plugin_update_queue_status'")
        assert query(
            m,
            "SELECT 1 FROM information_schema.columns WHERE table_name = 'workspace_plugins' "
            "AND column_name = 'tracked_ref' AND column_default IS NOT NULL",
        )
    finally:
        m.close()


# -- workspace_plugins ---------------------------------------------------------------


def test_install_upsert_keeps_installed_at_and_moves_updated_at(mirror: Mirror) -> None:
    w = ws()
    first = install_row(plugin_install(w, "review", sha=None))
    assert first is not None and mirror.upsert_install(first)
    (before,) = query(mirror, "SELECT installed_at, updated_at, installed_sha FROM workspace_plugins")
    assert before.installed_sha is None  # NULL, never ''

    time.sleep(0.01)
    mirror.upsert_install(first)  # nothing changed: the row is not touched
    (same,) = query(mirror, "SELECT installed_at, updated_at FROM workspace_plugins")
    assert same.updated_at == before.updated_at

    changed = install_row(plugin_install(w, "review", sha=SHA["a"]))
    assert changed is not None
    mirror.upsert_install(changed)
    (after,) = query(mirror, "SELECT installed_at, updated_at, installed_sha FROM workspace_plugins")
    assert after.installed_at == before.installed_at
    assert after.updated_at > before.updated_at
    assert after.installed_sha == SHA["a"]


def test_the_row_goes_when_the_plugin_is_uninstalled(mirror: Mirror) -> None:
    w = ws()
    for plugin in ("review", "lint"):
        row = install_row(plugin_install(w, plugin))
        assert row is not None
        mirror.upsert_install(row)
    mirror.delete_install(w, "review")
    assert [r.plugin_name for r in query(mirror, "SELECT plugin_name FROM workspace_plugins")] == ["lint"]


def test_a_workspace_row_is_created_where_the_platform_has_a_foreign_key(platform_mirror: Mirror) -> None:
    w = ws()
    row = install_row(plugin_install(w, "review"))
    assert row is not None and platform_mirror.upsert_install(row)
    update = update_row(plugin_update(w, "review", SHA["1"]))
    assert platform_mirror.upsert_update(update)
    assert query(platform_mirror, "SELECT id::text FROM workspaces") == [(w,)]


def test_a_workspace_that_is_not_a_uuid_is_skipped_with_a_warning(
    mirror: Mirror, caplog: pytest.LogCaptureFixture
) -> None:
    row = install_row(plugin_install("team-a", "review"))
    assert row is not None
    with caplog.at_level(logging.WARNING):
        assert mirror.upsert_install(row) is False
    assert "not a UUID" in caplog.text
    assert query(mirror, "SELECT * FROM workspace_plugins") == []


# -- plugin_update_queue ----------------------------------------------------------------


@pytest.mark.parametrize(("state", "status"), sorted(QUEUE_STATUS.items()))
def test_queue_status_follows_the_update_state(mirror: Mirror, state: str, status: str) -> None:
    obj = plugin_update(ws(), "review", SHA["1"], state=state)
    mirror.upsert_update(update_row(obj))
    assert query(mirror, "SELECT id::text, status FROM plugin_update_queue") == [(obj["metadata"]["uid"], status)]


def test_a_new_pending_update_dismisses_the_older_one(platform_mirror: Mirror) -> None:
    w = ws()
    old = plugin_update(w, "review", SHA["1"], age=0)
    new = plugin_update(w, "review", SHA["2"], age=5)
    platform_mirror.upsert_update(update_row(old))
    platform_mirror.upsert_update(update_row(new))
    rows = dict(query(platform_mirror, "SELECT latest_sha, status FROM plugin_update_queue"))
    assert rows == {SHA["1"]: "dismissed", SHA["2"]: "pending"}

    # A late "Pending" event of the older update does not take the slot back.
    platform_mirror.upsert_update(update_row(old))
    rows = dict(query(platform_mirror, "SELECT latest_sha, status FROM plugin_update_queue"))
    assert rows == {SHA["1"]: "dismissed", SHA["2"]: "pending"}

    # Superseded, then applied: statuses follow, still one pending at most.
    platform_mirror.upsert_update(update_row({**old, "status": {"state": "Superseded"}}))
    platform_mirror.upsert_update(update_row({**new, "status": {"state": "Applied"}}))
    rows = dict(query(platform_mirror, "SELECT latest_sha, status FROM plugin_update_queue"))
    assert rows == {SHA["1"]: "dismissed", SHA["2"]: "applied"}


def test_concurrent_pending_upserts_never_make_two_pending_rows(platform_mirror: Mirror) -> None:
    pairs = [(ws(), "review"), (ws(), "lint")]
    updates = [
        update_row(plugin_update(w, plugin, SHA[digit], age=i))
        for w, plugin in pairs
        for i, digit in enumerate("123456789abc")
    ]
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def writer(offset: int) -> None:
        try:
            start.wait()
            for row in updates[offset::6]:
                platform_mirror.upsert_update(row)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert pending_per_pair(platform_mirror) == []
    assert len(query(platform_mirror, "SELECT 1 FROM plugin_update_queue")) == len(updates)
    # Whatever the order of arrival, the newest proposal of each pair is the pending one.
    newest = query(platform_mirror, "SELECT latest_sha FROM plugin_update_queue WHERE status = 'pending' ORDER BY 1")
    assert newest == [(SHA["c"],), (SHA["c"],)]


def test_delete_update_removes_its_row(mirror: Mirror) -> None:
    obj = plugin_update(ws(), "review", SHA["1"])
    mirror.upsert_update(update_row(obj))
    mirror.delete_update(obj["metadata"]["uid"])
    assert query(mirror, "SELECT * FROM plugin_update_queue") == []


# -- resync and diff ---------------------------------------------------------------------


def test_resync_makes_the_tables_match_the_cluster_exactly(platform_mirror: Mirror) -> None:
    w1, w2 = ws(), ws()
    kept = plugin_install(w1, "review", sha=SHA["1"])
    changed = plugin_install(w1, "lint", sha=SHA["2"])
    gone = plugin_install(w2, "old", sha=SHA["3"])
    superseded = plugin_update(w1, "review", SHA["4"], age=0)
    pending = plugin_update(w1, "review", SHA["5"], age=1)
    vanished = plugin_update(w2, "old", SHA["6"])
    for obj in (kept, changed, gone):
        row = install_row(obj)
        assert row is not None
        platform_mirror.upsert_install(row)
    for obj in (superseded, vanished):
        platform_mirror.upsert_update(update_row(obj))

    # The cluster moved on while nobody mirrored it.
    changed = plugin_install(w1, "lint", sha=SHA["7"])
    added = plugin_install(w2, "new")
    superseded = {**superseded, "status": {"state": "Superseded"}}
    installs, updates = [kept, changed, added], [superseded, pending]
    desired = rows_from_objects(installs, updates)

    result = platform_mirror.resync(desired.installs.values(), desired.updates.values())
    assert len(result.corrected) == 6
    assert platform_mirror.diff(desired.installs.values(), desired.updates.values()) == []
    assert dict(query(platform_mirror, "SELECT latest_sha, status FROM plugin_update_queue")) == {
        SHA["4"]: "dismissed",
        SHA["5"]: "pending",
    }
    assert dict(query(platform_mirror, "SELECT plugin_name, installed_sha FROM workspace_plugins")) == {
        "review": SHA["1"],
        "lint": SHA["7"],
        "new": None,
    }
    # A second pass finds nothing to do.
    assert platform_mirror.resync(desired.installs.values(), desired.updates.values()).corrected == ()


def test_resync_replaces_a_pending_row_the_cluster_no_longer_has(platform_mirror: Mirror) -> None:
    w = ws()
    platform_mirror.upsert_update(update_row(plugin_update(w, "review", SHA["1"])))
    newer = plugin_update(w, "review", SHA["2"])
    desired = rows_from_objects([], [newer])
    platform_mirror.resync(desired.installs.values(), desired.updates.values())
    assert query(platform_mirror, "SELECT id::text, status FROM plugin_update_queue") == [
        (newer["metadata"]["uid"], "pending")
    ]


def test_db_check_reports_differences_and_in_sync(mirror: Mirror) -> None:
    w = ws()
    install = plugin_install(w, "review", sha=SHA["1"])
    update = plugin_update(w, "review", SHA["2"])
    stray = plugin_install(ws(), "stray")
    for obj in (install, stray):
        row = install_row(obj)
        assert row is not None
        mirror.upsert_install(row)

    differences, notes = cli_db.compare(mirror, [install, plugin_install("team-b", "x")], [update])
    out, err = io.StringIO(), io.StringIO()
    assert cli_db.report(differences, notes, out, err) == cli_db.EXIT_DIFFERENT
    assert "out of sync (2 difference(s))" in out.getvalue()
    assert f"plugin_update_queue: missing row id={update['metadata']['uid']}" in out.getvalue()
    assert "workspace_plugins: stale row" in out.getvalue() and "plugin=stray" in out.getvalue()
    assert "team-b/x: workspace is not a UUID" in err.getvalue()

    mirror.delete_install(stray["spec"]["workspace"], "stray")
    mirror.upsert_update(update_row(update))
    out = io.StringIO()
    assert cli_db.report(*cli_db.compare(mirror, [install], [update]), out, io.StringIO()) == cli_db.EXIT_OK
    assert out.getvalue() == "in sync\n"


def test_db_upgrade_command(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url.replace("postgresql+psycopg://", "postgresql://"))
    out = io.StringIO()
    assert cli_db.main(["db", "upgrade"], out=out) == 0
    assert "mirror tables up to date" in out.getvalue()
    m = Mirror(database_url)
    try:
        assert query(m, "SELECT version_num FROM plugin_operator_alembic_version") == [("0001",)]
    finally:
        m.close()


def test_db_commands_without_database_url_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    err = io.StringIO()
    assert cli_db.main(["check"], err=err) == cli_db.EXIT_CANNOT_CHECK
    assert "DATABASE_URL is not set" in err.getvalue()


# -- the service: disabled, outages, restarts -----------------------------------------------


async def test_without_database_url_the_mirror_is_off_and_silent(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="plugin_operator.mirror"):
        service = MirrorService.from_settings(Settings.from_env({}))
        assert not service.enabled and not service.needs_resync
        w = ws()
        await service.install_changed(plugin_install(w, "review"))
        await service.install_deleted(plugin_install(w, "review"))
        await service.update_changed(plugin_update(w, "review", SHA["1"]))
        await service.update_deleted(plugin_update(w, "review", SHA["1"]))
        assert await service.resync([], [])
        await service.close()
    assert [r.getMessage() for r in caplog.records] == ["Postgres mirror off: DATABASE_URL is not set"]


def _state(installs: dict[str, dict[str, Any]], updates: dict[str, dict[str, Any]]) -> Any:
    async def list_objects() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return list(installs.values()), list(updates.values())

    return list_objects


async def test_an_outage_never_raises_and_a_resync_catches_up(
    private_postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    pg = private_postgres_server
    url = pg.create_database("mirror")
    service = MirrorService.from_url(url)
    assert service.mirror is not None
    service.mirror.upgrade()
    w = ws()
    installs = {"review": plugin_install(w, "review", sha=SHA["1"])}
    updates: dict[str, dict[str, Any]] = {}
    assert await service.resync_if_needed(_state(installs, updates))
    assert not service.needs_resync

    pg.stop()
    with caplog.at_level(logging.WARNING, logger="plugin_operator.mirror"):
        installs["lint"] = plugin_install(w, "lint", sha=SHA["2"])
        await service.install_changed(installs["lint"])
        updates["u"] = plugin_update(w, "review", SHA["3"])
        await service.update_changed(updates["u"])
        await service.install_deleted(installs.pop("review"))
        await asyncio.wait_for(service.flush(), 30)  # writes are queued: the writer meets the outage
        assert service.needs_resync
        assert not await service.resync_if_needed(_state(installs, updates))  # still down: no raise
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1

    pg.start()
    assert await service.resync_if_needed(_state(installs, updates))
    assert not service.needs_resync
    desired = rows_from_objects(installs.values(), updates.values())
    assert service.mirror.diff(desired.installs.values(), desired.updates.values()) == []
    await service.close()


async def test_a_restart_in_the_middle_of_writes_loses_nothing(private_postgres_server: PostgresServer) -> None:
    pg = private_postgres_server
    url = pg.create_database("mirror")
    service = MirrorService.from_url(url, retry_writes_after=0.0)
    assert service.mirror is not None
    service.mirror.upgrade()
    installs: dict[str, dict[str, Any]] = {}
    updates: dict[str, dict[str, Any]] = {}
    workspaces = [ws() for _ in range(3)]
    assert await service.resync_if_needed(_state(installs, updates))

    # Each workspace gets a plugin, then upstream moves three times: each new
    # proposal supersedes the previous one. The server goes down halfway.
    step = 0
    for round_ in range(3):
        for w in workspaces:
            if round_ == 0:
                installs[w] = plugin_install(w, "review", sha=SHA["0"])
                await service.install_changed(installs[w])
            previous = updates.get(f"{w}/{round_ - 1}")
            if previous is not None:
                updates[f"{w}/{round_ - 1}"] = {**previous, "status": {"state": "Superseded"}}
                await service.update_changed(updates[f"{w}/{round_ - 1}"])
            updates[f"{w}/{round_}"] = plugin_update(w, "review", SHA[str(round_ + 1)], age=round_)
            await service.update_changed(updates[f"{w}/{round_}"])
            await asyncio.wait_for(service.flush(), 30)
            step += 1
            if step == 4:
                pg.stop()
            if step == 7:
                pg.start()

    # Writes went through again after the restart (pre-ping reconnects)…
    assert pending_per_pair(service.mirror) == []
    # …and the resync fills what the outage dropped.
    assert service.needs_resync
    assert await service.resync_if_needed(_state(installs, updates))
    desired = rows_from_objects(installs.values(), updates.values())
    assert service.mirror.diff(desired.installs.values(), desired.updates.values()) == []
    assert pending_per_pair(service.mirror) == []
    pending = query(service.mirror, "SELECT latest_sha FROM plugin_update_queue WHERE status = 'pending'")
    assert pending == [(SHA["3"],)] * 3
    await service.close()


def test_mirror_writes_recover_after_a_server_restart(private_postgres_server: PostgresServer) -> None:
    pg = private_postgres_server
    m = Mirror(pg.create_database("mirror"))
    try:
        m.upgrade()
        row = InstallRow(ws(), "review", "local://review")
        pg.stop()
        with pytest.raises(Exception, match=r"(?i)connect|connection|refused"):
            m.upsert_install(row)
        pg.start()
        assert m.upsert_install(row)
        with psycopg.connect(pg.conninfo("mirror")) as conn:
            assert conn.execute("SELECT count(*) FROM workspace_plugins").fetchone() == (1,)
    finally:
        m.close()


async def test_the_background_loop_migrates_and_catches_up_at_start(database_url: str) -> None:
    settings = Settings.from_env({"DATABASE_URL": database_url})
    service = MirrorService.from_settings(settings)  # tables created by its first resync
    assert service.mirror is not None and service.needs_resync  # a new service starts dirty
    w = ws()
    service.start(_state({"review": plugin_install(w, "review")}, {}), interval=0.05)
    try:
        for _ in range(200):
            if not service.needs_resync:
                break
            await asyncio.sleep(0.05)
        assert not service.needs_resync
        assert query(service.mirror, "SELECT workspace_id::text, plugin_name FROM workspace_plugins") == [(w, "review")]
    finally:
        await service.close()


# -- the write queue: off the reconcile path (issue: Faults) ----------------------


def _proxied(pg: PostgresServer, proxy: FaultProxy, database: str) -> str:
    return pg.url_for(database).replace(f":{pg.port}/", f":{proxy.port}/")


async def test_writes_never_wait_for_a_slow_database_and_the_latest_state_wins(
    private_postgres_server: PostgresServer,
) -> None:
    pg = private_postgres_server
    pg.create_database("mirror")
    with FaultProxy("127.0.0.1", pg.port) as proxy:
        service = MirrorService.from_url(_proxied(pg, proxy, "mirror"))
        assert service.mirror is not None
        service.mirror.upgrade()
        w = ws()
        assert await service.resync_if_needed(_state({}, {}))
        proxy.delay = 1.0  # every reply of the server arrives a second late
        started = time.monotonic()
        for n in range(20):  # one row changing 20 times, as a burst of reconciles
            await service.install_changed(plugin_install(w, "review", sha=SHA[f"{n % 10}"]))
        await service.install_changed(plugin_install(w, "review", sha=SHA["9"]))
        assert time.monotonic() - started < 0.5, "a handler waited for the database"
        assert service.pending <= 1  # coalesced per row: the latest state wins
        await asyncio.wait_for(service.flush(), 60)
        proxy.delay = 0.0
        assert query(service.mirror, "SELECT installed_sha FROM workspace_plugins") == [(SHA["9"],)]
        assert not service.needs_resync
        await service.close()


async def test_a_full_queue_drops_to_dirty_and_the_resync_makes_the_tables_exact(
    private_postgres_server: PostgresServer,
) -> None:
    pg = private_postgres_server
    pg.create_database("mirror")
    with FaultProxy("127.0.0.1", pg.port) as proxy:
        service = MirrorService.from_url(_proxied(pg, proxy, "mirror"), max_pending=3)
        assert service.mirror is not None
        service.mirror.upgrade()
        assert await service.resync_if_needed(_state({}, {}))
        proxy.delay = 0.5
        w = ws()
        installs = {f"p{n}": plugin_install(w, f"p{n}", sha=SHA["1"]) for n in range(10)}
        for obj in installs.values():
            await service.install_changed(obj)
        assert service.pending <= 3 and service.needs_resync
        proxy.delay = 0.0
        assert await service.resync_if_needed(_state(installs, {}))
        await asyncio.wait_for(service.flush(), 30)
        desired = rows_from_objects(installs.values(), [])
        assert service.mirror.diff(desired.installs.values(), desired.updates.values()) == []
        await service.close()


async def test_a_refused_write_is_counted_and_said_on_the_object(platform_database_url: str) -> None:
    from plugin_operator.mirror.service import WRITE_FAILURES

    service = MirrorService.from_url(platform_database_url)
    assert service.mirror is not None
    service.mirror.upgrade()
    told: list[tuple[str, str, str, str]] = []

    def emitter(obj: Any) -> Any:
        return lambda type_, reason, message: told.append((obj["metadata"]["name"], type_, reason, message))

    service.report_to(emitter)
    w = ws()
    assert await service.resync_if_needed(_state({}, {}))
    with service.mirror.engine.begin() as conn:  # the platform's own rule refuses this row
        conn.execute(
            text(
                "CREATE FUNCTION refuse_review() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.plugin_name = 'review' THEN RAISE EXCEPTION 'platform refuses %', NEW.plugin_name; END IF; "
                "RETURN NEW; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON workspace_plugins "
                "FOR EACH ROW EXECUTE FUNCTION refuse_review()"
            )
        )
    before = WRITE_FAILURES.labels("refused")._value.get()
    installs = {"review": plugin_install(w, "review", sha=SHA["1"]), "lint": plugin_install(w, "lint", sha=SHA["1"])}
    for obj in installs.values():
        await service.install_changed(obj)
    await asyncio.wait_for(service.flush(), 30)
    assert WRITE_FAILURES.labels("refused")._value.get() == before + 1
    assert [(n, t, r) for n, t, r, _ in told] == [("review", "Warning", "MirrorWriteFailed")]
    assert "platform refuses review" in told[0][3]
    assert query(service.mirror, "SELECT plugin_name FROM workspace_plugins") == [("lint",)]  # the others go on
    assert service.needs_resync
    with service.mirror.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER refuse ON workspace_plugins"))
    assert await service.resync_if_needed(_state(installs, {}))
    desired = rows_from_objects(installs.values(), [])
    assert service.mirror.diff(desired.installs.values(), desired.updates.values()) == []
    await service.close()


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("mysql://app:s3cret@db:3306/platform", "unsupported scheme 'mysql'"),
        ("postgresql://app:s3cret@db:5x32/platform", "not a valid URL"),
        ("postgresql://app:s3cret@/platform", "no host"),
        ("app:s3cret@db/platform", "not a URL"),
    ],
)
@pytest.mark.parametrize("command", [["run"], ["db", "check"]], ids=["run", "db-check"])
def test_a_bad_database_url_stops_the_cli_naming_the_variable(url: str, said: str, command: list[str]) -> None:
    env = {**os.environ, "DATABASE_URL": url, "KUBECONFIG": "/nonexistent", "PLUGIN_METRICS_PORT": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "plugin_operator", *command], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "DATABASE_URL" in done.stderr and said in done.stderr
    assert "s3cret" not in done.stdout + done.stderr
