"""Reconcile outcomes to kopf: a temporary failure is retried after its delay."""

from __future__ import annotations

import kopf

from plugin_operator.reconcile.deps import Outcome


def raise_for(outcome: Outcome) -> None:
    if outcome.retry_after is not None:
        raise kopf.TemporaryError(outcome.message, delay=outcome.retry_after)
