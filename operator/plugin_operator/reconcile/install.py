"""The install flow: one idempotent, level-triggered reconcile per
PluginInstall (design §5).

reconcile_install reads the object fresh, decides the commit, stages it once,
brings every target pod to it (reconcile.pods: only pods that lack it are
written), restarts the workspace when the installed content changed, and
writes status whole (reconcile.status). It is called from create/update/
resume, the periodic timer, pod arrivals and approved updates; the install
lock serialises them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from plugin_operator import metrics
from plugin_operator.delivery import plugin as delivery
from plugin_operator.domain import conditions as cond
from plugin_operator.domain.errors import Conflict, DeliveryFailed, PluginError
from plugin_operator.domain.install_spec import InstallSpec, parse_install_spec
from plugin_operator.domain.install_status import pod_entries
from plugin_operator.domain.marker import Marker
from plugin_operator.domain.objects import InstallView
from plugin_operator.domain.pods import plan_pod
from plugin_operator.domain.source import parse_source
from plugin_operator.kube.api import INSTALLS
from plugin_operator.reconcile.deps import Deps, Emit, Outcome, OutcomeKind, now_text
from plugin_operator.reconcile.pods import bring_pod, restart_workloads, split_targets
from plugin_operator.reconcile.restart import RestartTicket
from plugin_operator.reconcile.status import install_status, retry_backoff, write_install_status
from plugin_operator.staging import StagedPlugin
from plugin_operator.testhooks import crash_point

log = logging.getLogger(__name__)


async def reconcile_install(
    deps: Deps, namespace: str, name: str, *, target_sha: str | None = None, update: str | None = None
) -> Outcome:
    """Bring the install's workspace to its spec (or, from the approved
    update `update`, to `target_sha`)."""
    async with deps.lock(namespace, name):
        obj = await deps.kube.get(INSTALLS, namespace, name)
        if obj is None:
            return Outcome(message="gone")
        install = InstallView.parse(obj)
        if install.meta.deleting:
            return Outcome(message="gone")
        outcome = await _reconcile_locked(deps, install, target_sha=target_sha, update=update)
    metrics.INSTALLS.labels(outcome.kind.value).inc()
    return outcome


async def _reconcile_locked(
    deps: Deps, install: InstallView, *, target_sha: str | None, update: str | None = None
) -> Outcome:
    emit = deps.emitter(install.body)
    try:
        spec = parse_install_spec(install.spec, allow_unpinned=deps.settings.allow_unpinned)
    except PluginError as exc:
        return await stalled(deps, install, exc)
    if spec.suspend:
        note = cond.Condition("Stalled", False, "Suspended", "spec.suspend is true: not reconciling")
        await write_install_status(deps, install, install_status(install, [note]))
        return Outcome(message="suspended", kind=OutcomeKind.suspended)
    winner = await claim_winner(deps, install, spec)
    if winner != install.meta.name:
        conflict = Conflict(
            f"workspace {spec.workspace} already gets plugin {spec.plugin} from PluginInstall {winner}; "
            "this one changes nothing until that one is deleted"
        )
        return await stalled(deps, install, conflict, spec=spec)
    async with deps.restarter.working((install.meta.namespace, spec.workspace)) as ticket:
        return await _bring_workspace(deps, install, spec, emit, ticket, target_sha=target_sha, update=update)


async def resolve_install_target(deps: Deps, spec: InstallSpec, emit: Emit) -> tuple[str | None, str | None]:
    """(sha, resolved ref) for a spec whose source changed: the source's own
    fragment, read the way the track follows it (`#stable` with
    `tag:stable` is the tag even when a branch `stable` exists), so the
    install and the drift sweep agree on the ref; unpinned (when allowed):
    what the track points at, else HEAD. A choice worth knowing (a name that
    is both a branch and a tag, a pre-release picked) is said in an Event."""
    source = spec.source
    if source.kind == "local":
        return None, None
    resolved = await deps.resolver.resolve_install(source, spec.track)
    if resolved.note:
        emit("Normal", "Resolved", f"{resolved.ref_name} -> {resolved.sha[:12]}: {resolved.note}")
    return resolved.sha, resolved.ref_name


async def claim_winner(deps: Deps, install: InstallView, spec: InstallSpec) -> str:
    """Conflict detection: the name of the PluginInstall that owns
    (workspace, plugin) in the namespace, the oldest one claiming it."""
    claims = []
    for other in map(InstallView.parse, await deps.kube.list(INSTALLS, install.meta.namespace)):
        if other.workspace != spec.workspace or other.meta.deleting:
            continue
        try:
            name = parse_source(str(other.spec.get("source", "")), allow_unpinned=True).name
        except PluginError:
            continue
        if name == spec.plugin:
            claims.append((other.meta.creation_timestamp, other.meta.name))
    return min(claims)[1] if claims else install.meta.name


def recorded_target(install: InstallView, spec: InstallSpec) -> tuple[str, str | None] | None:
    """(sha, update) of the intent recorded before pods were touched (design
    §5), if it is for the spec's source: a restarted operator continues
    forward to it, never back to installedSHA."""
    prev = install.status
    if prev.target_sha and prev.target_source == spec.source.normalized:
        return prev.target_sha, prev.target_update
    return None


NO_TARGET: dict[str, str | None] = {"targetSHA": None, "targetDigest": None, "targetSource": None, "targetUpdate": None}


async def _bring_workspace(
    deps: Deps,
    install: InstallView,
    spec: InstallSpec,
    emit: Emit,
    ticket: RestartTicket,
    *,
    target_sha: str | None,
    update: str | None = None,
) -> Outcome:
    """Resolve, stage, record the intent, deliver to every target pod,
    restart, record."""
    namespace, prev = install.meta.namespace, install.status
    at = now_text()
    sha: str | None
    ref: str | None
    recorded = recorded_target(install, spec)
    try:
        same_source = prev.source_normalized == spec.source.normalized and prev.installed_digest
        if target_sha is not None:
            sha, ref = target_sha, prev.resolved_ref
        elif recorded is not None:
            # A crash (or a failure) after the intent was written: forward.
            (sha, update), ref = recorded, prev.resolved_ref
        elif same_source:
            sha, ref = prev.installed_sha, prev.resolved_ref
        else:
            sha, ref = await resolve_install_target(deps, spec, emit)
        staged = await deps.stager.stage(spec.source, sha)
        delivery.check_deliverable(staged)
    except PluginError as exc:
        return await stalled(deps, install, exc, spec=spec)

    want = Marker(source=spec.source.normalized, sha=sha, digest=staged.digest)
    changed = (prev.installed_sha, prev.installed_digest) != (sha, staged.digest)
    point = "apply" if update else "install"
    intent = {
        "targetSHA": sha,
        "targetDigest": staged.digest,
        "targetSource": spec.source.normalized,
        "targetUpdate": update,
    }
    if changed and sha is not None and any(prev.carried.get(k) != v for k, v in intent.items()):
        # The intent, written (by the one status writer) before any pod is
        # touched: after a crash the restarted operator reads it and goes on
        # to this commit; a pod that took it never goes back.
        install = await _record_intent(deps, install, intent)
        crash_point(f"{point}-after-intent")
    payload_cache: list[tuple[bytes, int]] = []

    def payload() -> tuple[bytes, int]:
        if not payload_cache:
            payload_cache.append(delivery.payload(staged, want.to_bytes(at)))
        return payload_cache[0]

    pods = await deps.kube.list_pods(namespace, spec.pod_selector)
    plans = [plan_pod(p, spec.container) for p in pods]
    targets, notes = split_targets(plans, deps.settings)
    results = list(
        await asyncio.gather(
            *(
                bring_pod(deps.executor, namespace, p, spec.plugin, want, payload, crash=f"{point}-after-first-pod")
                for p in targets
            )
        )
    )
    failed = [r for r in results if r.error]  # only pods written to count
    delivered = [r for r in results if r.delivered]
    skipped = [p for p in plans if p not in targets]
    pods_status = pod_entries(results, skipped, prev, at)
    base = _installed_fields(spec, staged, sha, ref)

    async def not_done(reason: str, message: str) -> Outcome:
        """The previous install stays the recorded one; the next attempt
        picks up where this one stopped (pods already holding it are skipped)."""
        conditions = [
            cond.Condition("Installed", False, reason, message),
            cond.Condition("Stalled", False, reason, "retrying"),
        ]
        kept = {k: prev.carried.get(k) for k in ("installedSHA", "installedDigest", "installedAt", "installedSkills")}
        # The intent stays recorded (install.status carries it): the next
        # attempt, or a restarted operator, continues forward to it.
        status = install_status(install, conditions, **{**base, **kept, "pods": pods_status})
        await write_install_status(deps, install, status)
        return Outcome(retry_after=15, message=message, kind=OutcomeKind.failed)

    if failed:
        detail = "; ".join(r.error or "" for r in failed[:5])
        return await not_done(
            DeliveryFailed.reason, f"{len(failed)} of {len(results)} pod(s) did not take {_label(spec, sha)}: {detail}"
        )

    if delivered:
        crash_point(f"{point}-after-swap")
    restart_note = ""
    if changed and spec.restart == "Rollout" and results:
        try:
            restart_note = await restart_workloads(deps.kube, ticket, namespace, pods, [r.plan.name for r in results])
        except Exception as exc:  # an API refusal or outage; said in status, retried
            log.warning("restart for %s/%s failed", namespace, install.meta.name, exc_info=True)
            why = " ".join(str(getattr(exc, a, "")) for a in ("status", "reason")).strip() or str(exc)
            return await not_done("RestartFailed", f"{_label(spec, sha)} is in every pod but the restart failed: {why}")
    if delivered or changed:
        emit("Normal", "Installed", f"{_label(spec, sha)} in {len(results)} pod(s){restart_note}")
    message = f"{_label(spec, sha)} installed in {len(results)} pod(s)"
    if notes:
        message += "; " + "; ".join(notes)
    conditions = [
        cond.Condition("Installed", True, "Installed", message),
        cond.Condition("Stalled", False, "Installed", ""),
    ]
    status = install_status(
        install,
        conditions,
        **base,
        installedAt=at if changed or not prev.installed_at else prev.installed_at,
        pods=pods_status,
        **NO_TARGET,
    )
    await write_install_status(deps, install, status)
    return Outcome(message=message, kind=OutcomeKind.installed if delivered or changed else OutcomeKind.current)


async def _record_intent(deps: Deps, install: InstallView, intent: dict[str, Any]) -> InstallView:
    """Write status.target* (everything else carried as it is) and return the
    install as written, so later writes of this pass carry the intent."""
    status = install_status(install, [], **intent)
    await write_install_status(deps, install, status)
    return InstallView.parse({**install.body, "status": status})


def _label(spec: InstallSpec, sha: str | None) -> str:
    return f"{spec.plugin}@{sha[:12]}" if sha else f"{spec.plugin} ({spec.source.normalized})"


def _installed_fields(spec: InstallSpec, staged: StagedPlugin, sha: str | None, ref: str | None) -> dict[str, Any]:
    return {
        "pluginName": spec.plugin,
        "sourceNormalized": spec.source.normalized,
        "trackedRef": spec.track.normalized,
        "installedSHA": sha,
        "installedDigest": staged.digest,
        "installedSkills": sorted(s.name for s in staged.meta.skills),
        "resolvedRef": ref,
    }


async def stalled(deps: Deps, install: InstallView, exc: PluginError, *, spec: InstallSpec | None = None) -> Outcome:
    """Say why nothing changed: Stalled=True for a permanent error (a spec
    fix is needed), Stalled=False "retrying" for a temporary one. What was
    installed stays installed."""
    said = exc.message if exc.permanent else f"retrying: {exc.message}"
    conditions = [cond.Condition("Stalled", exc.permanent, exc.reason, said)]
    if not install.status.installed_digest:
        conditions.append(cond.Condition("Installed", False, exc.reason, exc.message))
    changes: dict[str, Any] = {"pluginName": spec.plugin} if spec else {}
    if spec and exc.permanent:
        changes["trackedRef"] = spec.track.normalized
    await write_install_status(deps, install, install_status(install, conditions, **changes))
    metrics.ERRORS.labels(exc.reason).inc()
    if exc.permanent:
        return Outcome(message=exc.message, kind=OutcomeKind.stalled)
    delay, attempt = retry_backoff(install.meta.namespace, install.meta.name, exc.reason)
    before = install.status.condition("Stalled")
    if install.status.installed_digest and (before is None or before.reason != exc.reason):
        # Installed=False said it already on a first install; an installed
        # plugin's trouble (e.g. the operator's disk full while staging an
        # update) is said once per new reason, not only in a log line.
        deps.emitter(install.body)("Warning", exc.reason, f"{exc.message} (retry {attempt} in {delay:.0f}s)")
    return Outcome(retry_after=delay, message=exc.message, kind=OutcomeKind.failed)
