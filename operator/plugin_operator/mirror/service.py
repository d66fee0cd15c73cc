"""The mirror as the handlers see it: async, forgiving, self-healing.

    # on.startup (handlers.startup): build once; the loop also migrates and catches up
    mirror = MirrorService.from_settings(settings)          # disabled without DATABASE_URL
    mirror.report_to(deps.emitter)                           # Warning Events for refused writes
    mirror.start(list_objects, full_resync_every=settings.reconcile_interval)
    # reconciles: queue a row write and return at once
    await mirror.install_changed(body, status=new_status)
    await mirror.install_deleted(body)                      # from the finalizer
    await mirror.update_changed(body, status=new_status)
    await mirror.update_deleted(body)
    # on.cleanup
    await mirror.close()

`list_objects` is an async callable returning (all PluginInstalls, all
PluginUpdates) of every namespace as dicts, e.g. two `Kube.list` calls.

Kubernetes is the source of truth and the mirror never blocks an install, an
uninstall or an approval (design §1, §7): no method raises and no method
waits for the database. A handler's write only lands in a bounded dict of
pending row writes keyed by row (a PluginInstall's workspace/plugin pair, a
PluginUpdate's uid), so the latest state of a row wins and a burst costs one
write per row; one background writer task drains it, one short transaction
per row. A write that fails because the database is away (connect timeout,
statement timeout, connection lost) marks the mirror dirty, drops what is
pending and turns later writes into no-ops for a while (an outage costs one
connect timeout, not one per handler). A write the database refuses (a
revoked permission, a read-only table, a constraint or trigger of the
platform's own) counts in `plugin_operator_mirror_write_failures_total
{kind="refused"}` and posts a Warning Event `MirrorWriteFailed` on the
object, once per object and error. When the dict is full, writes are dropped
and the mirror goes dirty. The resync loop then probes the database and,
once it answers, rewrites both tables from a fresh listing of the cluster.
Catching up after an operator restart uses the same path: a new service
starts dirty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from plugin_operator.config import Settings
from plugin_operator.domain.mirror_rows import (
    InstallRow,
    UnmappableObject,
    install_row,
    rows_from_objects,
    update_row,
)
from plugin_operator.domain.redact import redact
from plugin_operator.mirror.store import Mirror, ResyncResult
from plugin_operator.mirror.urls import safe_url

logger = logging.getLogger(__name__)

Objects = Sequence[Mapping[str, Any]]
# Lists all PluginInstalls and all PluginUpdates (every namespace).
ListObjects = Callable[[], Awaitable[tuple[Objects, Objects]]]
# (object) -> emit(type, reason, message): Deps.emitter.
T = TypeVar("T")
Emitter = Callable[[Mapping[str, Any]], Callable[[str, str, str], None]]

WRITE_FAILURES = Counter(
    "plugin_operator_mirror_write_failures",
    "Postgres mirror writes that failed, by kind (unavailable: the database did not answer in time; "
    "refused: it answered with an error)",
    ["kind"],
)
PENDING_WRITES = Gauge("plugin_operator_mirror_pending_writes", "Row writes queued for the Postgres mirror")
DIRTY = Gauge("plugin_operator_mirror_dirty", "1 while the mirror tables may lag the cluster (a resync is due)")
DROPPED = Counter(
    "plugin_operator_mirror_dropped_writes", "Row writes dropped (queue full or database away); the resync catches up"
)


def _with_status(obj: Mapping[str, Any], status: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return obj if status is None else {**obj, "status": status}


def _unavailable(err: Exception) -> bool:
    """The database did not answer (vs answered with a refusal)."""
    if isinstance(err, OperationalError | InterfaceError | PoolTimeout | OSError | TimeoutError):
        return True
    return not isinstance(err, DBAPIError)  # anything else unexpected: treat as an outage, resync later


def _first_line(err: Exception) -> str:
    text = str(getattr(err, "orig", None) or err)
    return redact(text.splitlines()[0] if text else type(err).__name__)


@dataclass
class _Pending:
    what: str
    call: Callable[[Any], object]
    arg: Any
    obj: Mapping[str, Any]
    seq: int


class MirrorService:
    """See the module docstring. Construct with `from_settings`, `from_url`
    or `disabled`."""

    def __init__(
        self,
        mirror: Mirror | None,
        *,
        upgrade_schema: bool = False,
        retry_writes_after: float = 10.0,
        max_pending: int = 2000,
    ) -> None:
        self._mirror = mirror
        self._schema_pending = upgrade_schema  # run the migrations before the first resync
        self._needs_resync = mirror is not None  # catch up with what changed while we were away
        self._outage_since: float | None = None
        self._retry_writes_after = retry_writes_after
        self._lock = asyncio.Lock()  # one resync at a time, never interleaved with a write
        self._task: asyncio.Task[None] | None = None
        self._pending: dict[tuple[str, ...], _Pending] = {}
        self._max_pending = max_pending
        self._seq = 0  # of the latest queued write
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._emitter: Emitter | None = None
        self._told: dict[tuple[str, ...], str] = {}  # row key -> refusal already said in an Event
        self._answering = asyncio.Event()  # a write went through while dirty: resync now, not after the backoff
        DIRTY.set(1 if self._needs_resync else 0)

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
        mirror = Mirror(
            settings.database_url,
            connect_timeout=max(1, round(settings.database_connect_timeout)),
            statement_timeout_ms=max(1, round(settings.database_statement_timeout * 1000)),
        )
        logger.info("Postgres mirror: %s", safe_url(settings.database_url))
        return cls(mirror, upgrade_schema=upgrade_schema)

    def report_to(self, emitter: Emitter) -> None:
        """Post a Warning Event on an object whose row the database refuses."""
        self._emitter = emitter

    @property
    def enabled(self) -> bool:
        return self._mirror is not None

    @property
    def needs_resync(self) -> bool:
        """True while the tables may lag the cluster (start-up, after a failed write)."""
        return self._needs_resync

    @property
    def pending(self) -> int:
        """Row writes queued, not yet written."""
        return len(self._pending)

    @property
    def mirror(self) -> Mirror | None:
        return self._mirror

    # -- writes from the handlers: queued, never awaited ---------------------------

    async def install_changed(self, obj: Mapping[str, Any], status: Mapping[str, Any] | None = None) -> None:
        """Mirror a PluginInstall; pass the status about to be written, if the
        body's is stale. No row yet (no plugin name, lost a Conflict): no-op."""
        body = _with_status(obj, status)
        row = install_row(body)
        if row is not None and self._mirror is not None:
            self._enqueue(
                ("install", row.workspace_id, row.plugin_name), "upsert install", self._mirror.upsert_install, row, body
            )

    async def install_deleted(self, obj: Mapping[str, Any]) -> None:
        """Drop the row of a PluginInstall going away (from its finalizer)."""
        row = install_row(obj)
        if row is not None and self._mirror is not None:
            self._enqueue(
                ("install", row.workspace_id, row.plugin_name), "delete install", self._delete_install, row, obj
            )

    async def update_changed(self, obj: Mapping[str, Any], status: Mapping[str, Any] | None = None) -> None:
        """Mirror a PluginUpdate (created, state changed)."""
        if self._mirror is None:
            return
        body = _with_status(obj, status)
        try:
            row = update_row(body)
        except UnmappableObject as err:
            logger.warning("not mirrored: %s", err)
            return
        self._enqueue(("update", row.id), "upsert update", self._mirror.upsert_update, row, body)

    async def update_deleted(self, obj: Mapping[str, Any]) -> None:
        uid = (obj.get("metadata") or {}).get("uid")
        if uid and self._mirror is not None:
            self._enqueue(("update", str(uid)), "delete update", self._mirror.delete_update, str(uid), obj)

    def _delete_install(self, row: InstallRow) -> None:
        assert self._mirror is not None
        self._mirror.delete_install(row.workspace_id, row.plugin_name)

    def _down(self) -> bool:
        return self._outage_since is not None and time.monotonic() - self._outage_since < self._retry_writes_after

    def _mark_dirty(self) -> None:
        self._needs_resync = True
        DIRTY.set(1)

    def _enqueue(
        self, key: tuple[str, ...], what: str, call: Callable[[Any], object], arg: Any, obj: Mapping[str, Any]
    ) -> None:
        if self._down():
            logger.debug("mirror down: %s skipped, the resync will catch up", what)
            DROPPED.inc()
            self._mark_dirty()
            return
        if key not in self._pending and len(self._pending) >= self._max_pending:
            if not self._needs_resync:
                logger.warning(
                    "Postgres mirror: %d row writes pending, the database is too slow; "
                    "dropping writes until a resync makes the tables exact again",
                    len(self._pending),
                )
            DROPPED.inc()
            self._mark_dirty()
            return
        self._pending.pop(key, None)  # re-queued at the end: the latest state wins
        self._seq += 1
        self._pending[key] = _Pending(what, call, arg, obj, self._seq)
        PENDING_WRITES.set(len(self._pending))
        self._ensure_writer()
        assert self._wake is not None
        self._wake.set()

    def _ensure_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._wake, self._idle = asyncio.Event(), asyncio.Event()
            self._writer = asyncio.get_running_loop().create_task(self._drain(), name="postgres-mirror-writer")

    async def _drain(self) -> None:
        assert self._wake is not None and self._idle is not None
        while True:
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            self._idle.clear()
            key = next(iter(self._pending))
            item = self._pending.pop(key)
            PENDING_WRITES.set(len(self._pending))
            async with self._lock:
                if self._down():
                    DROPPED.inc()
                    self._mark_dirty()
                    continue
                try:
                    await self._call(item.call, item.arg)
                except Exception as err:
                    self._failed(item.what, err, key=key, obj=item.obj)
                else:
                    self._told.pop(key, None)
                    if self._needs_resync:
                        self._answering.set()

    async def _call(self, call: Callable[[Any], T], arg: Any) -> T:
        """Run a blocking call in a thread, giving up after the mirror's call
        timeout (the thread is left to finish on its own; the lock is not)."""
        assert self._mirror is not None
        future = asyncio.ensure_future(asyncio.to_thread(call, arg))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._mirror.call_timeout)
        except TimeoutError:
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "exception not retrieved"
            raise TimeoutError(f"no answer from the database after {self._mirror.call_timeout:.0f}s") from None

    async def flush(self) -> None:
        """Wait until every queued write was tried (tests; wrap in asyncio.timeout)."""
        if self._writer is None or self._idle is None:
            return
        while self._pending or not self._idle.is_set():
            await self._idle.wait()
            await asyncio.sleep(0)

    def _failed(
        self,
        what: str,
        err: Exception,
        *,
        key: tuple[str, ...] | None = None,
        obj: Mapping[str, Any] | None = None,
    ) -> None:
        self._mark_dirty()
        said = _first_line(err)
        if not _unavailable(err):
            WRITE_FAILURES.labels("refused").inc()
            logger.warning(
                "Postgres mirror: %s refused by the database (%s: %s); the resync retries it",
                what,
                type(getattr(err, "orig", None) or err).__name__,
                said,
            )
            if key is not None and obj is not None and self._emitter is not None and self._told.get(key) != said:
                self._told[key] = said
                with contextlib.suppress(Exception):  # an Event is best effort
                    self._emitter(obj)(
                        "Warning", "MirrorWriteFailed", f"the Postgres mirror refused this object's row: {said}"
                    )
            return
        WRITE_FAILURES.labels("unavailable").inc()
        if self._outage_since is None:
            logger.warning(
                "Postgres mirror: %s failed (%s: %s); writes are skipped until a resync succeeds",
                what,
                type(err).__name__,
                said,
            )
        else:
            logger.debug("Postgres mirror: %s failed again: %s", what, err)
        self._outage_since = time.monotonic()
        if self._pending:  # the database is away: the resync rewrites these rows anyway
            DROPPED.inc(len(self._pending))
            self._pending.clear()
            PENDING_WRITES.set(0)

    # -- resync -----------------------------------------------------------------

    async def resync(self, installs: Objects, updates: Objects, *, listed_after: int | None = None) -> bool:
        """Make the tables match the given listing; True when they do.
        `listed_after`: the sequence number of the last write queued before
        the listing began; those writes are covered by it and dropped."""
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
                result = await self._call(lambda _: upgrade_and_resync(), None)
            except Exception as err:
                self._failed("resync", err)
                return False
            if listed_after is not None:  # older than the listing: never write them over it
                for key in [k for k, p in self._pending.items() if p.seq <= listed_after]:
                    del self._pending[key]
                PENDING_WRITES.set(len(self._pending))
        recovered = self._outage_since is not None
        self._needs_resync = False
        DIRTY.set(0)
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
        listed_after = self._seq
        try:
            installs, updates = await list_objects()
        except Exception as err:
            logger.warning("Postgres mirror resync postponed: listing the cluster failed: %s", err)
            return False
        return await self.resync(installs, updates, listed_after=listed_after)

    async def run(
        self,
        list_objects: ListObjects,
        *,
        interval: float = 5.0,
        max_interval: float = 60.0,
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
                    delay = min(delay * 1.5, max_interval)
            self._answering.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answering.wait(), delay if self._needs_resync else interval)
            if self._answering.is_set():
                delay = interval

    def start(self, list_objects: ListObjects, **kwargs: Any) -> None:
        """Run `run()` in the background (from an on.startup handler)."""
        if self._mirror is not None and self._task is None:
            self._task = asyncio.create_task(self.run(list_objects, **kwargs), name="postgres-mirror-resync")

    async def close(self) -> None:
        """Stop the loop and the writer, and close the connections (from an
        on.cleanup handler). Writes still queued are lost: the next start-up
        resyncs anyway."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._mirror is not None:
            await asyncio.to_thread(self._mirror.close)
