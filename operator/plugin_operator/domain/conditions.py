"""Conditions in the metav1.Condition shape, and the summary into Ready.

`lastTransitionTime` moves only when a condition's status changes, so a
re-reconcile that finds nothing new writes an identical status.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool | None  # None: Unknown
    reason: str
    message: str = ""

    @property
    def status_text(self) -> str:
        return "Unknown" if self.status is None else ("True" if self.status else "False")


def merge(
    previous: Sequence[Mapping[str, Any]] | None, new: Iterable[Condition], *, generation: int, now: str
) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in previous or []}
    merged = []
    for cond in new:
        old = before.get(cond.type)
        changed = old is None or old.get("status") != cond.status_text
        merged.append(
            {
                "type": cond.type,
                "status": cond.status_text,
                "reason": cond.reason,
                "message": cond.message[:32768],
                "observedGeneration": generation,
                "lastTransitionTime": now if changed or old is None else old.get("lastTransitionTime", now),
            }
        )
    return merged


def parse(raw: Mapping[str, Any]) -> Condition:
    status = {"True": True, "False": False}.get(str(raw.get("status")))
    return Condition(str(raw.get("type")), status, str(raw.get("reason", "")), str(raw.get("message", "")))
