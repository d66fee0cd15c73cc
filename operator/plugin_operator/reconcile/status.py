"""The only writers of status: PluginInstall (whole, with its Events and the
mirror) and PluginUpdate (a state, its conditions, the mirror).

Every install path (install, Stalled, sweep, proposal, dismiss, apply) writes
through `write_install_status`; see docs/architecture.md for who writes what.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from plugin_operator.domain import conditions as cond
from plugin_operator.domain import drift
from plugin_operator.domain.install_status import condition_events, whole_status
from plugin_operator.domain.objects import InstallView, UpdateState, UpdateView
from plugin_operator.kube.api import INSTALLS, UPDATES
from plugin_operator.reconcile.deps import Deps, now_text

log = logging.getLogger(__name__)


def install_status(install: InstallView, conditions: list[cond.Condition], **changes: Any) -> dict[str, Any]:
    """The whole status of `install` after this pass (domain.install_status)."""
    return whole_status(install.status, install.meta.generation, conditions, now=now_text(), **changes)


async def write_install_status(deps: Deps, install: InstallView, status: dict[str, Any]) -> None:
    """Write the whole status, post an Event for every change of a problem
    condition (Installed, Stalled), and mirror the row."""
    await deps.kube.patch_status(INSTALLS, install.meta.namespace, install.meta.name, status)
    emit = deps.emitter(install.body)
    for type_, reason, message in condition_events(install.status.conditions, status["conditions"]):
        emit(type_, reason, message)
    await deps.mirror.install_changed(install.body, status)


async def write_install_fields(deps: Deps, namespace: str, name: str, fields: Mapping[str, Any]) -> None:
    """A partial write of fields no condition nor mirror row depends on
    (observedResolve; the pods note of an uninstall)."""
    await deps.kube.patch_status(INSTALLS, namespace, name, fields)


_REWRITE_SAID: dict[str, str] = {
    drift.TAG_MOVED: "a tag the install follows was re-pointed upstream; never approved automatically",
    drift.HISTORY_REWRITTEN: (
        "the branch's new head does not contain the installed commit (history rewritten, e.g. a force-push); "
        "never approved automatically"
    ),
}


async def write_update_status(
    deps: Deps,
    update: UpdateView,
    state: UpdateState,
    message: str,
    *,
    superseded_by: str | None = None,
    extra: Mapping[str, Any] | None = None,
    reason: str | None = None,
) -> UpdateView:
    """Set a PluginUpdate's state (conditions Applied, Ready and, for a
    rewrite, UpstreamRewritten), mirror it, and return it as written."""
    prev = update.status
    spec = update.spec
    why = reason or state.value
    wanted = [
        cond.Condition("Applied", state == UpdateState.Applied, why, message),
        cond.Condition(
            "Ready", state in (UpdateState.Applied, UpdateState.Dismissed, UpdateState.Superseded), why, message
        ),
    ]
    if spec.rewrite:  # recorded at creation (immutable): said on every write
        wanted.append(cond.Condition("UpstreamRewritten", True, spec.rewrite, _REWRITE_SAID.get(spec.rewrite, "")))
    generation = update.meta.generation
    conditions = cond.merge(prev.raw_conditions, wanted, generation=generation, now=now_text())
    status = {
        "state": state.value,
        "message": message,
        "appliedSHA": prev.applied_sha,
        "appliedAt": prev.applied_at,
        "supersededBy": superseded_by if superseded_by is not None else prev.superseded_by,
        "attempts": prev.attempts,
        "observedRetry": prev.observed_retry,
        "fromShort": (spec.from_sha or "")[:12] or None,
        "toShort": spec.to_sha[:12] or None,
        "conditions": conditions,
        "observedGeneration": generation,
        **(extra or {}),
    }
    await deps.kube.patch_status(UPDATES, update.meta.namespace, update.meta.name, status)
    written = update.with_status(status)
    await deps.mirror.update_changed(written.body)  # Rejected reads "dismissed": nothing will be installed
    return written


async def write_update_fields(deps: Deps, update: UpdateView, fields: Mapping[str, Any]) -> None:
    """A partial write (observedRetry, recorded before a retry)."""
    await deps.kube.patch_status(UPDATES, update.meta.namespace, update.meta.name, fields)


# -- backoff of temporary failures ------------------------------------------------

_RETRY_FIRST, _RETRY_CAP = 5.0, 300.0
_failing: dict[tuple[str, str, str], tuple[int, float]] = {}  # (ns, name, reason) -> (attempts, last)


def retry_backoff(namespace: str, name: str, reason: str) -> tuple[float, int]:
    """(delay, attempt) of the next retry of an install failing again with a
    temporary `reason` (StagingFailed, GitUnavailable …): 5 s, 10 s, 20 s …
    capped at 5 min; a failure long after the previous one starts over."""
    key, now = (namespace, name, reason), time.monotonic()
    attempts, last = _failing.get(key, (0, now))
    if now - last > 2 * _RETRY_CAP:
        attempts = 0
    attempts += 1
    _failing[key] = (attempts, now)
    if len(_failing) > 10_000:  # forget the oldest: a bound, not a cache
        for old in sorted(_failing, key=lambda k: _failing[k][1])[:1000]:
            del _failing[old]
    return min(_RETRY_FIRST * 2 ** (attempts - 1), _RETRY_CAP), attempts
