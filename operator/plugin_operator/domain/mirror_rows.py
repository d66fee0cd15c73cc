"""PluginInstall / PluginUpdate objects -> rows of the platform's tables
(design §7), and the comparison of the rows the cluster implies with the rows
the database holds. Pure: plain dicts in, frozen dataclasses and strings out.

- one `workspace_plugins` row per PluginInstall that has a plugin name (set in
  status once the spec is valid); the loser of a name Conflict has none;
- one `plugin_update_queue` row per PluginUpdate, `id = metadata.uid`;
- an unknown SHA is None (NULL), never "";
- at most one `pending` row per workspace and plugin: when the cluster implies
  two, the newest wins and the others are `dismissed` (the partial unique index
  would refuse them anyway).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

PENDING = "pending"
APPLIED = "applied"
DISMISSED = "dismissed"

# PluginUpdate status.state -> plugin_update_queue.status. A Failed apply is
# retried, so it is still waiting for the platform's eyes: pending.
QUEUE_STATUS: Mapping[str, str] = {
    "Pending": PENDING,
    "Applying": PENDING,
    "Failed": PENDING,
    "Applied": APPLIED,
    "Dismissed": DISMISSED,
    "Superseded": DISMISSED,
    # Not (or no longer) a proposal of this operator: nothing will be installed.
    "Rejected": DISMISSED,
}


class UnmappableObject(ValueError):
    """The object lacks what its row needs; the message says what."""


@dataclass(frozen=True)
class InstallRow:
    workspace_id: str
    plugin_name: str
    source_raw: str
    tracked_ref: str = "none"
    installed_sha: str | None = None
    # Only used when the row is first inserted; the database keeps the first value.
    installed_at: datetime | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.workspace_id, self.plugin_name)


@dataclass(frozen=True)
class UpdateRow:
    id: str
    workspace_id: str
    plugin_name: str
    tracked_ref: str
    current_sha: str
    latest_sha: str
    status: str = PENDING
    created_at: datetime | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.workspace_id, self.plugin_name)


def _section(obj: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = obj.get(name)
    return value if isinstance(value, Mapping) else {}


def _text(value: object) -> str | None:
    """A non-empty string, else None (so "" never reaches a SHA column)."""
    return value if isinstance(value, str) and value.strip() else None


def _timestamp(value: object) -> datetime | None:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    # Kubernetes writes UTC ("…Z"); a naive time is taken as UTC too.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _lost_a_conflict(status: Mapping[str, Any]) -> bool:
    conditions = status.get("conditions")
    if not isinstance(conditions, list):
        return False
    return any(
        isinstance(c, Mapping)
        and c.get("type") == "Stalled"
        and c.get("status") == "True"
        and c.get("reason") == "Conflict"
        for c in conditions
    )


def install_row(obj: Mapping[str, Any]) -> InstallRow | None:
    """The `workspace_plugins` row of a PluginInstall; None while it has no
    plugin name yet (invalid or not reconciled) or when it lost a Conflict
    (the row belongs to the other PluginInstall)."""
    spec, status = _section(obj, "spec"), _section(obj, "status")
    workspace = _text(spec.get("workspace"))
    plugin = _text(status.get("pluginName"))
    source = _text(status.get("sourceNormalized")) or _text(spec.get("source"))
    if workspace is None or plugin is None or source is None or _lost_a_conflict(status):
        return None
    return InstallRow(
        workspace_id=workspace,
        plugin_name=plugin,
        source_raw=source,
        tracked_ref=_text(status.get("trackedRef")) or _text(spec.get("track")) or "none",
        installed_sha=_text(status.get("installedSHA")),
        installed_at=_timestamp(status.get("installedAt")),
    )


def queue_status(state: object) -> str:
    """status.state -> queue status; a PluginUpdate without a state yet is pending."""
    if state is None or state == "":
        return PENDING
    if not isinstance(state, str) or state not in QUEUE_STATUS:
        raise UnmappableObject(f"unknown PluginUpdate state {state!r}")
    return QUEUE_STATUS[state]


def update_row(obj: Mapping[str, Any]) -> UpdateRow:
    """The `plugin_update_queue` row of a PluginUpdate; raises UnmappableObject
    when a field the table needs is missing."""
    metadata, spec, status = _section(obj, "metadata"), _section(obj, "spec"), _section(obj, "status")
    required = {
        "metadata.uid": metadata.get("uid"),
        "spec.workspace": spec.get("workspace"),
        "spec.plugin": spec.get("plugin"),
        "spec.trackedRef": spec.get("trackedRef"),
        "spec.fromSHA": spec.get("fromSHA"),
        "spec.toSHA": spec.get("toSHA"),
    }
    values = {name: _text(value) for name, value in required.items()}
    missing = sorted(name for name, value in values.items() if value is None)
    if missing:
        name = metadata.get("name", "?")
        raise UnmappableObject(f"PluginUpdate {name}: {', '.join(missing)} missing")
    return UpdateRow(
        id=str(values["metadata.uid"]),
        workspace_id=str(values["spec.workspace"]),
        plugin_name=str(values["spec.plugin"]),
        tracked_ref=str(values["spec.trackedRef"]),
        current_sha=str(values["spec.fromSHA"]),
        latest_sha=str(values["spec.toSHA"]),
        status=queue_status(status.get("state")),
        created_at=_timestamp(metadata.get("creationTimestamp")),
    )


def canonical_uuid(value: str) -> str | None:
    """The canonical (lower-case, hyphenated) form of a UUID, else None."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        return None


@dataclass(frozen=True)
class DesiredState:
    """The rows the cluster implies, keyed, plus why some objects have none."""

    installs: Mapping[tuple[str, str], InstallRow]
    updates: Mapping[str, UpdateRow]
    skipped: tuple[str, ...] = ()


def _newest_first(row: UpdateRow) -> tuple[bool, float, str]:
    # No creation time yet means "just created": the newest.
    created = row.created_at
    return (created is not None, -created.timestamp() if created else 0.0, row.id)


def desired_state(installs: Iterable[InstallRow], updates: Iterable[UpdateRow]) -> DesiredState:
    """Canonical workspace ids and uids; rows that cannot be stored are left
    out with a reason; one row per install key (the first wins); at most one
    pending queue row per workspace and plugin (the newest wins)."""
    skipped: list[str] = []
    by_key: dict[tuple[str, str], InstallRow] = {}
    for row in installs:
        workspace = canonical_uuid(row.workspace_id)
        if workspace is None:
            skipped.append(f"PluginInstall {row.workspace_id}/{row.plugin_name}: workspace is not a UUID")
            continue
        row = dataclasses.replace(row, workspace_id=workspace)
        if row.key in by_key:
            skipped.append(f"PluginInstall {workspace}/{row.plugin_name}: a second install of the same plugin")
            continue
        by_key[row.key] = row

    by_id: dict[str, UpdateRow] = {}
    for update in updates:
        uid, workspace = canonical_uuid(update.id), canonical_uuid(update.workspace_id)
        if uid is None or workspace is None:
            what = "uid" if uid is None else "workspace"
            skipped.append(
                f"PluginUpdate {update.id} ({update.workspace_id}/{update.plugin_name}): {what} is not a UUID"
            )
            continue
        by_id[uid] = dataclasses.replace(update, id=uid, workspace_id=workspace)

    pending: dict[tuple[str, str], list[UpdateRow]] = {}
    for update in by_id.values():
        if update.status == PENDING:
            pending.setdefault(update.key, []).append(update)
    for rows in pending.values():
        for older in sorted(rows, key=_newest_first)[1:]:
            by_id[older.id] = dataclasses.replace(older, status=DISMISSED)
    return DesiredState(installs=by_key, updates=by_id, skipped=tuple(skipped))


def rows_from_objects(
    install_objects: Iterable[Mapping[str, Any]], update_objects: Iterable[Mapping[str, Any]]
) -> DesiredState:
    """The desired rows of a listing of PluginInstalls and PluginUpdates."""
    skipped: list[str] = []
    installs = [row for row in map(install_row, install_objects) if row is not None]
    updates: list[UpdateRow] = []
    for obj in update_objects:
        try:
            updates.append(update_row(obj))
        except UnmappableObject as err:
            skipped.append(str(err))
    state = desired_state(installs, updates)
    return dataclasses.replace(state, skipped=(*skipped, *state.skipped))


_INSTALL_FIELDS = ("source_raw", "tracked_ref", "installed_sha")
_UPDATE_FIELDS = ("workspace_id", "plugin_name", "tracked_ref", "current_sha", "latest_sha", "status")


def _changed(fields: Iterable[str], want: object, have: object) -> list[str]:
    lines = []
    for name in fields:
        wanted, held = getattr(want, name), getattr(have, name)
        if wanted != held:
            lines.append(f"{name} is {_sql(held)} in the database, {_sql(wanted)} in the cluster")
    return lines


def _sql(value: object) -> str:
    return "NULL" if value is None else repr(value)


def diff_rows(
    desired: DesiredState, actual_installs: Iterable[InstallRow], actual_updates: Iterable[UpdateRow]
) -> list[str]:
    """Readable differences between the rows the cluster implies and the
    rows the database holds; empty when they match."""
    lines: list[str] = []
    have_installs = {row.key: row for row in actual_installs}
    for key in sorted(desired.installs.keys() | have_installs.keys()):
        want, have = desired.installs.get(key), have_installs.get(key)
        where = f"workspace={key[0]} plugin={key[1]}"
        if have is None:
            lines.append(f"workspace_plugins: missing row {where} (the PluginInstall exists)")
        elif want is None:
            lines.append(f"workspace_plugins: stale row {where} (no PluginInstall)")
        else:
            lines += [f"workspace_plugins {where}: {change}" for change in _changed(_INSTALL_FIELDS, want, have)]

    have_updates = {row.id: row for row in actual_updates}
    for uid in sorted(desired.updates.keys() | have_updates.keys()):
        wanted, held = desired.updates.get(uid), have_updates.get(uid)
        if held is None and wanted is not None:
            where = f"workspace={wanted.workspace_id} plugin={wanted.plugin_name}"
            lines.append(f"plugin_update_queue: missing row id={uid} {where} (the PluginUpdate exists)")
        elif wanted is None and held is not None:
            where = f"workspace={held.workspace_id} plugin={held.plugin_name}"
            lines.append(f"plugin_update_queue: stale row id={uid} {where} (no PluginUpdate)")
        elif wanted is not None and held is not None:
            lines += [f"plugin_update_queue id={uid}: {change}" for change in _changed(_UPDATE_FIELDS, wanted, held)]
    return lines
