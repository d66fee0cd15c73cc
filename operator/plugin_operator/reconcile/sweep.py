"""The drift sweep (design §6): resolve every tracked install against one
shared ref table per repository (one `git ls-remote` per repository, whatever
the number of installs), decide per install (domain.drift), and keep its
PluginUpdates straight: at most one Pending, the rest Superseded.

`Automatic` never approves an upstream rewrite (a moved tag, a branch whose
new head does not contain the installed commit): such a proposal records
`spec.rewrite` and waits for a person.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from plugin_operator import GROUP, VERSION, metrics
from plugin_operator.domain import conditions as cond
from plugin_operator.domain import drift
from plugin_operator.domain.errors import PluginError
from plugin_operator.domain.install_spec import InstallSpec, parse_install_spec
from plugin_operator.domain.objects import InstallView, UpdateState, UpdateView
from plugin_operator.domain.refs import RefTable, Resolved, select_followed
from plugin_operator.kube.api import INSTALLS, UPDATES
from plugin_operator.reconcile.deps import Deps, Emit, now_text
from plugin_operator.reconcile.status import (
    install_status,
    write_install_fields,
    write_install_status,
    write_update_status,
)
from plugin_operator.reconcile.update import NO_PENDING, reject
from plugin_operator.testhooks import crash_point

log = logging.getLogger(__name__)
INSTALL_LABEL = f"{GROUP}/plugin-install"


def tracked(install: InstallView, deps: Deps) -> InstallSpec | None:
    """The spec of an install the sweep follows (valid, not suspended, a
    github source with a drifting track), else None."""
    if install.meta.deleting:
        return None
    try:
        spec = parse_install_spec(install.spec, allow_unpinned=deps.settings.allow_unpinned)
    except PluginError:
        return None
    if spec.suspend or not spec.track.drifts or spec.source.kind != "github":
        return None
    return spec


async def sweep(deps: Deps, installs: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """One pass over the given installs. Returns counts for the log line."""
    views = map(InstallView.parse, installs)
    followed = [(install, spec) for install in views if (spec := tracked(install, deps)) is not None]
    repos = {str(spec.source.repo_key): spec.source for _, spec in followed}
    calls_before = deps.resolver.git_calls
    for source in repos.values():
        deps.resolver.forget(source)  # a sweep always asks upstream afresh

    async def table_for(key: str) -> RefTable | PluginError:
        try:
            return await deps.resolver.ref_table(repos[key])
        except PluginError as exc:
            return exc

    tables = dict(zip(repos, await asyncio.gather(*(table_for(k) for k in repos)), strict=True))
    for install, spec in followed:
        table = tables[str(spec.source.repo_key)]
        namespace, name = install.meta.namespace, install.meta.name
        try:
            await check_install(deps, namespace, name, table)
        except Exception:  # one install's trouble must not cost the others their sweep
            log.exception("drift check of %s/%s failed; the next sweep tries again", namespace, name)
    return {"installs": len(followed), "repositories": len(repos), "git_calls": deps.resolver.git_calls - calls_before}


class Sweeper:
    """Whole sweeps on the drift interval, started from the per-install kopf
    timer (handlers.updates): a firing finds a sweep due, running or not yet
    due, so one sweep over every install happens about every
    DRIFT_SWEEP_INTERVAL (jittered ±10%) whatever the number of installs, and
    each makes one `git ls-remote` per repository. The sweep runs in its own
    task, so deleting the install whose timer started it does not cut it short.

    A sweep lost to a blip (the LIST of installs failing: apiserver restarted,
    etcd stalled, a timeout) is tried again in the same task after 5 s, 10 s,
    20 s … capped at `RETRY_CAP` (and at a tenth of the interval), not a whole
    interval later; each failure counts in
    `plugin_operator_errors_total{reason="SweepFailed"}`."""

    RETRY_FIRST = 5.0
    RETRY_CAP = 120.0

    def __init__(self, deps: Deps, namespaces: Sequence[str], *, retry_first: float | None = None) -> None:
        self._deps = deps
        self._scopes: list[str | None] = [*namespaces] or [None]
        self._due = 0.0
        self._task: asyncio.Task[None] | None = None
        self._retry_first = self.RETRY_FIRST if retry_first is None else retry_first
        self.failures = 0  # consecutive failed attempts of the current sweep

    def kick(self) -> None:
        now = time.monotonic()
        if now < self._due or (self._task is not None and not self._task.done()):
            return
        self._due = now + self._deps.settings.drift_sweep_interval * random.uniform(0.9, 1.1)
        self._task = asyncio.get_running_loop().create_task(self._sweep_all(), name="drift-sweep")

    def retry_delays(self) -> Iterator[float]:
        """5 s, 10 s, 20 s … capped well below the sweep interval."""
        cap = max(self._retry_first, min(self.RETRY_CAP, self._deps.settings.drift_sweep_interval / 10))
        delay = self._retry_first
        while True:
            yield min(delay, cap)
            delay *= 2

    async def _sweep_all(self) -> None:
        delays = self.retry_delays()
        while not await self._sweep_once():
            self.failures += 1
            metrics.ERRORS.labels("SweepFailed").inc()
            delay = next(delays)
            log.warning("drift sweep failed (attempt %d); retrying in %.0fs", self.failures, delay)
            await asyncio.sleep(delay)
        self.failures = 0

    async def _sweep_once(self) -> bool:
        """One attempt; False when it should be tried again soon."""
        try:
            installs: list[dict[str, Any]] = []
            for namespace in self._scopes:
                installs += await self._deps.kube.list(INSTALLS, namespace)
            counts = await sweep(self._deps, installs)
            metrics.SWEEPS.inc()
            await _count_pending(self._deps, self._scopes)
            log.info(
                "drift sweep: %(installs)d installs, %(repositories)d repositories, %(git_calls)d git calls", counts
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("drift sweep attempt failed")
            return False
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _count_pending(deps: Deps, scopes: Sequence[str | None]) -> None:
    pending: list[dt.datetime] = []
    for namespace in scopes:
        for update in map(UpdateView.parse, await deps.kube.list(UPDATES, namespace)):
            if update.state == UpdateState.Pending and not update.spec.dismissed:
                created = update.meta.creation_timestamp
                pending.append(dt.datetime.fromisoformat(created.replace("Z", "+00:00")))
    metrics.PENDING.set(len(pending))
    oldest = (dt.datetime.now(dt.UTC) - min(pending)).total_seconds() if pending else 0.0
    metrics.OLDEST_PENDING.set(oldest)


async def resolve_now(deps: Deps, namespace: str, name: str, request: str) -> None:
    """The `plugins.workspace.dev/resolve` annotation: sweep one install now,
    then record the request as handled (status.observedResolve)."""
    obj = await deps.kube.get(INSTALLS, namespace, name)
    if obj is None:
        return
    install = InstallView.parse(obj)
    if install.status.observed_resolve == request:
        return
    if tracked(install, deps) is not None:
        await sweep(deps, [obj])
    # Under the install's lock: every status writer reads the object inside
    # it, so none writes back an older observedResolve.
    async with deps.lock(namespace, name):
        await write_install_fields(deps, namespace, name, {"observedResolve": request})


# -- one install ----------------------------------------------------------------


async def _updates_of(deps: Deps, namespace: str, install: str) -> list[UpdateView]:
    updates = map(UpdateView.parse, await deps.kube.list(UPDATES, namespace))
    return [u for u in updates if u.spec.plugin_install == install]


async def _supersede(deps: Deps, updates: list[UpdateView], keep: str | None, message: str) -> None:
    by_name = {u.meta.name: u for u in updates}
    for doomed in drift.open_updates_to_supersede([u.body for u in updates], keep=keep):
        update = by_name[UpdateView.parse(doomed).meta.name]
        await write_update_status(deps, update, UpdateState.Superseded, message, superseded_by=keep)


async def check_install(deps: Deps, namespace: str, name: str, table: RefTable | PluginError) -> None:
    """Decide one install's drift against its repository's ref table, under
    the install lock."""
    async with deps.lock(namespace, name):
        obj = await deps.kube.get(INSTALLS, namespace, name)
        if obj is None:
            return
        install = InstallView.parse(obj)
        spec = tracked(install, deps)
        prev = install.status
        if spec is None or not prev.installed_digest:
            return  # nothing installed yet: the install reconcile comes first
        at = now_text()
        if isinstance(table, PluginError):
            unknown = cond.Condition("UpToDate", None, table.reason, f"could not resolve upstream: {table.message}")
            await write_install_status(deps, install, install_status(install, [unknown]))
            return
        installed_sha, installed_ref = prev.installed_sha, prev.resolved_ref
        try:
            upstream = select_followed(spec.track, table, installed_ref)
        except PluginError as exc:
            unknown = cond.Condition("UpToDate", None, exc.reason, exc.message)
            await write_install_status(deps, install, install_status(install, [unknown], lastResolvedAt=at))
            return
        updates = await _updates_of(deps, namespace, name)
        dismissed = [u.spec.to_sha for u in updates if u.state == UpdateState.Dismissed]
        decide = functools.partial(
            drift.decide,
            spec.track,
            installed_sha,
            upstream,
            table,
            dismissed,
            installed_ref=installed_ref,
            last_upstream=prev.upstream_sha,
        )
        decision = decide()
        resolved = {"upstreamSHA": upstream.sha, "lastResolvedAt": at}

        if decision.kind == "propose":
            # Path-aware: a new commit whose plugin tree is unchanged is recorded, not proposed.
            try:
                candidate = await deps.stager.stage(spec.source, upstream.sha)
            except PluginError as exc:
                unknown = cond.Condition(
                    "UpToDate", None, exc.reason, f"cannot stage {upstream.sha[:12]}: {exc.message}"
                )
                before = prev.condition("UpToDate")
                if before is None or before.reason != exc.reason:  # e.g. the staging disk full: said, not only logged
                    deps.emitter(install.body)("Warning", exc.reason, unknown.message)
                metrics.ERRORS.labels(exc.reason).inc()
                await write_install_status(deps, install, install_status(install, [unknown], **resolved))
                return
            if candidate.digest == prev.installed_digest:
                decision = drift.Decision(
                    "same-content", "UpToDate", f"{upstream.sha[:12]} leaves the plugin's tree unchanged"
                )
            else:
                if drift.needs_ancestry(spec.track, installed_sha, upstream):
                    assert installed_sha is not None
                    contains = await deps.resolver.ancestry.contains(spec.source, upstream.sha, installed_sha)
                    decision = decide(contains=contains)
                if decision.kind == "propose":
                    emit = deps.emitter(install.body)
                    await _propose(deps, install, spec, updates, upstream, candidate.digest, decision, emit)
                    return

        # Nothing to propose: any open update is moot now.
        await _supersede(deps, updates, None, f"no longer needed: {decision.message}")
        condition = cond.Condition("UpToDate", True, decision.reason, decision.message)
        if decision.kind == "dismissed":
            condition = cond.Condition("UpToDate", False, decision.reason, decision.message)
        await write_install_status(deps, install, install_status(install, [condition], **NO_PENDING, **resolved))


async def _propose(
    deps: Deps,
    install: InstallView,
    spec: InstallSpec,
    updates: list[UpdateView],
    upstream: Resolved,
    to_digest: str,
    decision: drift.Decision,
    emit: Emit,
) -> None:
    """Propose `upstream.sha` as the install's one pending update.

    The install's own record comes first (status.pendingUpdate,
    pendingUpdateSHA, pendingUpdateRef), then the object: an update is only
    ever applied when that record names it, so a crash in between leaves a
    record without an object (the next sweep creates it), never an object
    the operator cannot vouch for. An object already holding the name that
    the operator did not create is never adopted nor patched: it is marked
    Rejected and the proposal waits until a person deletes it."""
    prev = install.status
    namespace, install_name = install.meta.namespace, install.meta.name
    to_sha = upstream.sha
    name = drift.update_name(install_name, to_sha)
    resolved = {"upstreamSHA": to_sha, "lastResolvedAt": now_text()}
    identity = {
        "pluginInstall": install_name,
        "workspace": spec.workspace,
        "plugin": spec.plugin,
        "trackedRef": spec.track.normalized,
        "fromSHA": prev.installed_sha,
        "toSHA": to_sha,
    }
    recorded = drift.recorded(install.body, name, to_sha)
    found = await deps.kube.get(UPDATES, namespace, name)
    existing = UpdateView.parse(found) if found is not None else None
    blocked: str | None = None
    if existing is not None:
        state = existing.state
        squatting = drift.not_created_by_operator(existing.body, install.body, GROUP, identity)
        if squatting is None and not recorded and (not state.terminal or state == UpdateState.Rejected):
            # Open (or already refused) before the operator ever recorded proposing it.
            squatting = "it existed before the operator proposed that commit"
        if squatting is not None:
            if state != UpdateState.Rejected:
                await reject(deps, existing, f"not created by the operator: {squatting}")
            blocked = (
                f"PluginUpdate {name} was not created by the operator ({squatting}) and blocks the proposal "
                f"of {to_sha[:12]}: delete it to unblock"
            )
        elif state.terminal and not (state == UpdateState.Superseded and not existing.spec.approved):
            blocked = (
                f"an earlier PluginUpdate {name} to {to_sha[:12]} is {state.value}; delete it to have the operator "
                "propose that commit again"
            )
    # Supersede first, then record, then create: never two pending.
    await _supersede(deps, updates, name, f"upstream moved again to {to_sha[:12]}")
    crash_point("propose-after-supersede")  # test-only (testhooks)
    if blocked is not None:
        before = prev.condition("UpToDate")
        said = f"{decision.message}; {blocked}"
        if before is None or before.reason != "ProposalBlocked" or before.message != said:
            emit("Warning", "ProposalBlocked", blocked)
        condition = cond.Condition("UpToDate", False, "ProposalBlocked", said)
        await write_install_status(deps, install, install_status(install, [condition], **NO_PENDING, **resolved))
        return

    condition = cond.Condition("UpToDate", False, decision.reason, f"{decision.message}; pending update {name}")
    record = {
        "pendingUpdate": name,
        "pendingUpdateSHA": to_sha,
        "pendingUpdateRef": upstream.ref_name,
        "trackedRef": spec.track.normalized,
    }
    await write_install_status(deps, install, install_status(install, [condition], **record, **resolved))
    crash_point("propose-after-record")  # test-only (testhooks)
    automatic = spec.update_policy == "Automatic" and not decision.rewritten
    if existing is not None:
        if existing.state == UpdateState.Superseded:  # proposed again (upstream came back to it)
            await write_update_status(deps, existing, UpdateState.Pending, f"proposed again: {decision.message}")
        return
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PluginUpdate",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {INSTALL_LABEL: install_name[:63]} if len(install_name) <= 63 else {},
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "PluginInstall",
                    "name": install_name,
                    "uid": install.meta.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            **identity,
            "fromDigest": prev.installed_digest,
            "toDigest": to_digest,
            **({"rewrite": decision.rewrite} if decision.rewrite else {}),
            **({"approved": True} if automatic else {}),
        },
    }
    created = await deps.kube.create(UPDATES, namespace, body)
    if created is not None:
        message = decision.message if not automatic else f"{decision.message}; approved automatically"
        await write_update_status(deps, UpdateView.parse(created), UpdateState.Pending, message)
        emit(
            "Warning" if decision.rewritten else "Normal",
            decision.reason,
            f"{decision.message}: PluginUpdate {name}",
        )
