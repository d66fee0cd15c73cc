"""Pods arriving: a pod that starts running (a new replica, a recreated pod)
gets the recorded plugins at once, through a kick of its workspace.

Only the first Running sighting of a pod uid kicks, so status churn and
rollouts do not loop; a pod on its way out leaves the seen set. Kicks of one
workspace within `delay` coalesce into one pass over its installs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from plugin_operator.domain.objects import InstallView, ObjectMeta, section
from plugin_operator.domain.pods import WORKSPACE_LABEL
from plugin_operator.kube.api import INSTALLS
from plugin_operator.reconcile.deps import Deps
from plugin_operator.reconcile.install import reconcile_install

log = logging.getLogger(__name__)


class PodArrivals:
    def __init__(self, deps: Deps, *, delay: float = 1.0) -> None:
        self._deps = deps
        self._delay = delay
        self._seen_running: set[str] = set()  # pod uids
        self._pending: dict[tuple[str, str], asyncio.Task[None]] = {}  # workspace -> its coming kick
        self._running: set[asyncio.Task[None]] = set()  # held until done, also after leaving _pending

    def pod_event(self, event_type: str, pod: Mapping[str, Any]) -> None:
        """A watch event of a workspace pod."""
        meta = ObjectMeta.parse(pod)
        phase = section(pod, "status").get("phase")
        if event_type == "DELETED" or meta.deleting or phase in ("Succeeded", "Failed"):
            self._seen_running.discard(meta.uid)  # on its way out: whichever of these events the watch delivers
            return
        if phase != "Running" or meta.uid in self._seen_running:
            return
        self._seen_running.add(meta.uid)
        self.kick(meta.namespace, meta.labels.get(WORKSPACE_LABEL))

    def kick(self, namespace: str, workspace: str | None) -> None:
        """Reconcile every install of the workspace, soon (coalesced)."""
        if not workspace:
            return
        key = (namespace, workspace)
        if key in self._pending:
            return
        task = asyncio.get_running_loop().create_task(self._later(key))
        self._pending[key] = task
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _later(self, key: tuple[str, str]) -> None:
        namespace, workspace = key
        try:
            await asyncio.sleep(self._delay)
        finally:
            self._pending.pop(key, None)
        try:
            for install in map(InstallView.parse, await self._deps.kube.list(INSTALLS, namespace)):
                if install.workspace == workspace:
                    await reconcile_install(self._deps, namespace, install.meta.name)
        except Exception:  # the periodic reconcile catches up
            log.exception("bringing workspace %s/%s up to date failed", namespace, workspace)

    async def close(self) -> None:
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
