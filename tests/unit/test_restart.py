"""Coalesced restarts (reconcile.restart): the only collaborator faked is the
workload patch, which records what it was asked to do."""

from __future__ import annotations

import asyncio

from plugin_operator.reconcile.restart import Restarter

WS = ("team", "ws1")
STS = ("team", "StatefulSet", "ws1")


class Patches:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    async def __call__(self, namespace: str, kind: str, name: str, at: str) -> None:
        self.calls.append((namespace, kind, name))


async def install(restarter: Restarter, work: float, workspace: tuple[str, str] = WS) -> None:
    async with restarter.working(workspace) as job:
        await asyncio.sleep(work)
        await job.restart([STS if workspace == WS else ("team", "StatefulSet", workspace[1])])


async def test_an_install_still_working_holds_the_restart_so_both_restart_once() -> None:
    patches = Patches()
    restarter = Restarter(patches, window=0.05, max_wait=5)
    # the second install finishes long after the first one's window
    await asyncio.gather(install(restarter, 0.0), install(restarter, 0.5))
    assert patches.calls == [STS]


async def test_installs_one_after_another_restart_each_time() -> None:
    patches = Patches()
    restarter = Restarter(patches, window=0.01, max_wait=5)
    await install(restarter, 0.0)
    await install(restarter, 0.0)
    assert patches.calls == [STS, STS]


async def test_a_busy_other_workspace_does_not_hold_the_restart() -> None:
    patches = Patches()
    restarter = Restarter(patches, window=0.01, max_wait=5)
    other = asyncio.ensure_future(install(restarter, 0.6, ("team", "ws2")))
    await asyncio.sleep(0.01)
    await asyncio.wait_for(install(restarter, 0.0), 0.4)
    assert patches.calls == [STS]
    await other
    assert patches.calls == [STS, ("team", "StatefulSet", "ws2")]


async def test_a_restart_waits_at_most_max_wait_for_a_slow_install() -> None:
    patches = Patches()
    restarter = Restarter(patches, window=0.01, max_wait=0.1)
    slow = asyncio.ensure_future(install(restarter, 1.0))
    await asyncio.sleep(0.01)
    await asyncio.wait_for(install(restarter, 0.0), 0.5)
    assert patches.calls == [STS]
    await slow
    assert patches.calls == [STS, STS]


async def test_an_install_that_fails_before_restarting_releases_the_workspace() -> None:
    patches = Patches()
    restarter = Restarter(patches, window=0.01, max_wait=5)

    async def failing() -> None:
        async with restarter.working(WS):
            await asyncio.sleep(0.1)
            raise RuntimeError("stage failed")

    first = asyncio.ensure_future(failing())
    await asyncio.wait_for(install(restarter, 0.0), 0.5)
    assert first.done() and isinstance(first.exception(), RuntimeError)
    assert patches.calls == [STS]
