"""Operator settings and the clients every handler shares (through memo)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from plugin_operator import GROUP, metrics
from plugin_operator.delivery.exec import PodExecutor
from plugin_operator.domain.redact import install_log_redaction
from plugin_operator.git.resolver import Resolver
from plugin_operator.handlers.settings import SETTINGS
from plugin_operator.kube.api import INSTALLS, UPDATES, Kube, load_config
from plugin_operator.mirror.service import MirrorService
from plugin_operator.reconcile.install import Deps, Emit
from plugin_operator.reconcile.restart import Restarter
from plugin_operator.reconcile.updates import Sweeper
from plugin_operator.staging import Stager

log = logging.getLogger(__name__)


_posting: set[asyncio.Task[None]] = set()


def _emitter_for(kube: Kube) -> Callable[[Mapping[str, Any]], Emit]:
    """Events are posted in the background (never blocking or failing a
    reconcile), from any task: handlers, the sweep, pod arrivals."""

    def emitter(obj: Mapping[str, Any]) -> Emit:
        def emit(type_: str, reason: str, message: str) -> None:
            async def post() -> None:
                try:
                    await kube.post_event(obj, type_, reason, message)
                except Exception as exc:  # an Event is best effort
                    log.warning("could not post event %s on %s: %s", reason, obj["metadata"].get("name"), exc)

            task = asyncio.get_running_loop().create_task(post())
            _posting.add(task)
            task.add_done_callback(_posting.discard)

        return emit

    return emitter


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = SETTINGS
    install_log_redaction()  # also when kopf is started some other way than main.run (idempotent)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Our own Events say what changed (reconcile emits them); kopf posts only
    # its warnings and errors, not a "succeeded" Event per timer firing.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60, 120]

    load_config()
    kube = Kube()
    resolver = Resolver(config)
    memo.deps = Deps(
        settings=config,
        kube=kube,
        resolver=resolver,
        stager=Stager(config, resolver),
        executor=PodExecutor(concurrency=config.pod_concurrency, timeout=config.exec_timeout),
        mirror=MirrorService.from_settings(config),
        restarter=Restarter(kube.rollout_restart),
        emitter=_emitter_for(kube),
    )
    metrics.serve(config.metrics_port, lambda: resolver.git_calls, lambda: memo.deps.stager.fetches)

    async def list_objects() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return await kube.list(INSTALLS), await kube.list(UPDATES)

    memo.deps.mirror.start(list_objects, full_resync_every=config.reconcile_interval)
    memo.sweeper = Sweeper(memo.deps, memo.namespaces)


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    sweeper: Sweeper | None = getattr(memo, "sweeper", None)
    if sweeper is not None:
        await sweeper.close()
    deps: Deps | None = getattr(memo, "deps", None)
    if deps is not None:
        await deps.mirror.close()
