"""Drift decisions (domain.drift): each rule of design §2/§3 pinned down."""

from __future__ import annotations

from typing import Any

from plugin_operator.domain import drift
from plugin_operator.domain.refs import RefTable, Resolved
from plugin_operator.domain.source import parse_source
from plugin_operator.domain.track import parse_track

A, B, C = "a" * 40, "b" * 40, "c" * 40
SOURCE = parse_source("github://acme/tool#main", allow_unpinned=False)


def table(tags: dict[str, str]) -> RefTable:
    lines = [f"{sha}\trefs/tags/{name}" for name, sha in tags.items()]
    return RefTable.parse("\n".join(lines))


def test_a_moved_branch_is_proposed() -> None:
    decision = drift.decide(parse_track("ref:main", SOURCE), A, Resolved(B, "refs/heads/main"), None, [])
    assert decision.kind == "propose" and decision.reason == "DriftDetected" and not decision.rewritten


def test_the_installed_commit_is_current() -> None:
    assert drift.decide(parse_track("main", SOURCE), A, Resolved(A, "refs/heads/main"), None, []).kind == "current"


def test_untracked_and_pinned_never_drift() -> None:
    for track in ("none", f"sha:{A}"):
        assert drift.decide(parse_track(track, SOURCE), A, Resolved(B, None), None, []).kind == "untracked"


def test_a_re_pointed_tag_is_a_rewrite() -> None:
    decision = drift.decide(parse_track("tag:v1.0.0", SOURCE), A, Resolved(B, "refs/tags/v1.0.0"), None, [])
    assert decision.kind == "propose" and decision.reason == "UpstreamRewritten" and decision.rewritten


def test_latest_never_proposes_a_lower_version_than_installed() -> None:
    tags = table({"v2.0.0": A, "v1.5.0": B})
    decision = drift.decide(parse_track("tag:latest", SOURCE), A, Resolved(B, "refs/tags/v1.5.0"), tags, [])
    assert decision.kind == "not-newer"


def test_a_dismissed_target_is_not_proposed_again_but_a_newer_one_is() -> None:
    track = parse_track("main", SOURCE)
    assert drift.decide(track, A, Resolved(B, "refs/heads/main"), None, [B]).kind == "dismissed"
    assert drift.decide(track, A, Resolved(C, "refs/heads/main"), None, [B]).kind == "propose"


def _update(name: str, state: str | None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": spec, **({"status": {"state": state}} if state else {})}


def test_every_open_update_but_the_kept_one_is_superseded() -> None:
    updates = [
        _update("x-new", None),  # created, status not written yet (a crash in between): open
        _update("x-old", "Pending"),
        _update("x-failed", "Failed"),
        _update("x-approved", "Failed", approved=True),  # a person's decision: kept
        _update("x-done", "Applied"),
        _update("x-dismissed", "Dismissed", dismissed=True),
    ]
    doomed = [u["metadata"]["name"] for u in drift.open_updates_to_supersede(updates, keep="x-new")]
    assert doomed == ["x-old", "x-failed"]


def test_update_names_are_deterministic() -> None:
    assert drift.update_name("tool", B) == f"tool-{B[:12]}"
    assert drift.update_state({"metadata": {}}) == "Pending"
