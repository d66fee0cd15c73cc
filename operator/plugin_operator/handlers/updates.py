"""PluginUpdate handlers and the drift triggers (sweep timer, annotations)."""

from __future__ import annotations

from typing import Any

import kopf

from plugin_operator import GROUP, VERSION
from plugin_operator.kube.api import INSTALLS, UPDATES
from plugin_operator.reconcile import updates
from plugin_operator.reconcile.install import Outcome

RESOLVE_ANNOTATION = f"{GROUP}/resolve"
RETRY_ANNOTATION = f"{GROUP}/retry"


def _raise_for(outcome: Outcome) -> None:
    if outcome.retry_after is not None:
        raise kopf.TemporaryError(outcome.message, delay=outcome.retry_after)


@kopf.on.resume(GROUP, VERSION, UPDATES)
@kopf.on.create(GROUP, VERSION, UPDATES)
@kopf.on.update(GROUP, VERSION, UPDATES, field="spec")
@kopf.on.field(GROUP, VERSION, UPDATES, field=["metadata", "annotations", RETRY_ANNOTATION])
async def update_changed(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """Approve, dismiss, apply (and re-apply on the retry annotation)."""
    _raise_for(await updates.reconcile_update(memo.deps, namespace, name))


@kopf.on.delete(GROUP, VERSION, UPDATES, optional=True)
async def update_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await memo.deps.mirror.update_deleted(dict(body))


@kopf.on.field(GROUP, VERSION, INSTALLS, field=["metadata", "annotations", RESOLVE_ANNOTATION])
async def resolve_requested(name: str, namespace: str, new: Any, memo: kopf.Memo, **_: Any) -> None:
    """`kubectl annotate pli NAME plugins.workspace.dev/resolve=$(date +%s) --overwrite`."""
    if new:
        await updates.resolve_now(memo.deps, namespace, name)
