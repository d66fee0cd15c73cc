"""What every reconciler shares: the dependencies built once at start-up
(`Deps`), the per-install lock, and what a reconcile reports (`Outcome`)."""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from plugin_operator.concurrency import KeyedLock
from plugin_operator.config import Settings
from plugin_operator.delivery.exec import PodExecutor
from plugin_operator.git.resolver import Resolver
from plugin_operator.kube.api import Kube
from plugin_operator.mirror.service import MirrorService
from plugin_operator.reconcile.restart import Restarter
from plugin_operator.staging import Stager

# (event type, reason, message) -> posted as a Kubernetes Event on the object.
Emit = Callable[[str, str, str], None]
# The object (its raw body: the Event's involvedObject) -> its Emit.
Emitter = Callable[[Mapping[str, Any]], Emit]


def now_text() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Deps:
    """Everything the reconcilers use, built once at start-up."""

    settings: Settings
    kube: Kube
    resolver: Resolver
    stager: Stager
    executor: PodExecutor
    mirror: MirrorService
    restarter: Restarter
    emitter: Emitter
    locks: KeyedLock[tuple[str, str]] = field(default_factory=KeyedLock)

    def lock(self, namespace: str, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        """One reconcile per install at a time: the first lock taken (see
        docs/architecture.md for the order)."""
        return self.locks.hold((namespace, name))


class OutcomeKind(enum.StrEnum):
    """The metrics label of an install reconcile (plugin_operator_installs{outcome})."""

    installed = "installed"  # content changed or delivered
    current = "current"  # nothing to do
    failed = "failed"  # a temporary failure: retried
    stalled = "stalled"  # a permanent error: a person must act
    suspended = "suspended"


@dataclass(frozen=True)
class Outcome:
    retry_after: float | None = None  # a temporary failure: try again later
    message: str = ""
    kind: OutcomeKind = OutcomeKind.current
