"""Writes of the mirror: one short transaction per change, and a resync that
makes both tables match the cluster in one transaction.

Blocking (a sync engine on psycopg 3); the handlers use it through
`MirrorService`, which runs each call in a thread and absorbs outages.

Workspaces: where our tables carry a foreign key to `workspaces(id)` (the
platform's schema), a workspace the platform does not know yet gets a bare
row `INSERT INTO workspaces (id) ... ON CONFLICT DO NOTHING` in the same
transaction, so a PluginInstall is mirrored even when it is applied before
the platform creates its workspace. If the platform's table refuses a bare
row (a NOT NULL column without default), rows of unknown workspaces are
skipped with a warning instead. Caveat: a workspace the platform deletes
while PluginInstalls for it still exist comes back as a bare row on the next
write or resync; Kubernetes is the source of truth.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from psycopg.errors import UniqueViolation
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    create_engine,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError

from plugin_operator.domain.mirror_rows import (
    DISMISSED,
    PENDING,
    DesiredState,
    InstallRow,
    UpdateRow,
    canonical_uuid,
    desired_state,
    diff_rows,
)
from plugin_operator.mirror import migrate
from plugin_operator.mirror.models import PluginUpdateQueue, WorkspacePlugin
from plugin_operator.mirror.urls import normalize_url, safe_url

logger = logging.getLogger(__name__)

_INSTALLS = cast(Table, WorkspacePlugin.__table__)
_QUEUE = cast(Table, PluginUpdateQueue.__table__)

_HAS_WORKSPACE_FK = text(
    """
    SELECT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE contype = 'f' AND confrelid = to_regclass('workspaces')
          AND conrelid IN (to_regclass('workspace_plugins'), to_regclass('plugin_update_queue'))
    )
    """
)
_INSERT_WORKSPACES = text("INSERT INTO workspaces (id) SELECT unnest(CAST(:ids AS uuid[])) ON CONFLICT DO NOTHING")
_KNOWN_WORKSPACES = text("SELECT id::text FROM workspaces WHERE id = ANY (CAST(:ids AS uuid[]))")
_LOCK_TABLES = text("LOCK TABLE workspace_plugins, plugin_update_queue IN SHARE ROW EXCLUSIVE MODE")
# Serialises writers of one workspace/plugin pair: two pending rows for the
# same pair can then never race into the partial unique index.
_LOCK_PAIR = text("SELECT pg_advisory_xact_lock(hashtextextended(:pair, 0))")
_PARTIAL_INDEX_RETRIES = 3


def _install_upsert() -> Any:
    stmt = insert(_INSTALLS).values(
        workspace_id=bindparam("v_workspace_id", type_=_INSTALLS.c.workspace_id.type),
        plugin_name=bindparam("v_plugin_name"),
        source_raw=bindparam("v_source_raw"),
        tracked_ref=bindparam("v_tracked_ref"),
        installed_sha=bindparam("v_installed_sha", type_=_INSTALLS.c.installed_sha.type),
        installed_at=func.coalesce(bindparam("v_installed_at", type_=_INSTALLS.c.installed_at.type), func.now()),
        updated_at=func.now(),
    )
    changing = ("source_raw", "tracked_ref", "installed_sha")
    # installed_at is the first install; updated_at moves only on a real change.
    return stmt.on_conflict_do_update(
        index_elements=["workspace_id", "plugin_name"],
        set_={**{name: stmt.excluded[name] for name in changing}, "updated_at": func.now()},
        where=or_(*(_INSTALLS.c[name].is_distinct_from(stmt.excluded[name]) for name in changing)),
    )


def _update_upsert() -> Any:
    stmt = insert(_QUEUE).values(
        id=bindparam("v_id", type_=_QUEUE.c.id.type),
        workspace_id=bindparam("v_workspace_id", type_=_QUEUE.c.workspace_id.type),
        plugin_name=bindparam("v_plugin_name"),
        tracked_ref=bindparam("v_tracked_ref"),
        current_sha=bindparam("v_current_sha"),
        latest_sha=bindparam("v_latest_sha"),
        status=bindparam("v_status"),
        created_at=func.coalesce(bindparam("v_created_at", type_=_QUEUE.c.created_at.type), func.now()),
    )
    changing = ("workspace_id", "plugin_name", "tracked_ref", "current_sha", "latest_sha", "status")
    # Keyed by id (= the PluginUpdate's uid). The partial unique index is kept
    # by dismissing older pending rows first, never by an upsert against it.
    return stmt.on_conflict_do_update(
        index_elements=["id"],
        set_={name: stmt.excluded[name] for name in changing},
        where=or_(*(_QUEUE.c[name].is_distinct_from(stmt.excluded[name]) for name in changing)),
    )


_INSTALL_UPSERT = _install_upsert()
_UPDATE_UPSERT = _update_upsert()


def _install_params(row: InstallRow) -> dict[str, Any]:
    return {
        "v_workspace_id": uuid.UUID(row.workspace_id),
        "v_plugin_name": row.plugin_name,
        "v_source_raw": row.source_raw,
        "v_tracked_ref": row.tracked_ref,
        "v_installed_sha": row.installed_sha or None,
        "v_installed_at": row.installed_at,
    }


def _update_params(row: UpdateRow) -> dict[str, Any]:
    return {
        "v_id": uuid.UUID(row.id),
        "v_workspace_id": uuid.UUID(row.workspace_id),
        "v_plugin_name": row.plugin_name,
        "v_tracked_ref": row.tracked_ref,
        "v_current_sha": row.current_sha,
        "v_latest_sha": row.latest_sha,
        "v_status": row.status,
        "v_created_at": row.created_at,
    }


@dataclass(frozen=True)
class ResyncResult:
    corrected: tuple[str, ...]  # the differences found (and fixed), readable
    skipped: tuple[str, ...]  # objects that cannot have a row, and why


class Mirror:
    """The mirror tables of one database. Methods raise SQLAlchemy errors on
    an outage; `MirrorService` is the forgiving face for the handlers."""

    def __init__(self, url: str | URL, *, connect_timeout: int = 3, statement_timeout_ms: int = 10000) -> None:
        self.url = normalize_url(url)
        self.connect_timeout = max(2, connect_timeout)
        self.statement_timeout = statement_timeout_ms / 1000
        self.engine: Engine = create_engine(
            self.url,
            pool_pre_ping=True,  # a restarted server must not cost a failed write
            pool_size=2,
            max_overflow=4,
            pool_timeout=self.connect_timeout,  # every connection stuck on a hung server: fail, do not queue
            connect_args={
                "connect_timeout": self.connect_timeout,
                # A server that stops answering (paused, a dead link) is noticed by keepalives.
                "keepalives": 1,
                "keepalives_idle": 5,
                "keepalives_interval": 2,
                "keepalives_count": 3,
                "options": f"-c statement_timeout={statement_timeout_ms} -c lock_timeout={statement_timeout_ms}",
                "application_name": "plugin-operator",
            },
        )

    def __repr__(self) -> str:
        return f"Mirror({safe_url(self.url)})"

    @property
    def call_timeout(self) -> float:
        """How long one write or resync may take before the caller gives up on
        it (client side: a paused or black-holed server answers nothing, not
        even a statement timeout)."""
        return self.connect_timeout + 4 * self.statement_timeout + 5

    def close(self) -> None:
        self.engine.dispose()

    def upgrade(self) -> None:
        migrate.upgrade(self.engine)

    # -- workspaces -----------------------------------------------------------

    def _writable_workspaces(self, conn: Connection, ids: set[str]) -> set[str]:
        """The workspace ids rows may be written for, creating bare workspace
        rows where a foreign key needs them (see the module docstring)."""
        if not ids or not conn.execute(_HAS_WORKSPACE_FK).scalar_one():
            return ids
        try:
            with conn.begin_nested():
                conn.execute(_INSERT_WORKSPACES, {"ids": sorted(ids)})
            return ids
        except IntegrityError as err:
            known = set(conn.execute(_KNOWN_WORKSPACES, {"ids": sorted(ids)}).scalars())
            logger.warning(
                "workspaces refuses bare rows (%s); rows of %d unknown workspace(s) are not mirrored",
                err.orig,
                len(ids - known),
            )
            return known

    # -- single writes --------------------------------------------------------

    def upsert_install(self, row: InstallRow) -> bool:
        """Insert or update the row of one PluginInstall; False when skipped."""
        workspace = canonical_uuid(row.workspace_id)
        if workspace is None:
            logger.warning("not mirrored: workspace %r of plugin %s is not a UUID", row.workspace_id, row.plugin_name)
            return False
        with self.engine.begin() as conn:
            if not self._writable_workspaces(conn, {workspace}):
                return False
            conn.execute(_INSTALL_UPSERT, _install_params(dataclasses.replace(row, workspace_id=workspace)))
        return True

    def delete_install(self, workspace_id: str, plugin_name: str) -> None:
        workspace = canonical_uuid(workspace_id)
        if workspace is None:
            return
        with self.engine.begin() as conn:
            conn.execute(
                delete(_INSTALLS).where(
                    _INSTALLS.c.workspace_id == uuid.UUID(workspace), _INSTALLS.c.plugin_name == plugin_name
                )
            )

    def upsert_update(self, row: UpdateRow) -> bool:
        """Insert or update the queue row of one PluginUpdate; a pending row
        dismisses an older pending row of the same workspace and plugin in the
        same transaction (and is itself stored as dismissed if a newer one is
        already pending). False when skipped."""
        uid, workspace = canonical_uuid(row.id), canonical_uuid(row.workspace_id)
        if uid is None or workspace is None:
            logger.warning("not mirrored: PluginUpdate %s has a non-UUID uid or workspace %r", row.id, row.workspace_id)
            return False
        row = dataclasses.replace(row, id=uid, workspace_id=workspace)
        for attempt in range(_PARTIAL_INDEX_RETRIES):
            try:
                return self._upsert_update_once(row)
            except IntegrityError as err:
                # Another writer (the platform, without our advisory lock) made
                # a pending row between our dismissal and our insert: go again.
                if not isinstance(err.orig, UniqueViolation) or attempt == _PARTIAL_INDEX_RETRIES - 1:
                    raise
        return False  # pragma: no cover

    def _upsert_update_once(self, row: UpdateRow) -> bool:
        with self.engine.begin() as conn:
            if not self._writable_workspaces(conn, {row.workspace_id}):
                return False
            conn.execute(_LOCK_PAIR, {"pair": f"{row.workspace_id}/{row.plugin_name}"})
            if row.status == PENDING:
                row = self._make_room_for_pending(conn, row)
            conn.execute(_UPDATE_UPSERT, _update_params(row))
        return True

    def _make_room_for_pending(self, conn: Connection, row: UpdateRow) -> UpdateRow:
        others = conn.execute(
            select(_QUEUE.c.id, _QUEUE.c.created_at)
            .where(
                _QUEUE.c.workspace_id == uuid.UUID(row.workspace_id),
                _QUEUE.c.plugin_name == row.plugin_name,
                _QUEUE.c.status == PENDING,
                _QUEUE.c.id != uuid.UUID(row.id),
            )
            .with_for_update()
        ).all()
        mine = row.created_at or datetime.now(UTC)
        if any(created > mine for _, created in others):
            # A late event of an older proposal: the newer pending one stays.
            return dataclasses.replace(row, status=DISMISSED)
        if others:
            conn.execute(update(_QUEUE).where(_QUEUE.c.id.in_([i for i, _ in others])).values(status=DISMISSED))
        return row

    def delete_update(self, uid: str) -> None:
        canonical = canonical_uuid(uid)
        if canonical is None:
            return
        with self.engine.begin() as conn:
            conn.execute(delete(_QUEUE).where(_QUEUE.c.id == uuid.UUID(canonical)))

    # -- whole state ------------------------------------------------------------

    def rows(self, conn: Connection | None = None) -> tuple[list[InstallRow], list[UpdateRow]]:
        """Everything the two tables hold, as rows."""
        if conn is None:
            with self.engine.connect() as own:
                return self.rows(own)
        installs = [
            InstallRow(
                workspace_id=str(r.workspace_id),
                plugin_name=r.plugin_name,
                source_raw=r.source_raw,
                tracked_ref=r.tracked_ref,
                installed_sha=r.installed_sha,
                installed_at=r.installed_at,
            )
            for r in conn.execute(select(_INSTALLS))
        ]
        updates = [
            UpdateRow(
                id=str(r.id),
                workspace_id=str(r.workspace_id),
                plugin_name=r.plugin_name,
                tracked_ref=r.tracked_ref,
                current_sha=r.current_sha,
                latest_sha=r.latest_sha,
                status=r.status,
                created_at=r.created_at,
            )
            for r in conn.execute(select(_QUEUE))
        ]
        return installs, updates

    def diff(self, installs: Iterable[InstallRow], updates: Iterable[UpdateRow]) -> list[str]:
        """Readable differences between the given cluster state and the tables."""
        have_installs, have_updates = self.rows()
        return diff_rows(desired_state(installs, updates), have_installs, have_updates)

    def resync(self, installs: Iterable[InstallRow], updates: Iterable[UpdateRow]) -> ResyncResult:
        """Make both tables match exactly the given cluster state, in one
        transaction: missing rows inserted, stale rows deleted, changed rows
        (statuses included) corrected. Rows already right are not touched."""
        desired = desired_state(installs, updates)
        with self.engine.begin() as conn:
            # Readers go on; other writers wait until the tables are consistent.
            conn.execute(_LOCK_TABLES)
            desired, unwritable = self._drop_unwritable(conn, desired)
            have_installs, have_updates = self.rows(conn)
            corrected = diff_rows(desired, have_installs, have_updates)
            if corrected:
                self._apply(conn, desired, have_installs, have_updates)
        return ResyncResult(corrected=tuple(corrected), skipped=(*desired.skipped, *unwritable))

    def _drop_unwritable(self, conn: Connection, desired: DesiredState) -> tuple[DesiredState, list[str]]:
        ids = {r.workspace_id for r in desired.installs.values()} | {r.workspace_id for r in desired.updates.values()}
        writable = self._writable_workspaces(conn, ids)
        if writable == ids:
            return desired, []
        lost = sorted(ids - writable)
        kept = DesiredState(
            installs={k: r for k, r in desired.installs.items() if r.workspace_id in writable},
            updates={k: r for k, r in desired.updates.items() if r.workspace_id in writable},
            skipped=desired.skipped,
        )
        return kept, [f"workspace {ws}: unknown to the platform's workspaces table" for ws in lost]

    def _apply(
        self,
        conn: Connection,
        desired: DesiredState,
        have_installs: Sequence[InstallRow],
        have_updates: Sequence[UpdateRow],
    ) -> None:
        held_installs = {r.key: r for r in have_installs}
        stale = [key for key in held_installs if key not in desired.installs]
        for workspace, plugin in stale:
            conn.execute(
                delete(_INSTALLS).where(
                    _INSTALLS.c.workspace_id == uuid.UUID(workspace), _INSTALLS.c.plugin_name == plugin
                )
            )
        writes = [_install_params(r) for key, r in desired.installs.items() if held_installs.get(key) != r]
        if writes:
            conn.execute(_INSTALL_UPSERT, writes)

        held_updates = {r.id: r for r in have_updates}
        stale_ids = [uuid.UUID(uid) for uid in held_updates if uid not in desired.updates]
        if stale_ids:
            conn.execute(delete(_QUEUE).where(_QUEUE.c.id.in_(stale_ids)))
        changed = [r for uid, r in desired.updates.items() if held_updates.get(uid) != r]
        # Rows leaving `pending` first, so the new pending row of a pair never
        # meets the old one in the partial unique index.
        for batch in ([r for r in changed if r.status != PENDING], [r for r in changed if r.status == PENDING]):
            if batch:
                conn.execute(_UPDATE_UPSERT, [_update_params(r) for r in batch])
