"""A sweep lost to an API blip is tried again with backoff, not an interval later (issue: Faults)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from plugin_operator.config import Settings
from plugin_operator.reconcile.sweep import Sweeper


class _FlakyKube:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def list(self, *_: Any) -> list[dict[str, Any]]:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionError("apiserver restarting")
        return []


def _deps(kube: _FlakyKube, interval: float = 3600.0) -> Any:
    resolver = SimpleNamespace(git_calls=0, forget=lambda _source: None)
    return SimpleNamespace(kube=kube, resolver=resolver, settings=Settings(drift_sweep_interval=interval))


def test_retry_delays_double_and_stay_well_below_the_interval() -> None:
    delays = Sweeper(_deps(_FlakyKube(0)), []).retry_delays()
    assert [next(delays) for _ in range(8)] == [5, 10, 20, 40, 80, 120, 120, 120]
    short = Sweeper(_deps(_FlakyKube(0), interval=60.0), []).retry_delays()
    assert [next(short) for _ in range(3)] == [5, 6, 6]


async def test_a_failed_sweep_is_retried_until_it_succeeds() -> None:
    kube = _FlakyKube(failures=3)
    sweeper = Sweeper(_deps(kube), ["team"], retry_first=0.01)
    sweeper.kick()
    assert sweeper._task is not None
    await asyncio.wait_for(sweeper._task, 5)
    # three failed LISTs of installs, then one LIST of installs and one of updates
    assert kube.calls == 5
    assert sweeper.failures == 0
    sweeper.kick()  # not due again before the interval
    assert sweeper._task.done()
    await sweeper.close()
