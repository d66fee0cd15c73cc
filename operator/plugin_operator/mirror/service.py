"""The mirror as the handlers see it: async, forgiving, self-healing.

    # on.startup (handlers.startup): build once; the loop also migrates and catches up
    mirror = MirrorService.from_settings(settings)          # disabled without DATABASE_URL
    mirror.start(list_objects, full_resync_every=settings.reconcile_interval)
    # reconciles
    await mirror.install_changed(body, status=new_status)
    await mirror.install_deleted(body)                      # from the finalizer
    await mirror.update_changed(body, status=new_status)
    await mirror.update_deleted(body)
    # on.cleanup
    await mirror.close()

`list_objects` is an async callable returning (all PluginInstalls, all
PluginUpdates) of every namespace as dicts, e.g. two `Kube.list` calls.

Kubernetes is the source of truth and the mirror never blocks an install, an
uninstall or an approval (design §1, §7): no method raises. A failed write
logs one warning, marks the mirror dirty and turns later writes into no-ops
(so an outage costs one connect timeout, not one per handler); the resync
loop then probes the database and, once it answers, rewrites both tables from
a fresh listing of the cluster. Catching up after an operator restart uses
the same path: a new service starts dirty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from plugin_operator.config import Settings
from plugin_operator.domain.mirror_rows import (
    InstallRow,
    UnmappableObject,
    install_row,
    rows_from_objects,
    update_row,
)
from plugin_operator.mirror.store import Mirror, ResyncResult
from plugin_operator.mirror.urls import safe_url

logger = logging.getLogger(__name__)

Objects = Sequence[Mapping[str, Any]]
# Lists all PluginInstalls and all PluginUpdates (every namespace).
ListObjects = Callable[[], Awaitable[tuple[Objects, Objects]]]
T = TypeVar("T")


def _with_status(obj: Mapping[str, Any], status: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return obj if status is None else {**obj, "status": status}


class MirrorService:
    """See the module docstring. Construct with `from_settings`, `from_url`
    or `disabled`."""

    def __init__(
        self, mirror: Mirror | None, *, upgrade_schema: bool = False, retry_writes_after: float = 30.0
    ) -> None:
        self._mirror = mirror
        self._schema_pending = upgrade_schema  # run the migrations before the first resync
        self._needs_resync = mirror is not None  # catch up with what changed while we were away
        self._outage_since: float | None = None
        self._retry_writes_after = retry_writes_after
        self._lock = asyncio.Lock()  # one resync at a time, never interleaved with a write
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def disabled(cls) -> MirrorService:
        return cls(None)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> MirrorService:
        logger.info("Postgres mirror: %s", safe_url(url))
        return cls(Mirror(url), **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, *, upgrade_schema: bool = True) -> MirrorService:
        """Off without DATABASE_URL. By default the first resync also brings
        the tables up to date (idempotent, only what is absent, safe with
        several replicas); pass upgrade_schema=False where `plugin-operator db
        upgrade` runs as a separate step."""
        if not settings.database_url:
            logger.info("Postgres mirror off: DATABASE_URL is not set")
            return cls.disabled()
        return cls.from_url(settings.database_url, upgrade_schema=upgrade_schema)

    @property
    def enabled(self) -> bool:
        return self._mirror is not None

    @property
    def needs_resync(self) -> bool:
        """True while the tables may lag the cluster (start-up, after a failed write)."""
        return self._needs_resync

    @property
    def mirror(self) -> Mirror | None:
        return self._mirror

    # -- writes from the handlers ---------------------------------------------

    async def install_changed(self, obj: Mapping[str, Any], status: Mapping[str, Any] | None = None) -> None:
        """Mirror a PluginInstall; pass the status about to be written, if the
        body's is stale. No row yet (no plugin name, lost a Conflict): no-op."""
        row = install_row(_with_status(obj, status))
        if row is not None and self._mirror is not None:
            await self._write("upsert install", self._mirror.upsert_install, row)

    async def install_deleted(self, obj: Mapping[str, Any]) -> None:
        """Drop the row of a PluginInstall going away (from its finalizer)."""
        row = install_row(obj)
        if row is not None and self._mirror is not None:
            await self._write("delete install", self._delete_install, row)

    async def update_changed(self, obj: Mapping[str, Any], status: Mapping[str, Any] | None = None) -> None:
        """Mirror a PluginUpdate (created, state changed)."""
        if self._mirror is None:
            return
        try:
            row = update_row(_with_status(obj, status))
        except UnmappableObject as err:
            logger.warning("not mirrored: %s", err)
            return
        await self._write("upsert update", self._mirror.upsert_update, row)

    async def update_deleted(self, obj: Mapping[str, Any]) -> None:
        uid = (obj.get("metadata") or {}).get("uid")
        if uid and self._mirror is not None:
            await self._write("delete update", self._mirror.delete_update, str(uid))

    def _delete_install(self, row: InstallRow) -> None:
        assert self._mirror is not None
        self._mirror.delete_install(row.workspace_id, row.plugin_name)

    def _down(self) -> bool:
        return self._outage_since is not None and time.monotonic() - self._outage_since < self._retry_writes_after

    async def _write(self, what: str, call: Callable[[T], object], arg: T) -> None:
        async with self._lock:
            if self._down():  # checked under the lock: writers queued behind a failing one skip too
                logger.debug("mirror down: %s skipped, the resync will catch up", what)
                return
            try:
                await asyncio.to_thread(call, arg)
            except Exception as err:
                self._failed(what, err)

    def _failed(self, what: str, err: Exception) -> None:
        self._needs_resync = True
        if self._outage_since is None:
            logger.warning(
                "Postgres mirror: %s failed (%s: %s); writes are skipped until a resync succeeds",
                what,
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
            )
        else:
            logger.debug("Postgres mirror: %s failed again: %s", what, err)
        self._outage_since = time.monotonic()

    # -- resync -----------------------------------------------------------------

    async def resync(self, installs: Objects, updates: Objects) -> bool:
        """Make the tables match the given listing; True when they do."""
        if self._mirror is None:
            return True
        desired = rows_from_objects(installs, updates)
        mirror = self._mirror

        def upgrade_and_resync() -> ResyncResult:
            if self._schema_pending:
                mirror.upgrade()
                self._schema_pending = False
            return mirror.resync(desired.installs.values(), desired.updates.values())

        async with self._lock:
            try:
                result = await asyncio.to_thread(upgrade_and_resync)
            except Exception as err:
                self._failed("resync", err)
                return False
        recovered = self._outage_since is not None
        self._needs_resync = False
        self._outage_since = None
        for reason in result.skipped:
            logger.warning("not mirrored: %s", reason)
        level = logging.INFO if recovered or result.corrected else logging.DEBUG
        logger.log(
            level,
            "Postgres mirror %s: %d difference(s) corrected",
            "back and resynced" if recovered else "resynced",
            len(result.corrected),
        )
        return True

    async def resync_if_needed(self, list_objects: ListObjects) -> bool:
        """One pass: when dirty, list the cluster and resync. True when clean."""
        if self._mirror is None or not self._needs_resync:
            return True
        try:
            installs, updates = await list_objects()
        except Exception as err:
            logger.warning("Postgres mirror resync postponed: listing the cluster failed: %s", err)
            return False
        return await self.resync(installs, updates)

    async def run(
        self,
        list_objects: ListObjects,
        *,
        interval: float = 10.0,
        max_interval: float = 300.0,
        full_resync_every: float | None = None,
    ) -> None:
        """Forever: resync when dirty (backing off while the database is
        down), and every `full_resync_every` seconds regardless, if given."""
        if self._mirror is None:
            return
        delay = interval
        last_full = time.monotonic()
        while True:
            if full_resync_every and time.monotonic() - last_full >= full_resync_every:
                self._needs_resync = True
            if self._needs_resync:
                if await self.resync_if_needed(list_objects):
                    delay, last_full = interval, time.monotonic()
                else:
                    delay = min(delay * 2, max_interval)
            await asyncio.sleep(delay if self._needs_resync else interval)

    def start(self, list_objects: ListObjects, **kwargs: Any) -> None:
        """Run `run()` in the background (from an on.startup handler)."""
        if self._mirror is not None and self._task is None:
            self._task = asyncio.create_task(self.run(list_objects, **kwargs), name="postgres-mirror-resync")

    async def close(self) -> None:
        """Stop the loop and close the connections (from an on.cleanup handler)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._mirror is not None:
            await asyncio.to_thread(self._mirror.close)
