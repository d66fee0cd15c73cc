"""PluginInstall handlers: every trigger runs the same level-triggered
reconcile; deletion runs the uninstall behind the operator's finalizer."""

from __future__ import annotations

from typing import Any

import kopf

from plugin_operator import GROUP, VERSION
from plugin_operator.domain.objects import InstallView
from plugin_operator.domain.pods import WORKSPACE_LABEL
from plugin_operator.handlers.outcome import raise_for
from plugin_operator.handlers.settings import SETTINGS
from plugin_operator.kube.api import INSTALLS
from plugin_operator.reconcile.install import reconcile_install
from plugin_operator.reconcile.uninstall import uninstall


@kopf.on.resume(GROUP, VERSION, INSTALLS)
@kopf.on.create(GROUP, VERSION, INSTALLS)
@kopf.on.update(GROUP, VERSION, INSTALLS, field="spec")
async def install_changed(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    raise_for(await reconcile_install(memo.deps, str(namespace), name))


@kopf.timer(GROUP, VERSION, INSTALLS, interval=SETTINGS.reconcile_interval, initial_delay=SETTINGS.reconcile_interval)
async def install_periodic(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    # Level-triggered safety net: drifted pods, pods missed while down.
    await reconcile_install(memo.deps, str(namespace), name)


@kopf.on.delete(GROUP, VERSION, INSTALLS)
async def install_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    raise_for(await uninstall(memo.deps, dict(body)))
    install = InstallView.parse(body)
    memo.pod_arrivals.kick(install.meta.namespace, install.workspace)


# -- pods arriving: reconcile.pod_arrivals.PodArrivals (built at start-up) ---------


@kopf.on.event("", "v1", "pods", labels={WORKSPACE_LABEL: kopf.PRESENT})
async def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.pod_arrivals.pod_event(event["type"], event["object"])
