"""Drift decisions (design §2 rules, §3 track semantics, §6).

Given what is installed, what the tracked ref resolves to upstream and the
PluginUpdates that exist, decide what the sweep does. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from plugin_operator.domain.objects import TERMINAL as TERMINAL  # the states a sweep never reopens
from plugin_operator.domain.objects import UpdateState, section
from plugin_operator.domain.refs import RefTable, Resolved
from plugin_operator.domain.semver import Version
from plugin_operator.domain.track import Track

# spec.rewrite of a PluginUpdate: why the proposal is an upstream rewrite,
# which `updatePolicy: Automatic` never approves.
Rewrite = Literal["TagMoved", "HistoryRewritten"]
TAG_MOVED: Rewrite = "TagMoved"  # a tag the install follows points at another commit now
HISTORY_REWRITTEN: Rewrite = "HistoryRewritten"  # a branch head that does not contain the installed commit
# `contains` not asked yet: a moved branch is then an ordinary drift, and
# `needs_ancestry` tells the caller to ask (the sweep always does).
UNCHECKED: Literal["unchecked"] = "unchecked"
Contains = bool | None | Literal["unchecked"]

_HEADS, _TAGS = "refs/heads/", "refs/tags/"


def update_name(install: str, to_sha: str) -> str:
    """Deterministic, so a retried creation is a no-op (design §2)."""
    return f"{install[:240]}-{to_sha[:12]}"


def update_state(update: Mapping[str, Any]) -> UpdateState:
    """A PluginUpdate without status yet (created, not yet reconciled) is Pending."""
    return UpdateState.parse(section(update, "status").get("state"))


@dataclass(frozen=True)
class Decision:
    kind: Literal["untracked", "current", "same-content", "propose", "dismissed", "not-newer"]
    reason: str = ""
    message: str = ""
    rewrite: Rewrite | None = None  # an upstream rewrite: a security event, never approved automatically

    @property
    def rewritten(self) -> bool:
        return self.rewrite is not None


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


def needs_ancestry(track: Track, installed_sha: str | None, upstream: Resolved | None) -> bool:
    """Whether a proposal needs the ancestry check (is the installed commit
    contained in the new head?) to tell a fast-forward from a force-push:
    a tracked branch that moved."""
    return (
        track.kind == "ref"
        and installed_sha is not None
        and upstream is not None
        and upstream.sha != installed_sha
        and (upstream.ref_name or "").startswith(_HEADS)
    )


def classify_rewrite(
    track: Track,
    installed_sha: str,
    upstream: Resolved,
    table: RefTable | None,
    *,
    installed_ref: str | None = None,
    last_upstream: str | None = None,
    contains: Contains = UNCHECKED,
) -> Rewrite | None:
    """Whether moving from `installed_sha` to `upstream` is an upstream
    rewrite (design §6), for every track kind:

    - `tag:<t>`, or `ref:<t>` (also derived from `#<t>`) resolving to a tag:
      the tag points elsewhere now: TagMoved. (When the install came from
      another ref, e.g. `#main` with `tag:v1`, only a change from the value
      the last sweep saw is a move.)
    - `ref:<b>` resolving to a branch: the new head must contain the installed
      commit (`contains`, from an ancestry check); False or None (the check
      failed) is HistoryRewritten: what cannot be proven a fast-forward is
      treated as a force-push. (UNCHECKED: not asked yet, see needs_ancestry.)
    - `tag:latest`, `semver:<r>`: the tag the install came from
      (`installed_ref`) now points at another commit: TagMoved, whatever the
      highest tag is.
    - `none`, `sha:`: never swept, never a rewrite.
    """
    if upstream.sha == installed_sha or not track.drifts:
        return None
    ref = upstream.ref_name or ""
    if track.kind in ("tag", "ref") and ref.startswith(_TAGS):
        if installed_ref in (None, ref) or (last_upstream is not None and last_upstream != upstream.sha):
            return TAG_MOVED
        return None
    if track.kind == "ref" and ref.startswith(_HEADS):
        return None if contains is True or contains == UNCHECKED else HISTORY_REWRITTEN
    if track.kind in ("latest", "semver") and table is not None and (installed_ref or "").startswith(_TAGS):
        assert installed_ref is not None
        now = table.tags.get(installed_ref[len(_TAGS) :])
        if now is not None and now != installed_sha:
            return TAG_MOVED
    return None


def decide(
    track: Track,
    installed_sha: str | None,
    upstream: Resolved | None,
    table: RefTable | None,
    dismissed: Iterable[str],
    *,
    installed_ref: str | None = None,
    last_upstream: str | None = None,
    contains: Contains = UNCHECKED,
) -> Decision:
    """What the tracked ref's upstream state means for an install.

    `upstream` is the resolution of the tracked ref (None when untracked);
    `installed_ref` the ref the install resolved (status.resolvedRef),
    `last_upstream` what the previous sweep saw (status.upstreamSHA),
    `contains` whether the new head of a tracked branch contains the
    installed commit (None: the check failed, a rewrite; UNCHECKED: not
    asked, see needs_ancestry). Content equality (path-awareness) is
    decided later, by digest, once the candidate is staged.
    """
    if not track.drifts or upstream is None or installed_sha is None:
        return Decision("untracked", "NotTracked", f"track {track.normalized}: never swept")
    if upstream.sha == installed_sha:
        return Decision("current", "UpToDate", f"{track.normalized} is at the installed commit")
    rewrite = classify_rewrite(
        track,
        installed_sha,
        upstream,
        table,
        installed_ref=installed_ref,
        last_upstream=last_upstream,
        contains=contains,
    )
    if rewrite is None and track.kind in ("latest", "semver") and table is not None:
        new = Version.parse((upstream.ref_name or "").removeprefix(_TAGS))
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
    to, have_short = upstream.sha[:12], installed_sha[:12]
    if rewrite is None:
        return Decision("propose", "DriftDetected", f"{track.normalized} moved to {to} (installed {have_short})")
    ref = upstream.ref_name or ""
    if rewrite == HISTORY_REWRITTEN:
        branch = ref.removeprefix(_HEADS)
        why = "does not contain" if contains is False else "could not be shown to contain"
        message = f"branch {branch} was rewritten upstream: its head {to} {why} the installed {have_short}"
    elif ref.startswith(_TAGS) and (installed_ref in (None, ref) or track.kind in ("tag", "ref")):
        message = f"tag {ref.removeprefix(_TAGS)} was re-pointed upstream to {to} (installed {have_short})"
    else:
        moved = (installed_ref or "").removeprefix(_TAGS)
        message = (
            f"tag {moved}, which the install came from, was re-pointed upstream; "
            f"{track.normalized} is now {to} (installed {have_short})"
        )
    return Decision("propose", "UpstreamRewritten", f"{message}; not approved automatically", rewrite)


def open_updates_to_supersede(updates: Iterable[Mapping[str, Any]], keep: str | None) -> list[Mapping[str, Any]]:
    """Every open (Pending/Failed, not yet approved) update except `keep`: at
    most one Pending per install, whatever crashed in between."""
    doomed = []
    for update in updates:
        spec = update.get("spec") or {}
        if update["metadata"]["name"] == keep or update_state(update) not in (UpdateState.Pending, UpdateState.Failed):
            continue
        if spec.get("approved") or spec.get("dismissed"):
            continue  # a person's decision is being carried out; never overridden
        doomed.append(update)
    return doomed


# -- trust: only what this operator proposed is ever applied ----------------------

_IDENTITY = ("pluginInstall", "workspace", "plugin", "trackedRef", "fromSHA", "toSHA")


def _controller(update: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in (update.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            return ref
    return None


def proposal_of(install: Mapping[str, Any]) -> dict[str, Any]:
    """The spec identity the operator writes for a proposal of this install
    (what `verify_proposed` compares against)."""
    status = install.get("status") or {}
    return {
        "pluginInstall": install["metadata"]["name"],
        "workspace": (install.get("spec") or {}).get("workspace"),
        "plugin": status.get("pluginName"),
        "trackedRef": status.get("trackedRef"),
        "fromSHA": status.get("installedSHA"),
        "toSHA": status.get("pendingUpdateSHA"),
    }


def recorded(install: Mapping[str, Any], name: str, to_sha: str) -> bool:
    """Whether the install's status records proposing `to_sha` as `name`."""
    status = install.get("status") or {}
    return status.get("pendingUpdate") == name and status.get("pendingUpdateSHA") in (to_sha, None)


def not_created_by_operator(
    update: Mapping[str, Any], install: Mapping[str, Any], group: str, expected: Mapping[str, Any]
) -> str | None:
    """Why `update` is not an object this operator created for `install` with
    the spec identity `expected` (None: it is). Checks the controller
    ownerReference (kind, group, name and the install's current uid) and
    every identity field of spec."""
    meta = install["metadata"]
    owner = _controller(update)
    if owner is None:
        return "it has no controller ownerReference to its PluginInstall"
    if (
        owner.get("kind") != "PluginInstall"
        or str(owner.get("apiVersion", "")).partition("/")[0] != group
        or owner.get("name") != meta.get("name")
    ):
        return f"its controller ownerReference is not the PluginInstall {meta.get('name')}"
    if owner.get("uid") != meta.get("uid"):
        return f"its ownerReference names another PluginInstall {meta.get('name')} (uid {owner.get('uid')})"
    spec = update.get("spec") or {}
    wrong = [f for f in _IDENTITY if spec.get(f) != expected.get(f)]
    if wrong:
        said = ", ".join(f"spec.{f}={spec.get(f)!r} (expected {expected.get(f)!r})" for f in wrong[:3])
        return f"its spec differs from what the operator proposes: {said}"
    return None


def verify_proposed(update: Mapping[str, Any], install: Mapping[str, Any] | None, group: str) -> str | None:
    """Why `update` may not be applied, dismissed or kept pending (None: it
    may). An update counts only when this operator proposed it for that
    install: the install's own record (status.pendingUpdate is its name,
    status.pendingUpdateSHA its toSHA), a controller ownerReference to the
    install's current uid, and a spec matching what the operator records
    (pluginInstall, workspace, plugin, trackedRef, fromSHA = the installed
    commit, toSHA). Anything else: Rejected, before anything is fetched."""
    name = (update.get("metadata") or {}).get("name")
    spec = update.get("spec") or {}
    if install is None:
        return f"the PluginInstall {spec.get('pluginInstall')!r} does not exist"
    status = install.get("status") or {}
    to_sha = spec.get("toSHA")
    # (No pendingUpdateSHA: a record written before it existed; the name
    # still binds the commit's prefix, and the spec is checked below.)
    if status.get("pendingUpdate") != name or not to_sha or status.get("pendingUpdateSHA") not in (to_sha, None):
        return (
            f"the PluginInstall {install['metadata']['name']} did not propose it "
            f"(its pending update is {status.get('pendingUpdate') or 'none'})"
        )
    if name != update_name(install["metadata"]["name"], str(to_sha)):
        return "its name is not the one the operator gives a proposal of that commit"
    expected = {**proposal_of(install), "toSHA": to_sha}
    if status.get("installedSHA") == to_sha:  # applied, then interrupted before it was marked so
        expected["fromSHA"] = spec.get("fromSHA")
    return not_created_by_operator(update, install, group, expected)
