"""PluginInstall handlers: every trigger runs the same level-triggered
reconcile; deletion runs the uninstall behind the operator's finalizer."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from plugin_operator import GROUP, VERSION
from plugin_operator.domain.pods import WORKSPACE_LABEL
from plugin_operator.handlers.outcome import raise_for
from plugin_operator.handlers.settings import SETTINGS
from plugin_operator.kube.api import INSTALLS
from plugin_operator.reconcile.install import Deps, reconcile_install, uninstall

log = logging.getLogger(__name__)


@kopf.on.resume(GROUP, VERSION, INSTALLS)
@kopf.on.create(GROUP, VERSION, INSTALLS)
@kopf.on.update(GROUP, VERSION, INSTALLS, field="spec")
async def install_changed(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    raise_for(await reconcile_install(memo.deps, str(namespace), name))


@kopf.timer(GROUP, VERSION, INSTALLS, interval=SETTINGS.reconcile_interval, initial_delay=SETTINGS.reconcile_interval)
async def install_periodic(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    # Level-triggered safety net: drifted pods, pods missed while down.
    await reconcile_install(memo.deps, str(namespace), name)


@kopf.on.delete(GROUP, VERSION, INSTALLS)
async def install_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    outcome = await uninstall(memo.deps, dict(body))
    raise_for(outcome)
    await _kick_workspace(memo.deps, body["metadata"]["namespace"], (body.get("spec") or {}).get("workspace"))


# -- pods arriving -------------------------------------------------------------------
# A pod that starts running (a new replica, a recreated pod) gets the recorded
# plugins at once. Only the first Running sighting of a pod uid kicks, so
# status churn and rollouts do not loop.

_seen_running: set[str] = set()
_pending_kicks: dict[tuple[str, str], asyncio.Task[None]] = {}
_running_kicks: set[asyncio.Task[None]] = set()


async def _kick_workspace(deps: Deps, namespace: str, workspace: str | None, delay: float = 1.0) -> None:
    if not workspace:
        return
    key = (namespace, workspace)
    if key in _pending_kicks:
        return

    async def later() -> None:
        try:
            await asyncio.sleep(delay)
        finally:
            _pending_kicks.pop(key, None)
        try:
            for install in await deps.kube.list(INSTALLS, namespace):
                if (install.get("spec") or {}).get("workspace") == workspace:
                    await reconcile_install(deps, namespace, install["metadata"]["name"])
        except Exception:  # the periodic reconcile catches up
            log.exception("bringing workspace %s/%s up to date failed", namespace, workspace)

    task = asyncio.create_task(later())
    _pending_kicks[key] = task
    _running_kicks.add(task)  # held until done, also after it leaves _pending_kicks
    task.add_done_callback(_running_kicks.discard)


@kopf.on.event("", "v1", "pods", labels={WORKSPACE_LABEL: kopf.PRESENT})
async def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    pod = event["object"]
    uid = pod["metadata"].get("uid", "")
    phase = (pod.get("status") or {}).get("phase")
    if event["type"] == "DELETED" or pod["metadata"].get("deletionTimestamp") or phase in ("Succeeded", "Failed"):
        _seen_running.discard(uid)  # on its way out: whichever of these events the watch delivers
        return
    if phase != "Running" or uid in _seen_running:
        return
    _seen_running.add(uid)
    workspace = (pod["metadata"].get("labels") or {}).get(WORKSPACE_LABEL)
    await _kick_workspace(memo.deps, pod["metadata"]["namespace"], workspace)
