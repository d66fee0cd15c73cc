"""A PluginInstall's status, computed (design §2, §5): the whole status
from the previous one and the conditions of this pass, the Ready summary,
the per-pod entries, and which condition changes deserve an Event.

Pure: the previous status comes parsed (domain.objects.InstallStatus), the
time is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from plugin_operator.domain import conditions as cond
from plugin_operator.domain.marker import Marker
from plugin_operator.domain.objects import INSTALL_STATUS_KEYS, InstallStatus
from plugin_operator.domain.pods import PodPlan

# Conditions whose every change is said in an Event.
PROBLEM_CONDITIONS = ("Installed", "Stalled")


def whole_status(
    prev: InstallStatus,
    generation: int,
    conditions: list[cond.Condition],
    *,
    now: str,
    **changes: Any,
) -> dict[str, Any]:
    """The full status: every known field (None clears it), changes applied,
    conditions of other types carried over, Ready summarised."""
    status: dict[str, Any] = {key: prev.carried.get(key) for key in INSTALL_STATUS_KEYS}
    status.update(changes)
    sha = status.get("installedSHA")
    status["installedShortSHA"] = sha[:12] if sha else None
    keep = {c.type for c in conditions}
    carried = [c for c in prev.conditions if c.type not in keep and c.type != "Ready"]
    merged = [*conditions, *carried]
    merged.append(ready(merged))
    status["conditions"] = cond.merge(prev.raw_conditions, merged, generation=generation, now=now)
    status["observedGeneration"] = generation
    return status


def ready(conditions: Iterable[cond.Condition]) -> cond.Condition:
    """The Ready summary: Stalled=True wins, else Installed says it."""
    by_type = {c.type: c for c in conditions if c.type != "Ready"}
    stalled = by_type.get("Stalled")
    if stalled and stalled.status:
        return cond.Condition("Ready", False, stalled.reason, stalled.message)
    installed = by_type.get("Installed")
    if installed is None or not installed.status:
        reason = installed.reason if installed else "Progressing"
        return cond.Condition("Ready", False, reason, installed.message if installed else "")
    return cond.Condition("Ready", True, installed.reason, installed.message)


def condition_events(
    before: Iterable[cond.Condition], written: Iterable[Mapping[str, Any]]
) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events a status write posts: one for
    every change of a problem condition (Installed, Stalled); Stalled going
    or staying False is said only when it was True before."""
    old_by_type = {c.type: c for c in before}
    events = []
    for raw in written:
        new, old = cond.parse(raw), old_by_type.get(str(raw.get("type")))
        if new.type not in PROBLEM_CONDITIONS or new == old:
            continue
        problem = (new.type == "Stalled") == bool(new.status)
        if new.type == "Stalled" and not new.status and (old is None or not old.status):
            continue
        events.append(("Warning" if problem else "Normal", new.reason, new.message))
    return events


@dataclass(frozen=True)
class PodResult:
    """What one pass did to one target pod."""

    plan: PodPlan
    marker: Marker | None = None  # what the pod holds, as written or verified
    delivered: bool = False
    error: str | None = None


EXTERNAL_WAITING = "external runtime: pulls the plugin itself"


def pod_entries(results: list[PodResult], skipped: list[PodPlan], prev: InstallStatus, at: str) -> list[dict[str, Any]]:
    """One entry per workspace pod: what it holds (as far as the operator
    wrote or verified it), or why it was not written."""
    before = {p.name: p for p in prev.pods}
    results = results + [
        PodResult(p, error=EXTERNAL_WAITING if p.external else (p.problem or "not running yet")) for p in skipped
    ]
    entries = []
    for r in sorted(results, key=lambda r: r.plan.name):
        old = before.get(r.plan.name)
        same = r.marker is not None and old is not None and (old.sha, old.digest) == (r.marker.sha, r.marker.digest)
        entries.append(
            {
                "name": r.plan.name,
                "sha": r.marker.sha if r.marker else None,
                "digest": r.marker.digest if r.marker else None,
                "time": ((old.time if old else None) if same and not r.delivered else at) if r.marker else None,
                "message": r.error,
            }
        )
    return entries
