"""Single flight: concurrent callers asking for one key share one call."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """The first caller for a key starts `make()`; callers arriving while it
    runs await the same result. One caller giving up (cancelled) does not
    cancel the call for the others. Nothing is kept once the call ends."""

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, make: Callable[[], Awaitable[V]]) -> V:
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(make())
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._settle, key))
        return await asyncio.shield(task)

    def _settle(self, key: K, done: asyncio.Future[V]) -> None:
        if self._inflight.get(key) is done:
            del self._inflight[key]
        if not done.cancelled():
            done.exception()  # retrieved: no "never retrieved" warning when every caller left
