"""Entry point of the operator process: kopf settings, clients, handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import urllib.parse
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import kopf

from plugin_operator import handlers  # noqa: F401 - registers the kopf handlers
from plugin_operator.domain.redact import install_log_redaction
from plugin_operator.handlers.settings import SETTINGS
from plugin_operator.kube.api import load_config
from plugin_operator.kube.lease import LeaseConfig, LeaseElector

log = logging.getLogger(__name__)


def _quiet_drift_timer(record: logging.LogRecord) -> bool:
    """The drift timer fires ten times per interval per install and mostly
    finds nothing due; its "succeeded" line would drown the log. A sweep logs
    its own line."""
    return record.getMessage() != "Timer 'drift-sweep' succeeded."


def run(*, namespaces: list[str], liveness: str | None, peering: str | None, lease: LeaseConfig | None = None) -> int:
    settings = SETTINGS
    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(log_format=log_format, verbose=settings.log_debug)
    # Every record, ours or a library's, has credentials masked (design §8).
    install_log_redaction()
    logging.getLogger("kopf.objects").addFilter(_quiet_drift_timer)
    logging.getLogger(__name__).info("starting with %s", settings.redacted())
    memo = kopf.Memo(namespaces=namespaces)
    operate = kopf.operator(
        memo=memo,
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=peering is None,
        peering_name=peering,
        liveness_endpoint=liveness,
    )
    if lease is None:
        asyncio.run(operate)
    else:
        asyncio.run(_lead(lease, liveness, operate))
    return 0


async def _lead(lease: LeaseConfig, liveness: str | None, operate: Coroutine[Any, Any, None]) -> None:
    """Leader election (design §9): kopf starts only once this process holds
    the Lease; losing it (or failing to renew it in time) ends the process
    at once, so it never acts beside another leader."""
    load_config()
    elector = LeaseElector(lease)
    async with _alive_while_waiting(liveness):
        await elector.acquire()
    kopf_task = asyncio.ensure_future(operate)
    keep_task = asyncio.ensure_future(elector.keep())
    done, _ = await asyncio.wait({kopf_task, keep_task}, return_when=asyncio.FIRST_COMPLETED)
    if keep_task in done:
        log.critical("lost the Lease %s/%s: exiting without finishing any work", lease.namespace, lease.name)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(1)  # no handler may run one more step as a second leader
    keep_task.cancel()
    await asyncio.to_thread(elector.release)
    kopf_task.result()


@contextlib.asynccontextmanager
async def _alive_while_waiting(liveness: str | None) -> AsyncIterator[None]:
    """A standby replica answers the liveness probe (kopf serves it once the
    process leads)."""
    if not liveness:
        yield
        return
    from aiohttp import web

    url = urllib.parse.urlsplit(liveness)

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"standby": True})

    app = web.Application()
    app.router.add_get(url.path or "/", ok)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    # The host is the --liveness URL's own (0.0.0.0 in a pod, as kopf binds it).
    site = web.TCPSite(runner, url.hostname or "0.0.0.0", url.port or 80, reuse_address=True)  # noqa: S104
    await site.start()
    try:
        yield
    finally:
        await runner.cleanup()
