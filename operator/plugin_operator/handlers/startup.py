"""Start-up and clean-up: the settings, and the objects every handler shares
through memo (deps, the sweeper, pod arrivals)."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from plugin_operator import GROUP, metrics
from plugin_operator.delivery.exec import PodExecutor
from plugin_operator.domain.redact import install_log_redaction
from plugin_operator.git.resolver import Resolver
from plugin_operator.handlers.settings import SETTINGS
from plugin_operator.kube.api import INSTALLS, UPDATES, Kube, load_config
from plugin_operator.mirror.service import MirrorService
from plugin_operator.reconcile.deps import Deps
from plugin_operator.reconcile.events import EventPoster
from plugin_operator.reconcile.pod_arrivals import PodArrivals
from plugin_operator.reconcile.restart import Restarter
from plugin_operator.reconcile.sweep import Sweeper
from plugin_operator.staging import Stager

log = logging.getLogger(__name__)


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
        emitter=EventPoster(kube.post_event).emitter,
    )
    metrics.serve(config.metrics_port, lambda: resolver.git_calls, lambda: memo.deps.stager.fetches)

    async def list_objects() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return await kube.list(INSTALLS), await kube.list(UPDATES)

    memo.deps.mirror.report_to(memo.deps.emitter)  # a refused row: a Warning Event on its object
    memo.deps.mirror.start(list_objects, full_resync_every=config.reconcile_interval)
    memo.sweeper = Sweeper(memo.deps, memo.namespaces)
    memo.pod_arrivals = PodArrivals(memo.deps)


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    sweeper: Sweeper | None = getattr(memo, "sweeper", None)
    if sweeper is not None:
        await sweeper.close()
    arrivals: PodArrivals | None = getattr(memo, "pod_arrivals", None)
    if arrivals is not None:
        await arrivals.close()
    deps: Deps | None = getattr(memo, "deps", None)
    if deps is not None:
        await deps.mirror.close()
