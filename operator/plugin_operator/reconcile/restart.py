"""Coalesced rollout restarts: installs that finish together for one
workspace restart each of its workloads once.

An install marks its workspace busy while it works (`working`). A restart
asked for waits a short window, then until no install of that workspace is
still working (at most `max_wait`), and patches each workload once for all
who asked meanwhile. So two installs applied together restart the workspace
once however slow staging or delivery is, and a restart is never held back
for longer than `max_wait`."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

log = logging.getLogger(__name__)

Workspace = tuple[str, str]  # namespace, workspace name
Workload = tuple[str, str, str]  # namespace, kind, name
Patch = Callable[[str, str, str, str], Awaitable[None]]


class RestartTicket:
    """One install's (or uninstall's) turn of work on a workspace: while it
    is held, a coalesced restart of that workspace waits for it."""

    def __init__(self, restarter: Restarter, workspace: Workspace) -> None:
        self._restarter = restarter
        self.workspace = workspace
        self.done = False

    async def finish(self) -> None:
        if not self.done:
            self.done = True
            await self._restarter._leave(self.workspace)

    async def restart(self, workloads: Iterable[Workload]) -> None:
        """Stop counting as working (so the restart does not wait for this
        ticket), then wait for the coalesced restart of `workloads`."""
        await self.finish()
        await self._restarter._restart(self.workspace, workloads)


class Restarter:
    def __init__(self, patch: Patch, *, window: float = 1.0, max_wait: float = 30.0) -> None:
        self._patch = patch
        self._window = window
        self._max_wait = max_wait
        self._busy: Counter[Workspace] = Counter()
        self._changed = asyncio.Condition()
        self._pending: dict[Workload, asyncio.Future[None]] = {}
        self._asked_by: dict[Workload, set[Workspace]] = {}

    @contextlib.asynccontextmanager
    async def working(self, workspace: Workspace) -> AsyncIterator[RestartTicket]:
        self._busy[workspace] += 1
        ticket = RestartTicket(self, workspace)
        try:
            yield ticket
        finally:
            await ticket.finish()

    async def _leave(self, workspace: Workspace) -> None:
        self._busy[workspace] -= 1
        if self._busy[workspace] <= 0:
            del self._busy[workspace]
        async with self._changed:
            self._changed.notify_all()

    async def _restart(self, workspace: Workspace, workloads: Iterable[Workload]) -> None:
        futures = []
        for workload in set(workloads):
            self._asked_by.setdefault(workload, set()).add(workspace)
            pending = self._pending.get(workload)
            if pending is None:
                pending = asyncio.ensure_future(self._fire(workload))
                self._pending[workload] = pending
            futures.append(pending)
        await asyncio.gather(*futures)

    async def _fire(self, workload: Workload) -> None:
        try:
            await asyncio.sleep(self._window)

            def idle() -> bool:
                return not any(self._busy[ws] for ws in self._asked_by.get(workload, ()))

            with contextlib.suppress(TimeoutError):
                async with self._changed:
                    await asyncio.wait_for(self._changed.wait_for(idle), self._max_wait)
        finally:
            self._pending.pop(workload, None)
            self._asked_by.pop(workload, None)
        namespace, kind, name = workload
        at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        await self._patch(namespace, kind, name, at)
        log.info("restarted %s %s/%s", kind, namespace, name)
