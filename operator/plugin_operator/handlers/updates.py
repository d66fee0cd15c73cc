"""PluginUpdate handlers and the drift triggers (sweep timer, annotations)."""

from __future__ import annotations

import random
from typing import Any

import kopf

from plugin_operator import GROUP, VERSION
from plugin_operator.domain.objects import InstallView, UpdateView
from plugin_operator.handlers.outcome import raise_for
from plugin_operator.handlers.settings import SETTINGS
from plugin_operator.kube.api import INSTALLS, UPDATES
from plugin_operator.reconcile.sweep import resolve_now
from plugin_operator.reconcile.update import reconcile_update, retry_update

RESOLVE_ANNOTATION = f"{GROUP}/resolve"
RETRY_ANNOTATION = f"{GROUP}/retry"
_SWEEP_INTERVAL = SETTINGS.drift_sweep_interval


# The drift timer. Each install's timer looks ten times per interval whether
# a whole sweep is due (a clock check, no API call); the first to find it due
# starts it. See reconcile.sweep.Sweeper.
@kopf.timer(
    GROUP,
    VERSION,
    INSTALLS,
    id="drift-sweep",
    interval=_SWEEP_INTERVAL / 10,
    initial_delay=lambda **_: _SWEEP_INTERVAL * random.uniform(0.1, 0.3),
)
async def drift_sweep(memo: kopf.Memo, **_: Any) -> None:
    memo.sweeper.kick()


@kopf.on.resume(GROUP, VERSION, UPDATES)
@kopf.on.create(GROUP, VERSION, UPDATES)
@kopf.on.update(GROUP, VERSION, UPDATES, field="spec")
async def update_changed(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Approve, dismiss, apply."""
    raise_for(await reconcile_update(memo.deps, str(namespace), name))


# Requests by annotation are level-triggered: a value not yet recorded in
# status is acted on once. (kopf hides annotations under the operator's own
# prefix from its diffs, so these are watched as raw events.)


@kopf.on.event(GROUP, VERSION, UPDATES)
async def retry_requested(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """`kubectl annotate plu NAME plugins.workspace.dev/retry=$(date +%s) --overwrite`."""
    update = UpdateView.parse(body)
    asked = update.meta.annotations.get(RETRY_ANNOTATION)
    if asked and asked != update.status.observed_retry:
        await retry_update(memo.deps, update.meta.namespace, update.meta.name, asked)


@kopf.on.delete(GROUP, VERSION, UPDATES, optional=True)
async def update_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await memo.deps.mirror.update_deleted(dict(body))


@kopf.on.event(GROUP, VERSION, INSTALLS)
async def resolve_requested(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """`kubectl annotate pli NAME plugins.workspace.dev/resolve=$(date +%s) --overwrite`."""
    install = InstallView.parse(body)
    asked = install.meta.annotations.get(RESOLVE_ANNOTATION)
    if asked and asked != install.status.observed_resolve:
        await resolve_now(memo.deps, install.meta.namespace, install.meta.name, asked)
