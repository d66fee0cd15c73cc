"""Uninstall (design §4): remove what a PluginInstall put into its pods,
behind the operator's finalizer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from plugin_operator.delivery import plugin as delivery
from plugin_operator.domain.errors import DeliveryFailed, PluginError
from plugin_operator.domain.install_spec import parse_install_spec
from plugin_operator.domain.objects import InstallView
from plugin_operator.domain.pods import WORKSPACE_LABEL, PodPlan, plan_pod
from plugin_operator.reconcile.deps import Deps, Outcome, OutcomeKind, now_text
from plugin_operator.reconcile.pods import restart_workloads, target_of
from plugin_operator.reconcile.status import write_install_fields

log = logging.getLogger(__name__)


async def uninstall(deps: Deps, obj: Mapping[str, Any]) -> Outcome:
    """Remove what this PluginInstall put into pods. Only an install that
    actually delivered (status.installedDigest) removes anything, so the loser
    of a Conflict never touches the winner's plugin."""
    install = InstallView.parse(obj)
    namespace = install.meta.namespace
    async with deps.lock(namespace, install.meta.name):
        emit = deps.emitter(install.body)
        plugin = install.status.plugin_name
        if not install.status.installed_digest or not plugin:
            await deps.mirror.install_deleted(install.body)
            return Outcome(message="nothing was installed")
        try:
            spec = parse_install_spec(install.spec, allow_unpinned=True)
            selector, container, restart = spec.pod_selector, spec.container, spec.restart
        except PluginError:
            selector = f"{WORKSPACE_LABEL}={install.workspace}"
            container, restart = install.spec.get("container"), install.spec.get("restart", "Rollout")
        async with deps.restarter.working((namespace, install.workspace)) as ticket:  # deleted together: one restart
            pods = await deps.kube.list_pods(namespace, selector)
            plans = [plan_pod(p, container) for p in pods]
            targets = [p for p in plans if not p.external and p.ready and not p.problem and p.container]
            skills = list(install.status.installed_skills)

            async def remove(plan: PodPlan) -> tuple[str | None, delivery.RemoveReport | None]:
                try:
                    return None, await delivery.remove(deps.executor, target_of(namespace, plan), plugin, skills)
                except DeliveryFailed as exc:
                    return exc.message, None

            done = await asyncio.gather(*(remove(p) for p in targets))
            errors = [e for e, _ in done if e]
            if errors:
                message = f"uninstall of {plugin} failed in {len(errors)} pod(s): {'; '.join(errors[:3])}"
                emit("Warning", "UninstallFailed", message)
                return Outcome(retry_after=15, message=message, kind=OutcomeKind.failed)
            reports = [(p.name, r) for p, (_, r) in zip(targets, done, strict=True)]
            await _report_claude_md(deps, install, plugin, reports)
            note = ""
            if restart == "Rollout" and targets:
                note = await restart_workloads(deps.kube, ticket, namespace, pods, [p.name for p in targets])
        emit("Normal", "Uninstalled", f"{plugin} removed from {len(targets)} pod(s){note}")
        await deps.mirror.install_deleted(install.body)
        return Outcome(message="removed")


async def _report_claude_md(
    deps: Deps, install: InstallView, plugin: str, reports: list[tuple[str, delivery.RemoveReport | None]]
) -> None:
    """A pod whose CLAUDE.md was left untouched (ambiguous blocks, a symlink,
    binary content ...) says so in its status entry and in a Warning Event;
    the uninstall itself goes on (nothing is lost: the user's file stays as
    it was)."""
    left = [(pod, r.left_alone) for pod, r in reports if r is not None and r.left_alone]
    if not left:
        return
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
    deps.emitter(install.body)(
        "Warning",
        "ClaudeMdLeftAlone",
        f"{plugin} removed, but CLAUDE.md was left untouched in {len(left)} pod(s), its block must be removed "
        f"by hand: {said}{more}",
    )
    meta = install.meta
    try:
        await write_install_fields(deps, meta.namespace, meta.name, {"pods": entries})
    except Exception as exc:  # the object may be going away; the Event says it too
        log.warning("could not record the CLAUDE.md note on %s/%s: %s", meta.namespace, meta.name, exc)
