"""Events, posted in the background: never blocking or failing a reconcile,
from any task (handlers, the sweep, pod arrivals). Built once at start-up;
`emitter` is what Deps.emitter holds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from plugin_operator.domain.objects import ObjectMeta
from plugin_operator.reconcile.deps import Emit

log = logging.getLogger(__name__)

# (object, type, reason, message): Kube.post_event.
Post = Callable[[Mapping[str, Any], str, str, str], Awaitable[None]]


class EventPoster:
    def __init__(self, post: Post) -> None:
        self._post = post
        self._posting: set[asyncio.Task[None]] = set()  # held until posted

    def emitter(self, obj: Mapping[str, Any]) -> Emit:
        """The Emit of one object (its raw body: the Event's involvedObject)."""

        def emit(type_: str, reason: str, message: str) -> None:
            task = asyncio.get_running_loop().create_task(self._send(obj, type_, reason, message))
            self._posting.add(task)
            task.add_done_callback(self._posting.discard)

        return emit

    async def _send(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            await self._post(obj, type_, reason, message)
        except Exception as exc:  # an Event is best effort
            log.warning("could not post event %s on %s: %s", reason, ObjectMeta.parse(obj).name, exc)
