"""Drift decisions (design §2 rules, §3 track semantics, §6).

Given what is installed, what the tracked ref resolves to upstream and the
PluginUpdates that exist, decide what the sweep does. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from plugin_operator.domain.refs import RefTable, Resolved
from plugin_operator.domain.semver import Version
from plugin_operator.domain.track import Track

TERMINAL = ("Applied", "Dismissed", "Superseded")


def update_name(install: str, to_sha: str) -> str:
    """Deterministic, so a retried creation is a no-op (design §2)."""
    return f"{install[:240]}-{to_sha[:12]}"


def update_state(update: Mapping[str, Any]) -> str:
    """A PluginUpdate without status yet (created, not yet reconciled) is Pending."""
    return str((update.get("status") or {}).get("state") or "Pending")


@dataclass(frozen=True)
class Decision:
    kind: Literal["untracked", "current", "same-content", "propose", "dismissed", "not-newer"]
    reason: str = ""
    message: str = ""
    rewritten: bool = False  # a tag re-pointed upstream: a security event


def _version_at(sha: str, table: RefTable) -> Version | None:
    """The highest semver tag pointing at a commit, if any."""
    best: Version | None = None
    for name, tag_sha in table.tags.items():
        if tag_sha != sha:
            continue
        version = Version.parse(name)
        if version is not None and (best is None or version > best):
            best = version
    return best


def decide(
    track: Track,
    installed_sha: str | None,
    upstream: Resolved | None,
    table: RefTable | None,
    dismissed: Iterable[str],
) -> Decision:
    """What the tracked ref's upstream state means for an install.

    `upstream` is the resolution of the tracked ref (None when untracked).
    Content equality (path-awareness) is decided later, by digest, once the
    candidate is staged: see `same_content`.
    """
    if not track.drifts or upstream is None or installed_sha is None:
        return Decision("untracked", "NotTracked", f"track {track.normalized}: never swept")
    if upstream.sha == installed_sha:
        return Decision("current", "UpToDate", f"{track.normalized} is at the installed commit")
    if track.kind in ("latest", "semver") and table is not None:
        new = Version.parse((upstream.ref_name or "").removeprefix("refs/tags/"))
        have = _version_at(installed_sha, table)
        if new is not None and have is not None and new <= have:
            return Decision(
                "not-newer", "UpToDate", f"{track.normalized}: {new} is not newer than the installed {have}"
            )
    if upstream.sha in set(dismissed):
        return Decision(
            "dismissed",
            "UpdateDismissed",
            f"the update to {upstream.sha[:12]} was dismissed; a newer target will be proposed",
        )
    rewritten = track.kind == "tag"
    reason = "UpstreamRewritten" if rewritten else "DriftDetected"
    message = f"{track.normalized} moved to {upstream.sha[:12]} (installed {installed_sha[:12]})"
    if rewritten:
        message = f"tag {track.value} was re-pointed upstream to {upstream.sha[:12]} (installed {installed_sha[:12]})"
    return Decision("propose", reason, message, rewritten)


def open_updates_to_supersede(updates: Iterable[Mapping[str, Any]], keep: str | None) -> list[Mapping[str, Any]]:
    """Every open (Pending/Failed, not yet approved) update except `keep`: at
    most one Pending per install, whatever crashed in between."""
    doomed = []
    for update in updates:
        spec = update.get("spec") or {}
        if update["metadata"]["name"] == keep or update_state(update) not in ("Pending", "Failed"):
            continue
        if spec.get("approved") or spec.get("dismissed"):
            continue  # a person's decision is being carried out; never overridden
        doomed.append(update)
    return doomed
