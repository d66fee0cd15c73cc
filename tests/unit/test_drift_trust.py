"""Trust (issue "Trust", items 1 and 2), pure domain decisions:

- only an update this operator proposed for that install may apply
  (domain.drift.verify_proposed / not_created_by_operator);
- `updatePolicy: Automatic` never approves a rewrite: every track kind's
  notion of a rewrite (domain.drift.classify_rewrite / decide);
- the install and the sweep agree on which ref they follow, for every track
  kind (domain.refs.resolve_install_ref / select_followed)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from plugin_operator.domain import drift
from plugin_operator.domain.errors import RefNotFound
from plugin_operator.domain.refs import RefTable, Resolved, resolve_install_ref, select_followed
from plugin_operator.domain.source import parse_source
from plugin_operator.domain.track import parse_track

A, B, C, D = "a" * 40, "b" * 40, "c" * 40, "d" * 40
GROUP = "plugins.workspace.dev"
HEADS, TAGS = "refs/heads/", "refs/tags/"


def table(heads: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> RefTable:
    return RefTable(heads=dict(heads or {}), tags=dict(tags or {}), head=(heads or {}).get("main"), label="acme/x")


def track(text: str | None, source: str = "github://acme/x#main") -> Any:
    return parse_track(text, parse_source(source, allow_unpinned=True))


# -- item 2: what a rewrite is, per track kind ----------------------------------------


@pytest.mark.parametrize(
    ("track_text", "source", "upstream", "installed_ref", "contains", "want"),
    [
        # tag:<t>: any move of the tag is a rewrite
        ("tag:v1.0.0", "github://acme/x#v1.0.0", Resolved(B, TAGS + "v1.0.0"), TAGS + "v1.0.0", None, "TagMoved"),
        ("tag:v1.0.0", "github://acme/x#v1.0.0", Resolved(B, TAGS + "v1.0.0"), None, None, "TagMoved"),
        # derived from the fragment (#v1.0.0, no track): ref:v1.0.0 resolving to a tag
        (None, "github://acme/x#v1.0.0", Resolved(B, TAGS + "v1.0.0"), TAGS + "v1.0.0", None, "TagMoved"),
        ("ref:v1.0.0", "github://acme/x#v1.0.0", Resolved(B, TAGS + "v1.0.0"), TAGS + "v1.0.0", None, "TagMoved"),
        ("v1.0.0", "github://acme/x#v1.0.0", Resolved(B, TAGS + "v1.0.0"), None, None, "TagMoved"),
        # a branch: fast-forward is drift, anything else a rewrite
        (None, "github://acme/x#main", Resolved(B, HEADS + "main"), HEADS + "main", True, None),
        (None, "github://acme/x#main", Resolved(B, HEADS + "main"), HEADS + "main", False, "HistoryRewritten"),
        (None, "github://acme/x#main", Resolved(B, HEADS + "main"), HEADS + "main", None, "HistoryRewritten"),
        ("ref:main", "github://acme/x#v1.0.0", Resolved(B, HEADS + "main"), TAGS + "v1.0.0", False, "HistoryRewritten"),
        # never swept
        ("none", "github://acme/x#main", Resolved(B, HEADS + "main"), HEADS + "main", False, None),
        (f"sha:{A}", f"github://acme/x#{A}", Resolved(B, None), None, False, None),
    ],
    ids=[
        "tag-moved",
        "tag-moved-no-resolved-ref",
        "derived-ref-to-tag-moved",
        "ref-to-tag-moved",
        "bare-name-to-tag-moved",
        "branch-fast-forward",
        "branch-force-pushed",
        "branch-ancestry-check-failed",
        "branch-not-containing-installed-tag",
        "none",
        "sha",
    ],
)
def test_what_a_rewrite_is(
    track_text: str | None,
    source: str,
    upstream: Resolved,
    installed_ref: str | None,
    contains: bool | None,
    want: str | None,
) -> None:
    t = track(track_text, source)
    got = drift.classify_rewrite(t, A, upstream, None, installed_ref=installed_ref, contains=contains)
    assert got == want


def test_latest_and_semver_flag_the_installed_tag_re_pointed() -> None:
    for text in ("tag:latest", "semver:^1"):
        t = track(text, "github://acme/x#v1.0.0")
        # v1.0.0 (installed, A) now points at C; the highest is v1.1.0 (D): a rewrite all the same
        tags = table(tags={"v1.0.0": C, "v1.1.0": D})
        got = drift.classify_rewrite(t, A, Resolved(D, TAGS + "v1.1.0"), tags, installed_ref=TAGS + "v1.0.0")
        assert got == "TagMoved"
        # the highest IS the installed tag, re-pointed
        tags = table(tags={"v1.0.0": C})
        decision = drift.decide(t, A, Resolved(C, TAGS + "v1.0.0"), tags, [], installed_ref=TAGS + "v1.0.0")
        assert decision.kind == "propose" and decision.rewrite == "TagMoved"
        assert decision.reason == "UpstreamRewritten" and "v1.0.0" in decision.message
        # an ordinary new release: drift
        tags = table(tags={"v1.0.0": A, "v1.1.0": D})
        decision = drift.decide(t, A, Resolved(D, TAGS + "v1.1.0"), tags, [], installed_ref=TAGS + "v1.0.0")
        assert decision.kind == "propose" and decision.rewrite is None and decision.reason == "DriftDetected"


def test_a_re_pointed_installed_tag_is_proposed_even_if_not_newer() -> None:
    """tag:latest where the installed v2.0.0 was re-pointed and v1.5.0 is the
    highest left pointing elsewhere: said as a rewrite, never silently kept."""
    t = track("tag:latest", "github://acme/x#v2.0.0")
    tags = table(tags={"v2.0.0": C})
    decision = drift.decide(t, A, Resolved(C, TAGS + "v2.0.0"), tags, [], installed_ref=TAGS + "v2.0.0")
    assert decision.rewrite == "TagMoved"


def test_a_tag_track_installed_from_another_ref_is_a_rewrite_only_when_the_tag_moved() -> None:
    t = track("tag:v1", "github://acme/x#main")
    up = Resolved(B, TAGS + "v1")
    assert drift.classify_rewrite(t, A, up, None, installed_ref=HEADS + "main") is None
    assert drift.classify_rewrite(t, A, up, None, installed_ref=HEADS + "main", last_upstream=B) is None
    assert drift.classify_rewrite(t, A, up, None, installed_ref=HEADS + "main", last_upstream=C) == "TagMoved"


def test_the_ancestry_check_is_asked_only_for_a_moved_branch() -> None:
    main = track(None)
    assert drift.needs_ancestry(main, A, Resolved(B, HEADS + "main"))
    assert not drift.needs_ancestry(main, A, Resolved(A, HEADS + "main"))
    assert not drift.needs_ancestry(track("tag:v1"), A, Resolved(B, TAGS + "v1"))
    assert not drift.needs_ancestry(track(None, "github://acme/x#v1"), A, Resolved(B, TAGS + "v1"))
    assert not drift.needs_ancestry(track("tag:latest"), A, Resolved(B, TAGS + "v2"))


def test_a_rewrite_decision_says_so_and_a_fast_forward_does_not() -> None:
    main = track(None)
    up = Resolved(B, HEADS + "main")
    forced = drift.decide(main, A, up, None, [], installed_ref=HEADS + "main", contains=False)
    assert forced.kind == "propose" and forced.rewrite == "HistoryRewritten" and forced.rewritten
    assert forced.reason == "UpstreamRewritten" and "does not contain" in forced.message
    unknown = drift.decide(main, A, up, None, [], installed_ref=HEADS + "main", contains=None)
    assert unknown.rewrite == "HistoryRewritten" and "could not be shown" in unknown.message
    ff = drift.decide(main, A, up, None, [], installed_ref=HEADS + "main", contains=True)
    assert ff.kind == "propose" and ff.rewrite is None and ff.reason == "DriftDetected"


def test_a_dismissed_rewrite_is_not_proposed_again() -> None:
    t = track("tag:v1.0.0", "github://acme/x#v1.0.0")
    decision = drift.decide(t, A, Resolved(B, TAGS + "v1.0.0"), None, [B], installed_ref=TAGS + "v1.0.0")
    assert decision.kind == "dismissed"


# -- item 2: the install and the sweep agree on the ref, every track kind ---------------


AGREEMENT = [
    # (source, track, heads, tags, install ref, sweep ref (None: never swept))
    ("github://acme/x#main", None, {"main": A}, {}, HEADS + "main", HEADS + "main"),
    ("github://acme/x#main", "none", {"main": A}, {}, HEADS + "main", None),
    ("github://acme/x#main", "ref:main", {"main": A}, {"main": B}, HEADS + "main", HEADS + "main"),
    ("github://acme/x#v1.0.0", None, {}, {"v1.0.0": A}, TAGS + "v1.0.0", TAGS + "v1.0.0"),
    ("github://acme/x#stable", "tag:stable", {"stable": B}, {"stable": A}, TAGS + "stable", TAGS + "stable"),
    ("github://acme/x#v1.0.0", "tag:latest", {"v1.0.0": B}, {"v1.0.0": A}, TAGS + "v1.0.0", TAGS + "v1.0.0"),
    ("github://acme/x#v1.0.0", "semver:^1", {"v1.0.0": B}, {"v1.0.0": A}, TAGS + "v1.0.0", TAGS + "v1.0.0"),
    (f"github://acme/x#{A}", None, {"main": B}, {}, None, None),
    (f"github://acme/x#{A}", f"sha:{A}", {"main": B}, {}, None, None),
]


@pytest.mark.parametrize(
    ("source", "track_text", "heads", "tags", "install_ref", "sweep_ref"),
    AGREEMENT,
    ids=[
        "none-derived-branch",
        "none",
        "ref-branch-shadowing-a-tag",
        "derived-ref-to-a-tag",
        "tag-with-same-named-branch",
        "latest-with-same-named-branch",
        "semver-with-same-named-branch",
        "derived-sha",
        "sha",
    ],
)
def test_install_and_sweep_agree_on_the_ref(
    source: str,
    track_text: str | None,
    heads: dict[str, str],
    tags: dict[str, str],
    install_ref: str | None,
    sweep_ref: str | None,
) -> None:
    src = parse_source(source, allow_unpinned=True)
    t = parse_track(track_text, src)
    refs = table(heads, tags)
    if src.pinned_sha is None:
        installed = resolve_install_ref(src, t, refs)
        assert installed.ref_name == install_ref
        installed_sha = installed.sha
    else:
        installed_sha = src.pinned_sha
    if sweep_ref is None:
        assert not t.drifts
        return
    upstream = select_followed(t, refs, install_ref)
    assert upstream.ref_name == sweep_ref
    assert upstream.sha == installed_sha, "nothing moved: the sweep must see the installed commit"
    decision = drift.decide(t, installed_sha, upstream, refs, [], installed_ref=install_ref)
    assert decision.kind in ("current", "not-newer") and not decision.rewritten


def test_a_branch_created_with_the_name_of_the_installed_tag_does_not_shadow_it() -> None:
    src = parse_source("github://acme/x#v1.0.0", allow_unpinned=True)
    t = parse_track(None, src)
    before = table(tags={"v1.0.0": A})
    installed = resolve_install_ref(src, t, before)
    after = table(heads={"v1.0.0": B}, tags={"v1.0.0": A})
    assert select_followed(t, after, installed.ref_name).sha == A


def test_the_followed_ref_gone_upstream_is_an_error_not_a_switch() -> None:
    t = track("ref:main")
    with pytest.raises(RefNotFound, match="no longer exists"):
        select_followed(t, table(tags={"main": B}), HEADS + "main")


def test_a_track_naming_another_ref_than_the_fragment_follows_the_track() -> None:
    src = parse_source("github://acme/x#v1.0.0", allow_unpinned=True)
    t = parse_track("ref:main", src)
    refs = table({"main": B}, {"v1.0.0": A})
    assert resolve_install_ref(src, t, refs).ref_name == TAGS + "v1.0.0"
    assert select_followed(t, refs, TAGS + "v1.0.0").ref_name == HEADS + "main"


# -- item 1: only what the operator proposed -----------------------------------------------


def _install(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "tool", "namespace": "ns", "uid": "uid-1"},
        "spec": {"workspace": "ws1", "source": "github://acme/tool#main"},
        "status": {
            "pluginName": "tool",
            "trackedRef": "ref:main",
            "installedSHA": A,
            "pendingUpdate": f"tool-{B[:12]}",
            "pendingUpdateSHA": B,
            **status,
        },
    }


def _update(**changes: Any) -> dict[str, Any]:
    update: dict[str, Any] = {
        "metadata": {
            "name": f"tool-{B[:12]}",
            "namespace": "ns",
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/v1alpha1",
                    "kind": "PluginInstall",
                    "name": "tool",
                    "uid": "uid-1",
                    "controller": True,
                }
            ],
        },
        "spec": {
            "pluginInstall": "tool",
            "workspace": "ws1",
            "plugin": "tool",
            "trackedRef": "ref:main",
            "fromSHA": A,
            "toSHA": B,
            "approved": True,
        },
    }
    for path, value in changes.items():
        section, _, key = path.partition("__")
        if value is _DROP:
            update[section].pop(key, None)
        else:
            update[section][key] = value
    return update


_DROP = object()


def test_the_operators_own_proposal_is_accepted() -> None:
    assert drift.verify_proposed(_update(), _install(), GROUP) is None


def test_an_applied_but_unmarked_update_is_still_accepted() -> None:
    """Installed, then interrupted before the update was marked Applied."""
    assert drift.verify_proposed(_update(), _install(installedSHA=B), GROUP) is None


def _owner(**changes: Any) -> list[dict[str, Any]]:
    owner = copy.deepcopy(_update()["metadata"]["ownerReferences"][0])
    owner.update(changes)
    return [owner]


HOSTILE_UPDATES = {
    "no-owner": (_update(metadata__ownerReferences=_DROP), _install(), "ownerReference"),
    "owner-not-controller": (_update(metadata__ownerReferences=_owner(controller=False)), _install(), "owner"),
    "wrong-uid": (_update(metadata__ownerReferences=_owner(uid="uid-old")), _install(), "uid"),
    "owner-other-kind": (_update(metadata__ownerReferences=_owner(kind="Deployment")), _install(), "owner"),
    "owner-other-group": (_update(metadata__ownerReferences=_owner(apiVersion="evil.dev/v1")), _install(), "owner"),
    "owner-other-name": (_update(metadata__ownerReferences=_owner(name="other")), _install(), "owner"),
    "not-pending": (_update(), _install(pendingUpdate=None, pendingUpdateSHA=None), "did not propose"),
    "other-pending": (_update(), _install(pendingUpdate=f"tool-{C[:12]}", pendingUpdateSHA=C), "did not propose"),
    "sha-record-differs": (_update(), _install(pendingUpdateSHA=C), "did not propose"),
    "from-mismatch": (_update(spec__fromSHA=C), _install(), "fromSHA"),
    "from-missing": (_update(spec__fromSHA=_DROP), _install(), "fromSHA"),
    "workspace-mismatch": (_update(spec__workspace="ws2"), _install(), "workspace"),
    "plugin-mismatch": (_update(spec__plugin="other"), _install(), "plugin"),
    "track-mismatch": (_update(spec__trackedRef="ref:evil"), _install(), "trackedRef"),
    "install-mismatch": (_update(spec__pluginInstall="other"), _install(), "pluginInstall"),
    "install-gone": (_update(), None, "does not exist"),
    "wrong-name": (_update(metadata__name="tool-evil"), _install(pendingUpdate="tool-evil"), "name"),
}


@pytest.mark.parametrize("case", HOSTILE_UPDATES, ids=list(HOSTILE_UPDATES))
def test_anything_the_operator_did_not_propose_is_refused(case: str) -> None:
    update, install, said = HOSTILE_UPDATES[case]
    why = drift.verify_proposed(update, install, GROUP)
    assert why is not None and said in why


def test_rejected_is_terminal() -> None:
    assert "Rejected" in drift.TERMINAL
    assert (
        drift.open_updates_to_supersede(
            [{"metadata": {"name": "x"}, "spec": {}, "status": {"state": "Rejected"}}], None
        )
        == []
    )
