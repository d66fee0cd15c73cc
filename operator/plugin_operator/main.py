"""Entry point of the operator process: kopf settings, clients, handlers."""

from __future__ import annotations

import asyncio
import logging

import kopf

from plugin_operator import handlers  # noqa: F401 - registers the kopf handlers
from plugin_operator.domain.redact import install_log_redaction
from plugin_operator.handlers.settings import SETTINGS


def _quiet_drift_timer(record: logging.LogRecord) -> bool:
    """The drift timer fires ten times per interval per install and mostly
    finds nothing due; its "succeeded" line would drown the log. A sweep logs
    its own line."""
    return record.getMessage() != "Timer 'drift-sweep' succeeded."


def run(*, namespaces: list[str], liveness: str | None, peering: str | None) -> int:
    settings = SETTINGS
    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(log_format=log_format, verbose=settings.log_debug)
    # Every record, ours or a library's, has credentials masked (design §8).
    install_log_redaction()
    logging.getLogger("kopf.objects").addFilter(_quiet_drift_timer)
    logging.getLogger(__name__).info("starting with %s", settings.redacted())
    memo = kopf.Memo(namespaces=namespaces)
    asyncio.run(
        kopf.operator(
            memo=memo,
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=peering is None,
            peering_name=peering,
            liveness_endpoint=liveness,
        )
    )
    return 0
