"""Drift and its PluginUpdates (design §2, §6).

The sweep resolves every tracked install against one shared ref table per
repository (so one `git ls-remote` per repository, whatever the number of
installs), then for each install decides (domain.drift) and keeps the
PluginUpdates straight: at most one Pending, the rest Superseded.

Approval (`spec.approved: true`, or `updatePolicy: Automatic`) installs
exactly `toSHA` through the install reconcile, and only for an update this
operator proposed for that install (domain.drift.verify_proposed): anything
else (a hand-written object, one squatting on a proposal's name) ends
`Rejected` before anything is fetched. `Automatic` never approves an
upstream rewrite (a moved tag, a branch whose new head does not contain the
installed commit): such an update records `spec.rewrite` and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from plugin_operator import GROUP, VERSION, metrics
from plugin_operator.domain import conditions as cond
from plugin_operator.domain import drift
from plugin_operator.domain.errors import PluginError
from plugin_operator.domain.install_spec import InstallSpec, parse_install_spec
from plugin_operator.domain.refs import RefTable, Resolved, select_followed
from plugin_operator.kube.api import INSTALLS, UPDATES
from plugin_operator.reconcile.install import Deps, Outcome, now_text, reconcile_install, whole_status

log = logging.getLogger(__name__)
INSTALL_LABEL = f"{GROUP}/plugin-install"


# -- the sweep ---------------------------------------------------------------


def _tracked(obj: Mapping[str, Any], deps: Deps) -> InstallSpec | None:
    if obj["metadata"].get("deletionTimestamp"):
        return None
    try:
        spec = parse_install_spec(obj.get("spec") or {}, allow_unpinned=deps.settings.allow_unpinned)
    except PluginError:
        return None
    if spec.suspend or not spec.track.drifts or spec.source.kind != "github":
        return None
    return spec


async def sweep(deps: Deps, installs: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """One pass over the given installs. Returns counts for the log line."""
    tracked = [(obj, spec) for obj in installs if (spec := _tracked(obj, deps)) is not None]
    repos = {str(spec.source.repo_key): spec.source for _, spec in tracked}
    calls_before = deps.resolver.git_calls
    for source in repos.values():
        deps.resolver.forget(source)  # a sweep always asks upstream afresh

    async def table_for(key: str) -> RefTable | PluginError:
        try:
            return await deps.resolver.ref_table(repos[key])
        except PluginError as exc:
            return exc

    tables = dict(zip(repos, await asyncio.gather(*(table_for(k) for k in repos)), strict=True))
    for obj, spec in tracked:
        table = tables[str(spec.source.repo_key)]
        meta = obj["metadata"]
        try:
            await check_install(deps, meta["namespace"], meta["name"], table)
        except Exception:  # one install's trouble must not cost the others their sweep
            log.exception("drift check of %s/%s failed; the next sweep tries again", meta["namespace"], meta["name"])
    return {"installs": len(tracked), "repositories": len(repos), "git_calls": deps.resolver.git_calls - calls_before}


class Sweeper:
    """Whole sweeps on the drift interval, started from the per-install kopf
    timer (handlers.updates): a firing finds a sweep due, running or not yet
    due, so one sweep over every install happens about every
    DRIFT_SWEEP_INTERVAL (jittered ±10%) whatever the number of installs, and
    each makes one `git ls-remote` per repository. The sweep runs in its own
    task, so deleting the install whose timer started it does not cut it short."""

    def __init__(self, deps: Deps, namespaces: Sequence[str]) -> None:
        self._deps = deps
        self._scopes: list[str | None] = [*namespaces] or [None]
        self._due = 0.0
        self._task: asyncio.Task[None] | None = None

    def kick(self) -> None:
        now = time.monotonic()
        if now < self._due or (self._task is not None and not self._task.done()):
            return
        self._due = now + self._deps.settings.drift_sweep_interval * random.uniform(0.9, 1.1)
        self._task = asyncio.get_running_loop().create_task(self._sweep_all(), name="drift-sweep")

    async def _sweep_all(self) -> None:
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
        except Exception:
            log.exception("drift sweep failed; next one as scheduled")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _count_pending(deps: Deps, scopes: Sequence[str | None]) -> None:
    pending: list[dt.datetime] = []
    for namespace in scopes:
        for update in await deps.kube.list(UPDATES, namespace):
            if drift.update_state(update) == "Pending" and not (update.get("spec") or {}).get("dismissed"):
                created = update["metadata"].get("creationTimestamp", "")
                pending.append(dt.datetime.fromisoformat(created.replace("Z", "+00:00")))
    metrics.PENDING.set(len(pending))
    oldest = (dt.datetime.now(dt.UTC) - min(pending)).total_seconds() if pending else 0.0
    metrics.OLDEST_PENDING.set(oldest)


async def resolve_now(deps: Deps, namespace: str, name: str, request: str) -> None:
    """The `plugins.workspace.dev/resolve` annotation: sweep one install now,
    then record the request as handled (status.observedResolve)."""
    obj = await deps.kube.get(INSTALLS, namespace, name)
    if obj is None or (obj.get("status") or {}).get("observedResolve") == request:
        return
    if _tracked(obj, deps) is not None:
        await sweep(deps, [obj])
    # Under the install's lock: every status writer reads the object inside
    # it, so none writes back an older observedResolve.
    async with deps.lock(namespace, name):
        await deps.kube.patch_status(INSTALLS, namespace, name, {"observedResolve": request})


# -- one install ----------------------------------------------------------------


async def _updates_of(deps: Deps, namespace: str, install: str) -> list[dict[str, Any]]:
    return [
        u for u in await deps.kube.list(UPDATES, namespace) if (u.get("spec") or {}).get("pluginInstall") == install
    ]


async def check_install(deps: Deps, namespace: str, name: str, table: RefTable | PluginError) -> None:
    async with deps.lock(namespace, name):
        obj = await deps.kube.get(INSTALLS, namespace, name)
        if obj is None:
            return
        spec = _tracked(obj, deps)
        prev: Mapping[str, Any] = obj.get("status") or {}
        if spec is None or not prev.get("installedDigest"):
            return  # nothing installed yet: the install reconcile comes first
        generation = int(obj["metadata"].get("generation", 0))
        emit = deps.emitter(obj)
        at = now_text()
        if isinstance(table, PluginError):
            unknown = cond.Condition("UpToDate", None, table.reason, f"could not resolve upstream: {table.message}")
            await _write(deps, obj, whole_status(prev, generation, [unknown]))
            return
        installed_sha, installed_ref = prev.get("installedSHA"), prev.get("resolvedRef")
        try:
            upstream = select_followed(spec.track, table, installed_ref)
        except PluginError as exc:
            unknown = cond.Condition("UpToDate", None, exc.reason, exc.message)
            await _write(deps, obj, whole_status(prev, generation, [unknown], lastResolvedAt=at))
            return
        updates = await _updates_of(deps, namespace, name)
        dismissed = [u["spec"]["toSHA"] for u in updates if drift.update_state(u) == "Dismissed"]
        seen = {"installed_ref": installed_ref, "last_upstream": prev.get("upstreamSHA")}
        decision = drift.decide(spec.track, installed_sha, upstream, table, dismissed, **seen)
        resolved = {"upstreamSHA": upstream.sha, "lastResolvedAt": at}

        if decision.kind == "propose":
            # Path-aware: a new commit whose plugin tree is unchanged is recorded, not proposed.
            try:
                candidate = await deps.stager.stage(spec.source, upstream.sha)
            except PluginError as exc:
                unknown = cond.Condition(
                    "UpToDate", None, exc.reason, f"cannot stage {upstream.sha[:12]}: {exc.message}"
                )
                await _write(deps, obj, whole_status(prev, generation, [unknown], **resolved))
                return
            if candidate.digest == prev.get("installedDigest"):
                decision = drift.Decision(
                    "same-content", "UpToDate", f"{upstream.sha[:12]} leaves the plugin's tree unchanged"
                )
            else:
                if drift.needs_ancestry(spec.track, installed_sha, upstream):
                    assert installed_sha is not None
                    contains = await deps.resolver.ancestry.contains(spec.source, upstream.sha, installed_sha)
                    decision = drift.decide(
                        spec.track, installed_sha, upstream, table, dismissed, contains=contains, **seen
                    )
                if decision.kind == "propose":
                    await _propose(deps, obj, spec, updates, upstream, candidate.digest, decision, emit)
                    return

        # Nothing to propose: any open update is moot now.
        for doomed in drift.open_updates_to_supersede(updates, keep=None):
            await _set_update_state(deps, doomed, "Superseded", f"no longer needed: {decision.message}")
        condition = cond.Condition("UpToDate", True, decision.reason, decision.message)
        if decision.kind == "dismissed":
            condition = cond.Condition("UpToDate", False, decision.reason, decision.message)
        await _write(deps, obj, whole_status(prev, generation, [condition], **_NO_PENDING, **resolved))


_NO_PENDING: dict[str, Any] = {"pendingUpdate": None, "pendingUpdateSHA": None, "pendingUpdateRef": None}


async def _propose(
    deps: Deps,
    obj: Mapping[str, Any],
    spec: InstallSpec,
    updates: list[dict[str, Any]],
    upstream: Resolved,
    to_digest: str,
    decision: drift.Decision,
    emit: Any,
) -> None:
    """Propose `upstream.sha` as the install's one pending update.

    The install's own record comes first (status.pendingUpdate,
    pendingUpdateSHA, pendingUpdateRef), then the object: an update is only
    ever applied when that record names it, so a crash in between leaves a
    record without an object (the next sweep creates it), never an object
    the operator cannot vouch for. An object already holding the name that
    the operator did not create is never adopted nor patched: it is marked
    Rejected and the proposal waits until a person deletes it."""
    meta = obj["metadata"]
    prev: Mapping[str, Any] = obj.get("status") or {}
    generation = int(meta.get("generation", 0))
    namespace, install = meta["namespace"], meta["name"]
    to_sha = upstream.sha
    name = drift.update_name(install, to_sha)
    resolved = {"upstreamSHA": to_sha, "lastResolvedAt": now_text()}
    identity = {
        "pluginInstall": install,
        "workspace": spec.workspace,
        "plugin": spec.plugin,
        "trackedRef": spec.track.normalized,
        "fromSHA": prev.get("installedSHA"),
        "toSHA": to_sha,
    }
    recorded = drift.recorded(obj, name, to_sha)
    existing = await deps.kube.get(UPDATES, namespace, name)
    blocked: str | None = None
    if existing is not None:
        state = drift.update_state(existing)
        squatting = drift.not_created_by_operator(existing, obj, GROUP, identity)
        if squatting is None and not recorded and (state not in drift.TERMINAL or state == "Rejected"):
            # Open (or already refused) before the operator ever recorded proposing it.
            squatting = "it existed before the operator proposed that commit"
        if squatting is not None:
            if state != "Rejected":
                await _reject(deps, existing, f"not created by the operator: {squatting}")
            blocked = (
                f"PluginUpdate {name} was not created by the operator ({squatting}) and blocks the proposal "
                f"of {to_sha[:12]}: delete it to unblock"
            )
        elif state in drift.TERMINAL and not (
            state == "Superseded" and not (existing.get("spec") or {}).get("approved")
        ):
            blocked = (
                f"an earlier PluginUpdate {name} to {to_sha[:12]} is {state}; delete it to have the operator "
                "propose that commit again"
            )
    # Supersede first, then record, then create: never two pending.
    for doomed in drift.open_updates_to_supersede(updates, keep=name):
        await _set_update_state(
            deps, doomed, "Superseded", f"upstream moved again to {to_sha[:12]}", superseded_by=name
        )
    if blocked is not None:
        before: Mapping[str, Any] = next((c for c in prev.get("conditions") or [] if c.get("type") == "UpToDate"), {})
        if before.get("reason") != "ProposalBlocked" or before.get("message") != f"{decision.message}; {blocked}":
            emit("Warning", "ProposalBlocked", blocked)
        condition = cond.Condition("UpToDate", False, "ProposalBlocked", f"{decision.message}; {blocked}")
        await _write(deps, obj, whole_status(prev, generation, [condition], **_NO_PENDING, **resolved))
        return

    condition = cond.Condition("UpToDate", False, decision.reason, f"{decision.message}; pending update {name}")
    record = {
        "pendingUpdate": name,
        "pendingUpdateSHA": to_sha,
        "pendingUpdateRef": upstream.ref_name,
        "trackedRef": spec.track.normalized,
    }
    await _write(deps, obj, whole_status(prev, generation, [condition], **record, **resolved))
    automatic = spec.update_policy == "Automatic" and not decision.rewritten
    if existing is not None:
        if drift.update_state(existing) == "Superseded":  # proposed again (upstream came back to it)
            await _set_update_state(deps, existing, "Pending", f"proposed again: {decision.message}")
        return
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PluginUpdate",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {INSTALL_LABEL: install[:63]} if len(install) <= 63 else {},
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "PluginInstall",
                    "name": install,
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            **identity,
            "fromDigest": prev.get("installedDigest"),
            "toDigest": to_digest,
            **({"rewrite": decision.rewrite} if decision.rewrite else {}),
            **({"approved": True} if automatic else {}),
        },
    }
    created = await deps.kube.create(UPDATES, namespace, body)
    if created is not None:
        message = decision.message if not automatic else f"{decision.message}; approved automatically"
        await _set_update_state(deps, created, "Pending", message)
        emit(
            "Warning" if decision.rewritten else "Normal",
            decision.reason,
            f"{decision.message}: PluginUpdate {name}",
        )


async def _write(deps: Deps, obj: Mapping[str, Any], status: dict[str, Any]) -> None:
    meta = obj["metadata"]
    await deps.kube.patch_status(INSTALLS, meta["namespace"], meta["name"], status)


async def _set_update_state(
    deps: Deps,
    update: Mapping[str, Any],
    state: str,
    message: str,
    *,
    superseded_by: str | None = None,
    extra: Mapping[str, Any] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    meta = update["metadata"]
    prev: Mapping[str, Any] = update.get("status") or {}
    spec = update.get("spec") or {}
    applied = state == "Applied"
    why = reason or state
    wanted = [
        cond.Condition("Applied", applied, why, message),
        cond.Condition("Ready", state in ("Applied", "Dismissed", "Superseded"), why, message),
    ]
    if spec.get("rewrite"):  # recorded at creation (immutable): said on every write
        wanted.append(
            cond.Condition("UpstreamRewritten", True, str(spec["rewrite"]), _REWRITE_SAID.get(spec["rewrite"], ""))
        )
    conditions = cond.merge(prev.get("conditions"), wanted, generation=int(meta.get("generation", 0)), now=now_text())
    status = {
        "state": state,
        "message": message,
        "appliedSHA": prev.get("appliedSHA"),
        "appliedAt": prev.get("appliedAt"),
        "supersededBy": superseded_by if superseded_by is not None else prev.get("supersededBy"),
        "attempts": prev.get("attempts", 0),
        "observedRetry": prev.get("observedRetry"),
        "fromShort": (spec.get("fromSHA") or "")[:12] or None,
        "toShort": (spec.get("toSHA") or "")[:12] or None,
        "conditions": conditions,
        "observedGeneration": int(meta.get("generation", 0)),
        **(extra or {}),
    }
    await deps.kube.patch_status(UPDATES, meta["namespace"], meta["name"], status)
    merged = {**update, "status": status}
    await deps.mirror.update_changed(merged)  # Rejected reads "dismissed": nothing will be installed
    return merged


_REWRITE_SAID = {
    drift.TAG_MOVED: "a tag the install follows was re-pointed upstream; never approved automatically",
    drift.HISTORY_REWRITTEN: (
        "the branch's new head does not contain the installed commit (history rewritten, e.g. a force-push); "
        "never approved automatically"
    ),
}


async def _reject(deps: Deps, update: Mapping[str, Any], message: str) -> None:
    """Rejected: a terminal state for an update this operator did not propose.
    Status only (its spec is never touched), an Event, nothing installed."""
    await _set_update_state(deps, update, "Rejected", message, reason="NotProposed", extra={"rejectedBecause": message})
    deps.emitter(update)("Warning", "NotProposed", f"rejected, nothing installed: {message}")


# -- approve, dismiss, apply ---------------------------------------------------------


async def reconcile_update(deps: Deps, namespace: str, name: str) -> Outcome:
    update = await deps.kube.get(UPDATES, namespace, name)
    if update is None:
        return Outcome(message="gone")
    spec = update.get("spec") or {}
    state = drift.update_state(update)
    emit = deps.emitter(update)
    approved, dismissed = bool(spec.get("approved")), bool(spec.get("dismissed"))

    if state in drift.TERMINAL:
        if (approved or dismissed) and state != "Applied":
            status = update.get("status") or {}
            said = {
                "Superseded": f"superseded by {status.get('supersededBy') or 'a newer update'}",
                "Dismissed": "it was dismissed",
                "Rejected": "it was rejected",
            }[state]
            message = f"{'approving' if approved else 'dismissing'} changes nothing: {said}"
            if state == "Rejected":
                rejected = str(status.get("rejectedBecause") or status.get("message") or "")
                message = f"{message}: {rejected}" if rejected else message
            if status.get("message") != message:
                extra = {"rejectedBecause": status.get("rejectedBecause")} if state == "Rejected" else None
                reason = "NotProposed" if state == "Rejected" else None
                await _set_update_state(deps, update, state, message, extra=extra, reason=reason)
                emit("Normal", "Ignored", message)
        return Outcome(message=state)

    install_name = spec.get("pluginInstall", "")
    # Only what this operator proposed for that install counts (checked
    # before anything is fetched), read under the install's lock so a
    # proposal being recorded is seen whole.
    async with deps.lock(namespace, install_name):
        install = await deps.kube.get(INSTALLS, namespace, install_name)
    why = drift.verify_proposed(update, install, GROUP)
    if why is not None:
        await _reject(deps, update, f"not proposed by the operator: {why}")
        return Outcome(message=f"rejected: {why}")
    if dismissed:
        await _set_update_state(
            deps, update, "Dismissed", f"dismissed; {spec.get('toSHA', '')[:12]} is not proposed again"
        )
        emit("Normal", "Dismissed", f"update to {spec.get('toSHA', '')[:12]} dismissed")
        await _clear_pending(deps, namespace, install_name, name, "UpdateDismissed", "update dismissed")
        return Outcome(message="dismissed")
    if not approved:
        if state != "Pending" or not update.get("status"):
            update = await _set_update_state(deps, update, "Pending", "waiting for approval")
        await deps.mirror.update_changed(update)
        return Outcome(message="pending")

    to_sha = str(spec.get("toSHA"))
    attempts = int((update.get("status") or {}).get("attempts", 0)) + 1
    update = await _set_update_state(
        deps, update, "Applying", f"installing {to_sha[:12]}", extra={"attempts": attempts}
    )
    outcome = await reconcile_install(deps, namespace, install_name, target_sha=to_sha)
    install = await deps.kube.get(INSTALLS, namespace, install_name)
    installed = (install or {}).get("status", {}).get("installedSHA")
    if install is None or installed != to_sha:
        delay = min(300.0, 10.0 * 2 ** min(attempts - 1, 5))
        message = f"apply of {to_sha[:12]} failed (attempt {attempts}, retrying in {delay:.0f}s): {outcome.message}"
        await _set_update_state(deps, update, "Failed", message)
        emit("Warning", "ApplyFailed", message)
        return Outcome(retry_after=delay, message=message)
    at = now_text()
    await _set_update_state(
        deps, update, "Applied", f"installed {to_sha[:12]}", extra={"appliedSHA": to_sha, "appliedAt": at}
    )
    emit("Normal", "Applied", f"installed {to_sha[:12]} into workspace {spec.get('workspace')}")
    await _clear_pending(deps, namespace, install_name, name, "UpToDate", f"update {name} applied")
    return Outcome(message="applied")


async def retry_update(deps: Deps, namespace: str, name: str, request: str) -> Outcome:
    """The `plugins.workspace.dev/retry` annotation: apply a Failed update again."""
    update = await deps.kube.get(UPDATES, namespace, name)
    if update is None or (update.get("status") or {}).get("observedRetry") == request:
        return Outcome(message="nothing to retry")
    await deps.kube.patch_status(UPDATES, namespace, name, {"observedRetry": request})
    if drift.update_state(update) != "Failed":
        return Outcome(message=f"not retried: the update is {drift.update_state(update)}")
    return await reconcile_update(deps, namespace, name)


async def _clear_pending(deps: Deps, namespace: str, install: str, update: str, reason: str, message: str) -> None:
    async with deps.lock(namespace, install):
        obj = await deps.kube.get(INSTALLS, namespace, install)
        if obj is None:
            return
        prev = obj.get("status") or {}
        if prev.get("pendingUpdate") not in (None, update):
            return
        up_to_date = reason == "UpToDate"
        condition = cond.Condition("UpToDate", up_to_date, reason, message)
        changes: dict[str, Any] = dict(_NO_PENDING)
        if up_to_date and prev.get("pendingUpdate") == update and prev.get("pendingUpdateRef"):
            # Applied: the install now follows the ref the update resolved
            # (e.g. the new highest tag), so the sweep compares like with like.
            changes["resolvedRef"] = prev.get("pendingUpdateRef")
        status = whole_status(prev, int(obj["metadata"].get("generation", 0)), [condition], **changes)
        await _write(deps, obj, status)
