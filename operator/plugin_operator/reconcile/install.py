"""Install and uninstall: one idempotent, level-triggered reconcile per
PluginInstall (design §5).

reconcile_install reads the object fresh, decides the commit, stages it once,
brings every target pod to it (only pods that lack it are written), restarts
the workspace when the installed content changed, and writes status whole.
It is called from create/update/resume, the periodic timer, pod arrivals and
approved updates; a per-object lock serialises them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from plugin_operator import metrics
from plugin_operator.concurrency import KeyedLock
from plugin_operator.config import Settings
from plugin_operator.delivery import plugin as delivery
from plugin_operator.delivery.exec import PodExecutor, PodTarget
from plugin_operator.domain import conditions as cond
from plugin_operator.domain.errors import Conflict, DeliveryFailed, PluginError
from plugin_operator.domain.install_spec import InstallSpec, parse_install_spec
from plugin_operator.domain.marker import Marker
from plugin_operator.domain.pods import WORKSPACE_LABEL, PodPlan, owner_of, plan_pod
from plugin_operator.domain.source import parse_source
from plugin_operator.git.resolver import Resolver
from plugin_operator.kube.api import INSTALLS, Kube
from plugin_operator.mirror.service import MirrorService
from plugin_operator.reconcile.restart import Job, Restarter
from plugin_operator.staging import StagedPlugin, Stager

log = logging.getLogger(__name__)

# (event type, reason, message) -> posted as a Kubernetes Event on the object.
Emit = Callable[[str, str, str], None]


def now_text() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Deps:
    """Everything the reconcilers use, built once at start-up."""

    settings: Settings
    kube: Kube
    resolver: Resolver
    stager: Stager
    executor: PodExecutor
    mirror: MirrorService
    restarter: Restarter
    emitter: Callable[[Mapping[str, Any]], Emit]
    locks: KeyedLock[tuple[str, str]] = field(default_factory=KeyedLock)

    def lock(self, namespace: str, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        """One reconcile per install at a time."""
        return self.locks.hold((namespace, name))


@dataclass
class Outcome:
    retry_after: float | None = None  # a temporary failure: try again later
    message: str = ""
    kind: str = "current"  # for the metrics: installed, current, failed, stalled, suspended


# -- status -----------------------------------------------------------------

_STATUS_KEYS = (
    "pluginName",
    "sourceNormalized",
    "trackedRef",
    "installedSHA",
    "installedShortSHA",
    "installedDigest",
    "installedAt",
    "installedSkills",
    "resolvedRef",
    "upstreamSHA",
    "lastResolvedAt",
    "pendingUpdate",
    "pendingUpdateSHA",
    "pendingUpdateRef",
    "observedResolve",
    "pods",
)


def whole_status(
    prev: Mapping[str, Any],
    generation: int,
    conditions: list[cond.Condition],
    **changes: Any,
) -> dict[str, Any]:
    """The full status: every known field (None clears it), changes applied."""
    status: dict[str, Any] = {key: prev.get(key) for key in _STATUS_KEYS}
    status.update(changes)
    sha = status.get("installedSHA")
    status["installedShortSHA"] = sha[:12] if sha else None
    keep = {c.type for c in conditions}
    carried = [
        cond.parse(c) for c in prev.get("conditions") or [] if c.get("type") not in keep and c.get("type") != "Ready"
    ]
    merged = [*conditions, *carried]
    merged.append(_ready(merged))
    status["conditions"] = cond.merge(prev.get("conditions"), merged, generation=generation, now=now_text())
    status["observedGeneration"] = generation
    return status


def _ready(conditions: list[cond.Condition]) -> cond.Condition:
    by_type = {c.type: c for c in conditions if c.type != "Ready"}
    stalled = by_type.get("Stalled")
    if stalled and stalled.status:
        return cond.Condition("Ready", False, stalled.reason, stalled.message)
    installed = by_type.get("Installed")
    if installed is None or not installed.status:
        reason = installed.reason if installed else "Progressing"
        return cond.Condition("Ready", False, reason, installed.message if installed else "")
    return cond.Condition("Ready", True, installed.reason, installed.message)


async def write_status(deps: Deps, obj: Mapping[str, Any], status: dict[str, Any], emit: Emit) -> None:
    meta = obj["metadata"]
    await deps.kube.patch_status(INSTALLS, meta["namespace"], meta["name"], status)
    # An Event for every change of a problem condition (Installed, Stalled).
    before = {c.get("type"): cond.parse(c) for c in (obj.get("status") or {}).get("conditions") or []}
    for raw in status["conditions"]:
        new, old = cond.parse(raw), before.get(raw["type"])
        if new.type not in ("Installed", "Stalled") or new == old:
            continue
        problem = (new.type == "Stalled") == bool(new.status)
        if new.type == "Stalled" and not new.status and (old is None or not old.status):
            continue
        emit("Warning" if problem else "Normal", new.reason, new.message)
    await deps.mirror.install_changed(obj, status)


# -- choosing the commit ------------------------------------------------------


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


# -- per-pod delivery -----------------------------------------------------------


@dataclass
class PodResult:
    plan: PodPlan
    marker: Marker | None = None
    delivered: bool = False
    error: str | None = None


async def _bring_pod(
    executor: PodExecutor,
    namespace: str,
    plan: PodPlan,
    spec: InstallSpec,
    want: Marker,
    payload: Callable[[], tuple[bytes, int]],
) -> PodResult:
    assert plan.container is not None
    target = PodTarget(namespace, plan.name, plan.container, plan.configs_dir)
    try:
        have = await delivery.read_installed(executor, target, spec.plugin)
        if have is not None and (have.sha, have.digest) == (want.sha, want.digest):
            return PodResult(plan, have)
        data, files = payload()
        await delivery.install(executor, target, spec.plugin, data, files)
        return PodResult(plan, want, delivered=True)
    except DeliveryFailed as exc:
        return PodResult(plan, error=exc.message)


def _pod_entries(
    results: list[PodResult], skipped: list[PodPlan], prev: Mapping[str, Any], at: str
) -> list[dict[str, Any]]:
    """One entry per workspace pod: what it holds (as far as the operator
    wrote or verified it), or why it was not written."""
    before = {p.get("name"): p for p in prev.get("pods") or []}
    waiting = "external runtime: pulls the plugin itself"
    results = results + [
        PodResult(p, error=waiting if p.external else (p.problem or "not running yet")) for p in skipped
    ]
    entries = []
    for r in sorted(results, key=lambda r: r.plan.name):
        old = before.get(r.plan.name) or {}
        same = r.marker is not None and (old.get("sha"), old.get("digest")) == (r.marker.sha, r.marker.digest)
        entries.append(
            {
                "name": r.plan.name,
                "sha": r.marker.sha if r.marker else None,
                "digest": r.marker.digest if r.marker else None,
                "time": (old.get("time") if same and not r.delivered else at) if r.marker else None,
                "message": r.error,
            }
        )
    return entries


def _summarise_pods(plans: list[PodPlan], settings: Settings) -> tuple[list[PodPlan], list[str]]:
    """Target pods, and notes on pods that are skipped (said in the message)."""
    targets, notes = [], []
    external = [p.name for p in plans if p.external]
    if external:
        where = f" from {settings.pull_endpoint}" if settings.pull_endpoint else " from the operator's pull endpoint"
        notes.append(
            f"{len(external)} pod(s) run an external runtime (plugins.workspace.dev/runtime=external) and are not "
            f"pushed to; they pull the plugin themselves{where}: {', '.join(sorted(external))}"
        )
    for p in plans:
        if p.external:
            continue
        if p.problem:
            notes.append(f"pod {p.name}: {p.problem}")
        elif not p.ready:
            notes.append(f"pod {p.name} is not running yet; it gets the plugin when it is")
        else:
            targets.append(p)
    return targets, notes


async def _claim_winner(deps: Deps, obj: Mapping[str, Any], spec: InstallSpec) -> str:
    """Name of the PluginInstall that owns (workspace, plugin) in the namespace:
    the oldest one claiming it."""
    meta = obj["metadata"]
    claims = []
    for other in await deps.kube.list(INSTALLS, meta["namespace"]):
        o_spec = other.get("spec") or {}
        if o_spec.get("workspace") != spec.workspace or other["metadata"].get("deletionTimestamp"):
            continue
        try:
            name = parse_source(str(o_spec.get("source", "")), allow_unpinned=True).name
        except PluginError:
            continue
        if name == spec.plugin:
            claims.append((str(other["metadata"].get("creationTimestamp", "")), str(other["metadata"]["name"])))
    return min(claims)[1] if claims else str(meta["name"])


# -- reconcile ---------------------------------------------------------------------


async def reconcile_install(deps: Deps, namespace: str, name: str, *, target_sha: str | None = None) -> Outcome:
    async with deps.lock(namespace, name):
        obj = await deps.kube.get(INSTALLS, namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return Outcome(message="gone")
        return await _reconcile_locked(deps, obj, target_sha=target_sha)


async def _reconcile_locked(deps: Deps, obj: Mapping[str, Any], *, target_sha: str | None) -> Outcome:
    outcome = await _reconcile_steps(deps, obj, target_sha=target_sha)
    metrics.INSTALLS.labels(outcome.kind).inc()
    return outcome


async def _reconcile_steps(deps: Deps, obj: Mapping[str, Any], *, target_sha: str | None) -> Outcome:
    meta = obj["metadata"]
    namespace, generation = meta["namespace"], int(meta.get("generation", 0))
    prev: Mapping[str, Any] = obj.get("status") or {}
    emit = deps.emitter(obj)
    try:
        spec = parse_install_spec(obj.get("spec") or {}, allow_unpinned=deps.settings.allow_unpinned)
    except PluginError as exc:
        return await _stalled(deps, obj, exc, emit)
    if spec.suspend:
        note = cond.Condition("Stalled", False, "Suspended", "spec.suspend is true: not reconciling")
        await write_status(deps, obj, whole_status(prev, generation, [note]), emit)
        return Outcome(message="suspended", kind="suspended")
    winner = await _claim_winner(deps, obj, spec)
    if winner != meta["name"]:
        conflict = Conflict(
            f"workspace {spec.workspace} already gets plugin {spec.plugin} from PluginInstall {winner}; "
            "this one changes nothing until that one is deleted"
        )
        return await _stalled(deps, obj, conflict, emit, spec=spec)
    async with deps.restarter.working((namespace, spec.workspace)) as job:
        return await _bring_workspace(deps, obj, spec, emit, job, target_sha=target_sha)


async def _bring_workspace(
    deps: Deps, obj: Mapping[str, Any], spec: InstallSpec, emit: Emit, job: Job, *, target_sha: str | None
) -> Outcome:
    """Resolve, stage, deliver to every target pod, restart, record."""
    meta = obj["metadata"]
    namespace, generation = meta["namespace"], int(meta.get("generation", 0))
    prev: Mapping[str, Any] = obj.get("status") or {}
    at = now_text()
    sha: str | None
    ref: str | None
    try:
        same_source = prev.get("sourceNormalized") == spec.source.normalized and prev.get("installedDigest")
        if target_sha is not None:
            sha, ref = target_sha, prev.get("resolvedRef")
        elif same_source:
            sha, ref = prev.get("installedSHA"), prev.get("resolvedRef")
        else:
            sha, ref = await resolve_install_target(deps, spec, emit)
        staged = await deps.stager.stage(spec.source, sha)
        delivery.check_deliverable(staged)
    except PluginError as exc:
        return await _stalled(deps, obj, exc, emit, spec=spec)

    want = Marker(source=spec.source.normalized, sha=sha, digest=staged.digest)
    payload_cache: list[tuple[bytes, int]] = []

    def payload() -> tuple[bytes, int]:
        if not payload_cache:
            payload_cache.append(delivery.payload(staged, want.to_bytes(at)))
        return payload_cache[0]

    pods = await deps.kube.list_pods(namespace, spec.pod_selector)
    plans = [plan_pod(p, spec.container) for p in pods]
    targets, notes = _summarise_pods(plans, deps.settings)
    results = list(
        await asyncio.gather(*(_bring_pod(deps.executor, namespace, p, spec, want, payload) for p in targets))
    )
    failed = [r for r in results if r.error]  # only pods written to count
    delivered = [r for r in results if r.delivered]
    changed = (prev.get("installedSHA"), prev.get("installedDigest")) != (sha, staged.digest)
    skipped = [p for p in plans if p not in targets]
    pods_status = _pod_entries(results, skipped, prev, at)
    base = _installed_fields(spec, staged, sha, ref)

    async def not_done(reason: str, message: str) -> Outcome:
        """The previous install stays the recorded one; the next attempt
        picks up where this one stopped (pods already holding it are skipped)."""
        conditions = [
            cond.Condition("Installed", False, reason, message),
            cond.Condition("Stalled", False, reason, "retrying"),
        ]
        kept = {k: prev.get(k) for k in ("installedSHA", "installedDigest", "installedAt", "installedSkills")}
        status = whole_status(prev, generation, conditions, **{**base, **kept, "pods": pods_status})
        await write_status(deps, obj, status, emit)
        return Outcome(retry_after=15, message=message, kind="failed")

    if failed:
        detail = "; ".join(r.error or "" for r in failed[:5])
        return await not_done(
            DeliveryFailed.reason, f"{len(failed)} of {len(results)} pod(s) did not take {_label(spec, sha)}: {detail}"
        )

    restart_note = ""
    if changed and spec.restart == "Rollout" and results:
        try:
            restart_note = await _restart(deps, job, namespace, pods, [r.plan.name for r in results])
        except Exception as exc:  # an API refusal or outage; said in status, retried
            log.warning("restart for %s/%s failed", namespace, meta["name"], exc_info=True)
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
    status = whole_status(
        prev,
        generation,
        conditions,
        **base,
        installedAt=at if changed or not prev.get("installedAt") else prev.get("installedAt"),
        pods=pods_status,
    )
    await write_status(deps, obj, status, emit)
    return Outcome(message=message, kind="installed" if delivered or changed else "current")


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


async def _restart(deps: Deps, job: Job, namespace: str, pods: list[dict[str, Any]], names: list[str]) -> str:
    workloads, bare = set(), []
    wanted = set(names)
    for pod in pods:
        if pod["metadata"]["name"] not in wanted:
            continue
        owner = owner_of(pod)
        workload = await deps.kube.workload_of(namespace, *owner) if owner else None
        if workload is None:
            bare.append(pod["metadata"]["name"])
        else:
            workloads.add((namespace, *workload))
    await job.restart(workloads)
    said = f"; restarted {', '.join(f'{k}/{n}' for _, k, n in sorted(workloads))}" if workloads else ""
    if bare:
        said += f"; pods without a StatefulSet or Deployment are not restarted: {', '.join(sorted(bare))}"
    return said


async def _stalled(
    deps: Deps, obj: Mapping[str, Any], exc: PluginError, emit: Emit, *, spec: InstallSpec | None = None
) -> Outcome:
    """Say why nothing changed: Stalled=True for a permanent error (a spec
    fix is needed), Stalled=False "retrying" for a temporary one. What was
    installed stays installed."""
    prev = obj.get("status") or {}
    said = exc.message if exc.permanent else f"retrying: {exc.message}"
    conditions = [cond.Condition("Stalled", exc.permanent, exc.reason, said)]
    if not prev.get("installedDigest"):
        conditions.append(cond.Condition("Installed", False, exc.reason, exc.message))
    changes: dict[str, Any] = {"pluginName": spec.plugin} if spec else {}
    if spec and exc.permanent:
        changes["trackedRef"] = spec.track.normalized
    status = whole_status(prev, int(obj["metadata"].get("generation", 0)), conditions, **changes)
    await write_status(deps, obj, status, emit)
    metrics.ERRORS.labels(exc.reason).inc()
    if exc.permanent:
        return Outcome(message=exc.message, kind="stalled")
    return Outcome(retry_after=30, message=exc.message, kind="failed")


# -- uninstall ---------------------------------------------------------------------


async def _report_claude_md(
    deps: Deps, obj: Mapping[str, Any], plugin: str, reports: list[tuple[str, delivery.RemoveReport | None]]
) -> None:
    """A pod whose CLAUDE.md was left untouched (ambiguous blocks, a symlink,
    binary content ...) says so in its status entry and in a Warning Event;
    the uninstall itself goes on (nothing is lost: the user's file stays as
    it was)."""
    left = [(pod, r.left_alone) for pod, r in reports if r is not None and r.left_alone]
    if not left:
        return
    meta = obj["metadata"]
    at = now_text()
    notes = dict(left)
    entries = [
        {
            "name": pod,
            "sha": None,
            "digest": None,
            "time": at,
            "message": (
                f"{plugin} removed; CLAUDE.md left untouched ({notes[pod]}): remove its block by hand"
                if pod in notes
                else f"{plugin} removed"
            ),
        }
        for pod in sorted(name for name, _ in reports)
    ]
    said = "; ".join(f"pod {pod}: {note}" for pod, note in left[:5])
    more = f" (and {len(left) - 5} more pod(s))" if len(left) > 5 else ""
    deps.emitter(obj)(
        "Warning",
        "ClaudeMdLeftAlone",
        f"{plugin} removed, but CLAUDE.md was left untouched in {len(left)} pod(s), its block must be removed "
        f"by hand: {said}{more}",
    )
    try:
        await deps.kube.patch_status(INSTALLS, meta["namespace"], meta["name"], {"pods": entries})
    except Exception as exc:  # the object may be going away; the Event says it too
        log.warning("could not record the CLAUDE.md note on %s/%s: %s", meta["namespace"], meta["name"], exc)


async def uninstall(deps: Deps, obj: Mapping[str, Any]) -> Outcome:
    """Remove what this PluginInstall put into pods. Only an install that
    actually delivered (status.installedDigest) removes anything, so the loser
    of a Conflict never touches the winner's plugin."""
    meta = obj["metadata"]
    namespace = meta["namespace"]
    async with deps.lock(namespace, meta["name"]):
        prev = obj.get("status") or {}
        emit = deps.emitter(obj)
        plugin = prev.get("pluginName")
        if not prev.get("installedDigest") or not plugin:
            await deps.mirror.install_deleted(obj)
            return Outcome(message="nothing was installed")
        raw_spec = obj.get("spec") or {}
        try:
            spec = parse_install_spec(raw_spec, allow_unpinned=True)
            selector, container, restart = spec.pod_selector, spec.container, spec.restart
        except PluginError:
            selector = f"{WORKSPACE_LABEL}={raw_spec.get('workspace', '')}"
            container, restart = raw_spec.get("container"), raw_spec.get("restart", "Rollout")
        workspace = (namespace, str(raw_spec.get("workspace", "")))
        async with deps.restarter.working(workspace) as job:  # deleted together: one restart
            pods = await deps.kube.list_pods(namespace, selector)
            plans = [plan_pod(p, container) for p in pods]
            targets = [p for p in plans if not p.external and p.ready and not p.problem and p.container]
            skills = [s for s in prev.get("installedSkills") or [] if isinstance(s, str)]

            async def remove(plan: PodPlan) -> tuple[str | None, delivery.RemoveReport | None]:
                assert plan.container is not None
                try:
                    target = PodTarget(namespace, plan.name, plan.container, plan.configs_dir)
                    return None, await delivery.remove(deps.executor, target, plugin, skills)
                except DeliveryFailed as exc:
                    return exc.message, None

            done = await asyncio.gather(*(remove(p) for p in targets))
            errors = [e for e, _ in done if e]
            if errors:
                message = f"uninstall of {plugin} failed in {len(errors)} pod(s): {'; '.join(errors[:3])}"
                emit("Warning", "UninstallFailed", message)
                return Outcome(retry_after=15, message=message, kind="failed")
            await _report_claude_md(deps, obj, plugin, [(p.name, r) for p, (_, r) in zip(targets, done, strict=True)])
            note = ""
            if restart == "Rollout" and targets:
                note = await _restart(deps, job, namespace, pods, [p.name for p in targets])
        emit("Normal", "Uninstalled", f"{plugin} removed from {len(targets)} pod(s){note}")
        await deps.mirror.install_deleted(obj)
        return Outcome(message="removed")
