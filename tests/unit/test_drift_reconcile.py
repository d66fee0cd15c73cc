"""The sweep and the update reconcile (reconcile.sweep, reconcile.update) over in-memory
fakes of the API, git and staging: the order of writes that makes "only
what the operator proposed applies" hold, squatters, and Automatic with
rewrites. The real thing runs in tests/e2e/test_drift.py."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from plugin_operator.concurrency import KeyedLock
from plugin_operator.domain.refs import RefTable
from plugin_operator.kube.api import INSTALLS, UPDATES
from plugin_operator.reconcile import sweep, update
from plugin_operator.reconcile.deps import Outcome

A, B, C = "a" * 40, "b" * 40, "c" * 40
DIGEST = {A: "1" * 64, B: "2" * 64, C: "3" * 64}
NS = "ns"


@dataclass
class FakeKube:
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (verb, plural, name)

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((plural, name))
        return copy.deepcopy(obj) if obj is not None else None

    async def list(self, plural: str, namespace: str | None = None, label_selector: str = "") -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (p, _), o in self.objects.items() if p == plural]

    async def create(self, plural: str, namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        name = body["metadata"]["name"]
        self.log.append(("create", plural, name))
        if (plural, name) in self.objects:
            return None
        obj = copy.deepcopy(dict(body))
        obj["metadata"].update(uid=f"uid-{name}", generation=1, creationTimestamp="2026-01-01T00:00:00Z")
        self.objects[(plural, name)] = obj
        return copy.deepcopy(obj)

    async def patch_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.log.append(("status", plural, name))
        obj = self.objects[(plural, name)]
        merged = {**(obj.get("status") or {}), **copy.deepcopy(dict(status))}
        obj["status"] = {k: v for k, v in merged.items() if v is not None}


class FakeAncestry:
    def __init__(self) -> None:
        self.answer: bool | None = True
        self.asked: list[tuple[str, str]] = []

    async def contains(self, source: Any, new: str, installed: str) -> bool | None:
        self.asked.append((new, installed))
        return self.answer


class FakeMirror:
    async def update_changed(self, obj: Any, status: Any = None) -> None:
        pass

    async def install_changed(self, obj: Any, status: Any) -> None:
        pass


@dataclass
class World:
    kube: FakeKube
    deps: Any
    events: list[tuple[str, str, str, str]]
    ancestry: FakeAncestry
    fetched: list[str]
    applied: list[str]

    def install(self) -> dict[str, Any]:
        return self.kube.objects[(INSTALLS, "tool")]

    def update(self, name: str) -> dict[str, Any]:
        return self.kube.objects[(UPDATES, name)]

    async def sweep(self, heads: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> None:
        table = RefTable(heads=heads or {}, tags=tags or {}, label="acme/tool")
        await sweep.check_install(self.deps, NS, "tool", table)


def _world(monkeypatch: pytest.MonkeyPatch, *, source: str, track: str | None, policy: str, ref: str) -> World:
    kube = FakeKube()
    spec: dict[str, Any] = {"workspace": "ws1", "source": source, "updatePolicy": policy}
    if track:
        spec["track"] = track
    kube.objects[(INSTALLS, "tool")] = {
        "metadata": {"name": "tool", "namespace": NS, "uid": "uid-tool", "generation": 1},
        "spec": spec,
        "status": {
            "pluginName": "tool",
            "sourceNormalized": source,
            "trackedRef": track or f"ref:{source.rpartition('#')[2]}",
            "installedSHA": A,
            "installedDigest": DIGEST[A],
            "resolvedRef": ref,
        },
    }
    events: list[tuple[str, str, str, str]] = []
    ancestry = FakeAncestry()
    fetched: list[str] = []
    applied: list[str] = []

    async def stage(source: Any, sha: str) -> Any:
        fetched.append(sha)
        return SimpleNamespace(digest=DIGEST[sha])

    @contextlib.asynccontextmanager
    async def hold(namespace: str, name: str) -> AsyncIterator[None]:
        async with locks.hold((namespace, name)):
            yield

    locks: KeyedLock[tuple[str, str]] = KeyedLock()
    deps = SimpleNamespace(
        settings=SimpleNamespace(allow_unpinned=False),
        kube=kube,
        resolver=SimpleNamespace(ancestry=ancestry, forget=lambda s: None, git_calls=0),
        stager=SimpleNamespace(stage=stage),
        mirror=FakeMirror(),
        emitter=lambda obj: lambda t, r, m: events.append((obj["metadata"]["name"], t, r, m)),
        lock=hold,
    )

    async def fake_reconcile_install(
        deps: Any, namespace: str, name: str, *, target_sha: str | None = None, update: str | None = None
    ) -> Outcome:
        assert target_sha is not None
        fetched.append(target_sha)
        applied.append(target_sha)
        kube.objects[(INSTALLS, name)]["status"]["installedSHA"] = target_sha
        kube.objects[(INSTALLS, name)]["status"]["installedDigest"] = DIGEST[target_sha]
        return Outcome(message="installed", kind="installed")

    monkeypatch.setattr(update, "reconcile_install", fake_reconcile_install)
    return World(kube, deps, events, ancestry, fetched, applied)


async def _settle(w: World, name: str) -> None:
    """What kopf's create/update handler does for a PluginUpdate."""
    await update.reconcile_update(w.deps, NS, name)


def _hand_written(w: World, name: str, to_sha: str, *, owner: bool = True, **spec: Any) -> None:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1}
    if owner:
        meta["ownerReferences"] = [
            {
                "apiVersion": "plugins.workspace.dev/v1alpha1",
                "kind": "PluginInstall",
                "name": "tool",
                "uid": "uid-tool",
                "controller": True,
            }
        ]
    w.kube.objects[(UPDATES, name)] = {
        "metadata": meta,
        "spec": {
            "pluginInstall": "tool",
            "workspace": "ws1",
            "plugin": "tool",
            "trackedRef": "ref:main",
            "fromSHA": A,
            "toSHA": to_sha,
            **spec,
        },
    }


async def test_the_record_is_written_before_the_object_and_automatic_applies_a_fast_forward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = _world(monkeypatch, source="github://acme/tool#main", track=None, policy="Automatic", ref="refs/heads/main")
    await w.sweep(heads={"main": B})
    name = f"tool-{B[:12]}"
    order = [(verb, plural) for verb, plural, n in w.kube.log if n in ("tool", name)]
    assert order.index(("status", INSTALLS)) < order.index(("create", UPDATES))
    assert w.install()["status"]["pendingUpdate"] == name and w.install()["status"]["pendingUpdateSHA"] == B
    assert w.update(name)["spec"]["approved"] is True and "rewrite" not in w.update(name)["spec"]
    assert w.ancestry.asked == [(B, A)]
    await _settle(w, name)
    assert w.applied == [B] and w.update(name)["status"]["state"] == "Applied"
    assert "pendingUpdate" not in w.install()["status"]
    assert w.install()["status"]["resolvedRef"] == "refs/heads/main"


@pytest.mark.parametrize("answer", [False, None], ids=["force-pushed", "check-failed"])
async def test_automatic_never_approves_a_rewritten_branch(
    monkeypatch: pytest.MonkeyPatch, answer: bool | None
) -> None:
    w = _world(monkeypatch, source="github://acme/tool#main", track=None, policy="Automatic", ref="refs/heads/main")
    w.ancestry.answer = answer
    await w.sweep(heads={"main": B})
    name = f"tool-{B[:12]}"
    update = w.update(name)
    assert update["spec"]["rewrite"] == "HistoryRewritten" and not update["spec"].get("approved")
    await _settle(w, name)
    assert w.applied == [] and update["status"]["state"] == "Pending"
    rewritten = next(c for c in update["status"]["conditions"] if c["type"] == "UpstreamRewritten")
    assert rewritten["status"] == "True" and rewritten["reason"] == "HistoryRewritten"
    assert any(e[1:3] == ("Warning", "UpstreamRewritten") for e in w.events)


@pytest.mark.parametrize(
    ("source", "track", "ref"),
    [
        ("github://acme/tool#v1.0.0", "tag:v1.0.0", "refs/tags/v1.0.0"),
        ("github://acme/tool#v1.0.0", None, "refs/tags/v1.0.0"),
        ("github://acme/tool#v1.0.0", "tag:latest", "refs/tags/v1.0.0"),
        ("github://acme/tool#v1.0.0", "semver:^1", "refs/tags/v1.0.0"),
    ],
    ids=["tag", "derived-ref", "latest", "semver"],
)
async def test_automatic_never_approves_a_moved_tag(
    monkeypatch: pytest.MonkeyPatch, source: str, track: str | None, ref: str
) -> None:
    w = _world(monkeypatch, source=source, track=track, policy="Automatic", ref=ref)
    await w.sweep(tags={"v1.0.0": B})
    name = f"tool-{B[:12]}"
    assert w.update(name)["spec"]["rewrite"] == "TagMoved" and not w.update(name)["spec"].get("approved")
    await _settle(w, name)
    assert w.applied == []
    up_to_date = next(c for c in w.install()["status"]["conditions"] if c["type"] == "UpToDate")
    assert up_to_date["reason"] == "UpstreamRewritten"


async def test_a_hand_written_update_is_rejected_before_any_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    w = _world(monkeypatch, source="github://acme/tool#main", track=None, policy="Manual", ref="refs/heads/main")
    _hand_written(w, "evil", C, owner=False, approved=True)
    _hand_written(w, "owned", C, approved=True)
    for name in ("evil", "owned"):
        await _settle(w, name)
        status = w.update(name)["status"]
        assert status["state"] == "Rejected" and "not proposed" in status["message"]
        assert any(e[0] == name and e[2] == "NotProposed" for e in w.events)
    assert w.fetched == [] and w.applied == []
    # Approving it again changes nothing, and says why.
    await _settle(w, "owned")
    assert w.update("owned")["status"]["state"] == "Rejected"
    assert "changes nothing" in w.update("owned")["status"]["message"]


async def test_a_squatter_is_rejected_never_adopted_and_blocks_until_deleted(monkeypatch: pytest.MonkeyPatch) -> None:
    w = _world(monkeypatch, source="github://acme/tool#main", track=None, policy="Automatic", ref="refs/heads/main")
    name = f"tool-{B[:12]}"
    _hand_written(w, name, B, approved=True, fromDigest=DIGEST[A], toDigest=DIGEST[B])  # exactly the operator's spec
    squatter_spec = copy.deepcopy(w.update(name)["spec"])
    await w.sweep(heads={"main": B})
    assert w.update(name)["status"]["state"] == "Rejected"
    assert w.update(name)["spec"] == squatter_spec
    status = w.install()["status"]
    assert "pendingUpdate" not in status
    up_to_date = next(c for c in status["conditions"] if c["type"] == "UpToDate")
    assert up_to_date["reason"] == "ProposalBlocked" and "delete it" in up_to_date["message"]
    await _settle(w, name)
    assert w.applied == []
    # deleted: the operator proposes (and, Automatic, applies) its own
    del w.kube.objects[(UPDATES, name)]
    await w.sweep(heads={"main": B})
    assert w.update(name)["metadata"]["uid"] == f"uid-{name}" and w.install()["status"]["pendingUpdate"] == name
    await _settle(w, name)
    assert w.applied == [B]


async def test_a_superseded_update_is_rejected_if_approved_after_a_newer_proposal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = _world(monkeypatch, source="github://acme/tool#main", track=None, policy="Manual", ref="refs/heads/main")
    await w.sweep(heads={"main": B})
    old = f"tool-{B[:12]}"
    await _settle(w, old)
    assert w.update(old)["status"]["state"] == "Pending"
    await w.sweep(heads={"main": C})
    new = f"tool-{C[:12]}"
    assert w.update(old)["status"]["state"] == "Superseded"
    w.update(old)["spec"]["approved"] = True
    await _settle(w, old)
    assert w.update(old)["status"]["state"] == "Superseded" and w.applied == []
    w.update(new)["spec"]["approved"] = True
    await _settle(w, new)
    assert w.applied == [C]
