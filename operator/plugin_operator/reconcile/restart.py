"""Coalesced rollout restarts: several installs finishing together for one
workspace restart each of its workloads once."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterable

log = logging.getLogger(__name__)

Workload = tuple[str, str, str]  # namespace, kind, name
Patch = Callable[[str, str, str, str], Awaitable[None]]


class Restarter:
    def __init__(self, patch: Patch, *, window: float = 1.0) -> None:
        self._patch = patch
        self._window = window
        self._pending: dict[Workload, asyncio.Future[None]] = {}
        self.restarts = 0

    async def restart(self, workloads: Iterable[Workload]) -> None:
        await asyncio.gather(*(self._one(w) for w in set(workloads)))

    def _one(self, workload: Workload) -> asyncio.Future[None]:
        pending = self._pending.get(workload)
        if pending is None:
            pending = asyncio.ensure_future(self._fire(workload))
            self._pending[workload] = pending
        return pending

    async def _fire(self, workload: Workload) -> None:
        try:
            await asyncio.sleep(self._window)
        finally:
            self._pending.pop(workload, None)
        namespace, kind, name = workload
        at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        await self._patch(namespace, kind, name, at)
        self.restarts += 1
        log.info("restarted %s %s/%s", kind, namespace, name)
