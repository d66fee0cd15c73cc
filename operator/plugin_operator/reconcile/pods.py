"""Per-pod delivery: which pods are targets, bringing one pod to the wanted
marker (only a pod that lacks it is written), and restarting the workloads
of the pods written."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from plugin_operator.config import Settings
from plugin_operator.delivery import plugin as delivery
from plugin_operator.delivery.exec import PodExecutor, PodTarget
from plugin_operator.domain.errors import DeliveryFailed
from plugin_operator.domain.install_status import PodResult
from plugin_operator.domain.marker import Marker
from plugin_operator.domain.objects import ObjectMeta
from plugin_operator.domain.pods import PodPlan, owner_of
from plugin_operator.kube.api import Kube
from plugin_operator.reconcile.restart import RestartTicket
from plugin_operator.testhooks import crash_point


def target_of(namespace: str, plan: PodPlan) -> PodTarget:
    assert plan.container is not None
    return PodTarget(namespace, plan.name, plan.container, plan.configs_dir)


async def bring_pod(
    executor: PodExecutor,
    namespace: str,
    plan: PodPlan,
    plugin: str,
    want: Marker,
    payload: Callable[[], tuple[bytes, int]],
    *,
    crash: str | None = None,
) -> PodResult:
    """Read the pod's marker; write the plugin only when it differs.
    (`crash`: a test-only crash point reached after the write, testhooks.)"""
    target = target_of(namespace, plan)
    try:
        have = await delivery.read_installed(executor, target, plugin)
        if have is not None and (have.sha, have.digest) == (want.sha, want.digest):
            return PodResult(plan, have)
        data, files = payload()
        await delivery.install(executor, target, plugin, data, files)
        if crash:
            crash_point(crash)
        return PodResult(plan, want, delivered=True)
    except DeliveryFailed as exc:
        return PodResult(plan, error=exc.message)


def split_targets(plans: list[PodPlan], settings: Settings) -> tuple[list[PodPlan], list[str]]:
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


async def restart_workloads(
    kube: Kube, ticket: RestartTicket, namespace: str, pods: Sequence[Mapping[str, Any]], names: list[str]
) -> str:
    """Restart (coalesced, see reconcile.restart) the StatefulSets and
    Deployments of the named pods; returns what to add to the message."""
    workloads, bare = set(), []
    wanted = set(names)
    for pod in pods:
        name = ObjectMeta.parse(pod).name
        if name not in wanted:
            continue
        owner = owner_of(pod)
        workload = await kube.workload_of(namespace, *owner) if owner else None
        if workload is None:
            bare.append(name)
        else:
            workloads.add((namespace, *workload))
    await ticket.restart(workloads)
    said = f"; restarted {', '.join(f'{k}/{n}' for _, k, n in sorted(workloads))}" if workloads else ""
    if bare:
        said += f"; pods without a StatefulSet or Deployment are not restarted: {', '.join(sorted(bare))}"
    return said
