"""Hostile PluginUpdates (issue "Trust", item 1): one test per input.

Three kinds of input, each asserting what the design requires:

- written by hand into a namespace the operator watches (no admission
  policy there: the operator is the last line): the operator must end each
  in `Rejected` (or the garbage collector removes it first), install nothing
  and leave the installed commit and every pod as they were;
- refused at `kubectl apply` by the CRD (schema and CEL);
- refused by the admission policy (deploy/base/pluginupdate-admission.yaml)
  for a user whom RBAC lets create and patch PluginUpdates.

One operator, git server and namespace serve the whole module."""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from localdev.cluster import KubectlError, LocalCluster
from tests.fixtures.cluster import scratch_namespace
from tests.fixtures.operator import Env, plugin_files, running_env
from tests.integration.test_update_admission import OPERATOR, USER, Admission, install_policy

pytestmark = [pytest.mark.cluster, pytest.mark.git]

API = "plugins.workspace.dev/v1alpha1"
RESOLVE = "plugins.workspace.dev/resolve"
SHA_X = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class World:
    env: Env
    first: str  # what every install here has installed
    evil: str  # a commit on an untracked branch
    ahead: str  # main's head now: upstream, never swept, never proposed
    uids: dict[str, str] = field(default_factory=dict)
    firsts: dict[str, str] = field(default_factory=dict)  # per install: its installed commit
    dismissed: str = ""  # the toSHA of a dismissed update of `dis`
    pending: str = ""  # the name of the pending (unapproved) update of `pend`

    def update(self, name: str, install: str = "tool", to_sha: str | None = None, **spec: Any) -> dict[str, Any]:
        """What the operator would write for `install` (its owner, its spec)."""
        return {
            "apiVersion": API,
            "kind": "PluginUpdate",
            "metadata": {
                "name": name,
                "namespace": self.env.namespace,
                "ownerReferences": [
                    {
                        "apiVersion": API,
                        "kind": "PluginInstall",
                        "name": install,
                        "uid": self.uids[install],
                        "controller": True,
                    }
                ],
            },
            "spec": {
                "pluginInstall": install,
                "workspace": f"ws-{install}",
                "plugin": install,
                "trackedRef": "ref:main",
                "fromSHA": self.first,
                "toSHA": to_sha or self.evil,
                **spec,
            },
        }


def _sweep(env: Env, install: str) -> None:
    before = env.jsonpath("pli", install, "{.status.lastResolvedAt}")
    time.sleep(1.1)
    env.annotate("pli", install, RESOLVE)
    env.wait_for("the resolve", lambda: env.jsonpath("pli", install, "{.status.lastResolvedAt}") not in ("", before))


@pytest.fixture(scope="module")
def world(kube: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("hostile-updates")
    with (
        scratch_namespace(kube, "h") as namespace,
        running_env(kube, namespace, workdir, DRIFT_SWEEP_INTERVAL="10h") as env,  # sweeps only on request
    ):
        yield _build(env)


def _build(env: Env) -> World:
    git = env.git
    firsts = {}
    for name in ("tool", "other", "dis", "pend"):
        firsts[name] = git.create_repo("acme", name, plugin_files(name, "1.0.0"))
        env.workspace(f"ws-{name}", replicas=1)
        env.install(name, f"ws-{name}", f"github://acme/{name}#main", restart="None")
    for name in firsts:
        env.wait_condition("pli", name, "Ready", timeout=90)
    first = firsts["tool"]
    evil = git.commit("acme", "tool", plugin_files("tool", "evil"), branch="evil", parent=first)
    ahead = git.commit("acme", "tool", plugin_files("tool", "2.0.0"))
    world = World(env, first, evil, ahead)
    world.uids = {n: env.jsonpath("pli", n, "{.metadata.uid}") for n in firsts}

    # `dis`: an update proposed, then dismissed.
    world.dismissed = git.commit("acme", "dis", plugin_files("dis", "2.0.0"))
    _sweep(env, "dis")
    dismissed_name = f"dis-{world.dismissed[:12]}"
    env.wait_for("dis Pending", lambda: env.jsonpath("plu", dismissed_name, "{.status.state}") == "Pending")
    env.k("patch", "plu", dismissed_name, "--type=merge", "-p", '{"spec":{"dismissed":true}}')
    env.wait_for("dis Dismissed", lambda: env.jsonpath("plu", dismissed_name, "{.status.state}") == "Dismissed")

    # `pend`: an update proposed and waiting.
    pend_to = git.commit("acme", "pend", plugin_files("pend", "2.0.0"))
    _sweep(env, "pend")
    world.pending = f"pend-{pend_to[:12]}"
    env.wait_for("pend Pending", lambda: env.jsonpath("plu", world.pending, "{.status.state}") == "Pending")
    world.firsts = firsts
    return world


# -- written by hand where the operator watches ----------------------------------------------


def _without(update: dict[str, Any], section: str, key: str) -> dict[str, Any]:
    update[section].pop(key, None)
    return update


def _owner(update: dict[str, Any], **changes: Any) -> dict[str, Any]:
    update["metadata"]["ownerReferences"][0].update(changes)
    return update


def _spec(update: dict[str, Any], **changes: Any) -> dict[str, Any]:
    update["spec"].update(changes)
    return update


Case = Callable[[World], tuple[dict[str, Any], str]]  # -> (object, install whose state must not change)

HAND_WRITTEN: dict[str, Case] = {
    "no-owner-approved-untracked-commit": lambda w: (
        _without(w.update("h-no-owner", approved=True), "metadata", "ownerReferences"),
        "tool",
    ),
    "no-owner-unapproved": lambda w: (_without(w.update("h-no-owner-2"), "metadata", "ownerReferences"), "tool"),
    "no-owner-dismissed": lambda w: (
        _without(w.update("h-no-owner-3", dismissed=True), "metadata", "ownerReferences"),
        "tool",
    ),
    "wrong-uid-approved": lambda w: (_owner(w.update("h-wrong-uid", approved=True), uid=str(uuid.uuid4())), "tool"),
    "owner-not-controller": lambda w: (_owner(w.update("h-not-ctl", approved=True), controller=False), "tool"),
    "owner-names-another-install": lambda w: (
        _owner(w.update("h-other-owner", approved=True), name="other", uid=w.uids["other"]),
        "tool",
    ),
    "right-uid-unproposed-tosha": lambda w: (w.update("h-unproposed", approved=True), "tool"),
    "right-uid-upstream-head-unproposed": lambda w: (
        w.update("h-upstream-head", to_sha=w.ahead, approved=True),
        "tool",
    ),
    "squatting-deterministic-name-approved": lambda w: (
        w.update(f"tool-{w.ahead[:12]}", to_sha=w.ahead, approved=True),
        "tool",
    ),
    "fromsha-mismatch": lambda w: (_spec(w.update("h-from", to_sha=w.ahead, approved=True), fromSHA=w.evil), "tool"),
    "fromsha-missing": lambda w: (
        _without(w.update("h-from-missing", to_sha=w.ahead, approved=True), "spec", "fromSHA"),
        "tool",
    ),
    "workspace-mismatch": lambda w: (_spec(w.update("h-ws", approved=True), workspace="ws-other"), "tool"),
    "plugin-mismatch": lambda w: (_spec(w.update("h-plugin", approved=True), plugin="other"), "tool"),
    "trackedref-mismatch": lambda w: (_spec(w.update("h-track", approved=True), trackedRef="ref:evil"), "tool"),
    "other-installs-name-in-spec": lambda w: (
        _spec(w.update("h-other-spec", approved=True), pluginInstall="other"),
        "other",
    ),
    "other-install-fully-owned": lambda w: (
        w.update("h-other-full", install="other", to_sha=w.evil, approved=True),
        "other",
    ),
    "nonexistent-install": lambda w: (
        _without(_spec(w.update("h-ghost", approved=True), pluginInstall="ghost"), "metadata", "ownerReferences"),
        "tool",
    ),
    "tosha-of-a-dismissed-update": lambda w: (
        _spec(w.update("h-dismissed", install="dis", to_sha=w.dismissed, approved=True), fromSHA=w.firsts["dis"]),
        "dis",
    ),
    "approved-copy-of-a-pending-update": lambda w: (_copy_of_pending(w, "h-pend-copy"), "pend"),
    "tosha-equal-to-installed": lambda w: (w.update("h-noop", to_sha=w.first, approved=True), "tool"),
    "rewrite-field-spoofed": lambda w: (w.update("h-rewrite", approved=True, rewrite="TagMoved"), "tool"),
    "tosha-not-on-the-server": lambda w: (w.update("h-nowhere", to_sha=SHA_X, approved=True), "tool"),
}


def _copy_of_pending(w: World, name: str) -> dict[str, Any]:
    pending = json.loads(w.env.k("get", "plu", w.pending, "-o", "json"))
    return {
        "apiVersion": API,
        "kind": "PluginUpdate",
        "metadata": {
            "name": name,
            "namespace": w.env.namespace,
            "ownerReferences": pending["metadata"]["ownerReferences"],
        },
        "spec": {**pending["spec"], "approved": True},
    }


def _snapshot(env: Env, install: str) -> tuple[str, list[Any]]:
    workspace = f"ws-{install}"
    env.workspaces.setdefault(workspace, env.configs_root / workspace)
    markers = [env.marker(d, install) for d in env.pod_dirs(workspace)]
    return env.jsonpath("pli", install, "{.status.installedSHA}"), markers


@pytest.mark.parametrize("case", HAND_WRITTEN, ids=list(HAND_WRITTEN))
def test_a_hand_written_update_is_rejected_and_installs_nothing(world: World, case: str) -> None:
    env = world.env
    obj, install = HAND_WRITTEN[case](world)
    before = _snapshot(env, install)
    pending_before = env.jsonpath("pli", install, "{.status.pendingUpdate}")
    name = obj["metadata"]["name"]
    env.apply(copy.deepcopy(obj))

    def settled() -> bool:
        got = env.kube.kubectl("get", "plu", name, "-n", env.namespace, "-o", "json", check=False)
        if got.returncode != 0:
            return "NotFound" in got.stderr  # the garbage collector took it (an owner that is not there)
        state = (json.loads(got.stdout).get("status") or {}).get("state")
        assert state not in ("Applying", "Applied", "Dismissed"), f"{name} went {state}"
        return state == "Rejected"

    env.wait_for(f"{name} Rejected", settled)
    time.sleep(1)  # anything started by mistake would show by now
    assert settled()
    assert _snapshot(env, install) == before, "nothing installed"
    assert env.jsonpath("pli", install, "{.status.pendingUpdate}") == pending_before
    got = env.kube.kubectl("get", "plu", name, "-n", env.namespace, "-o", "json", check=False)
    if got.returncode == 0:
        status = json.loads(got.stdout)["status"]
        assert "not proposed by the operator" in status["message"]
        assert status["rejectedBecause"]
    if install == "pend":
        assert env.jsonpath("plu", world.pending, "{.status.state}") == "Pending", "the real one is untouched"


# -- refused at kubectl apply by the CRD --------------------------------------------------------


def _bare(name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "pluginInstall": "tool",
        "workspace": "ws-tool",
        "plugin": "tool",
        "trackedRef": "ref:main",
        "fromSHA": "a" * 40,
        "toSHA": "b" * 40,
        **spec,
    }
    return {"apiVersion": API, "kind": "PluginUpdate", "metadata": {"name": name}, "spec": body}


CRD_REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "tosha-not-hex": (_bare("c-hex", toSHA="z" * 40), "spec.toSHA"),
    "tosha-uppercase": (_bare("c-upper", toSHA="B" * 40), "spec.toSHA"),
    "tosha-option-injection": (_bare("c-opt", toSHA="--upload-pack=touch /tmp/x"), "spec.toSHA"),
    "approved-and-dismissed": (_bare("c-both", approved=True, dismissed=True), "spec.approved"),
    "rewrite-unknown-value": (_bare("c-rewrite", rewrite="Fine"), "spec.rewrite"),
    "plugin-name-traversal": (_bare("c-traversal", plugin="../../etc"), "spec.plugin"),
}


@pytest.mark.parametrize("case", CRD_REFUSED, ids=list(CRD_REFUSED))
def test_the_crd_refuses(world: World, case: str) -> None:
    obj, said = CRD_REFUSED[case]
    done = world.env.kube.kubectl("apply", "-n", world.env.namespace, "-f", "-", input=json.dumps(obj), check=False)
    assert done.returncode != 0 and said in done.stderr, done.stderr or done.stdout


CRD_MUTATIONS: dict[str, tuple[Callable[[World], tuple[str, dict[str, Any]]], str]] = {
    "change-tosha-of-the-pending-update": (lambda w: (w.pending, {"spec": {"toSHA": w.evil}}), "spec.toSHA"),
    "change-fromsha-of-the-pending-update": (lambda w: (w.pending, {"spec": {"fromSHA": w.evil}}), "spec.fromSHA"),
    "add-rewrite-to-the-pending-update": (lambda w: (w.pending, {"spec": {"rewrite": "TagMoved"}}), "spec.rewrite"),
    "retarget-the-pending-update-to-another-install": (
        lambda w: (w.pending, {"spec": {"pluginInstall": "tool"}}),
        "spec.pluginInstall",
    ),
    "undismiss-a-dismissed-update": (
        lambda w: (f"dis-{w.dismissed[:12]}", {"spec": {"dismissed": False}}),
        "spec.dismissed",
    ),
}


@pytest.mark.parametrize("case", CRD_MUTATIONS, ids=list(CRD_MUTATIONS))
def test_the_crd_refuses_changing_a_proposal(world: World, case: str) -> None:
    make, said = CRD_MUTATIONS[case]
    name, patch = make(world)
    before = world.env.get("plu", name)["spec"]
    with pytest.raises(KubectlError) as refused:
        world.env.k("patch", "plu", name, "--type=merge", "-p", json.dumps(patch))
    assert said in refused.value.stderr
    assert world.env.get("plu", name)["spec"] == before


# -- refused by the admission policy ----------------------------------------------------------


@pytest.fixture(scope="module")
def policy(kube: LocalCluster) -> Iterator[Admission]:
    with scratch_namespace(kube, "hv") as namespace:
        for admission in install_policy(kube, namespace):
            # RBAC lets the impostors write too: only the policy stands in their way.
            binding = {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "impostors", "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pluginupdate-writer"},
                "subjects": [
                    {"kind": "ServiceAccount", "name": "plugin-operator", "namespace": "default"},
                    {"kind": "ServiceAccount", "name": "plugin-operator-evil", "namespace": "plugin-operator-system"},
                ],
            }
            kube.kubectl("apply", "-f", "-", input=json.dumps(binding))
            proposed = _bare("proposed")
            done = admission.create(proposed, OPERATOR)
            assert done.returncode == 0, done.stderr
            yield admission


def _create(who: str, obj: dict[str, Any], *groups: str) -> Callable[[Admission], Any]:
    def run(admission: Admission) -> Any:
        extra = [f"--as-group={g}" for g in groups]
        if groups:
            extra.append("--as-group=system:authenticated")
        return admission.run(*extra, "create", "-f", "-", who=who, input=json.dumps(obj))

    return run


def _patch(patch: Any, *extra: str, kind: str = "merge") -> Callable[[Admission], Any]:
    return lambda a: a.run(
        "patch", "pluginupdate", "proposed", f"--type={kind}", "-p", json.dumps(patch), *extra, who=USER
    )


_OWNED = copy.deepcopy(_bare("v-owned", approved=True))
_OWNED["metadata"]["ownerReferences"] = [
    {"apiVersion": API, "kind": "PluginInstall", "name": "tool", "uid": str(uuid.uuid4()), "controller": True}
]

# Refused by the policy alone (nothing else stands in the way).
ADMISSION_REFUSED: dict[str, Callable[[Admission], Any]] = {
    "user-creates-approved": _create(USER, _bare("v-approved", approved=True)),
    "user-creates-with-an-operator-like-owner": _create(USER, _OWNED),
    "user-creates-a-rewrite-free-copy": _create(USER, _bare("v-copy")),
    "user-writes-status-applied": _patch(
        {"status": {"state": "Applied", "appliedSHA": "c" * 40}}, "--subresource=status"
    ),
    "user-writes-status-pending": _patch({"status": {"state": "Pending"}}, "--subresource=status"),
    "same-named-serviceaccount-in-another-namespace": _create(
        "system:serviceaccount:default:plugin-operator", _bare("v-impostor")
    ),
    "serviceaccount-name-with-a-suffix": _create(f"{OPERATOR}-evil", _bare("v-suffix")),
    "user-in-the-serviceaccounts-group": _create(
        USER, _bare("v-group"), "system:serviceaccounts", "system:serviceaccounts:plugin-operator-system"
    ),
}
# Changes of the proposal: the CRD's immutability rules refuse them before
# validating admission runs; the policy refuses them as well (defence in
# depth, e.g. against a CRD without those rules).
ADMISSION_OR_CRD_REFUSED: dict[str, Callable[[Admission], Any]] = {
    "user-changes-tosha": _patch({"spec": {"toSHA": "c" * 40}}),
    "user-changes-fromsha-while-approving": _patch({"spec": {"fromSHA": "c" * 40, "approved": True}}),
    "user-changes-trackedref": _patch({"spec": {"trackedRef": "ref:evil"}}),
    "user-adds-rewrite": _patch({"spec": {"rewrite": "TagMoved"}}),
    "user-json-patches-the-target": _patch(
        [{"op": "replace", "path": "/spec/toSHA", "value": "c" * 40}],
        kind="json",
    ),
}


def _refused(policy: Admission, run: Callable[[Admission], Any], *said: str) -> None:
    before = json.loads(policy.run("get", "pluginupdate", "proposed", "-o", "json").stdout)
    listed = policy.run("get", "pluginupdates", "-o", "name").stdout.split()
    done = run(policy)
    assert done.returncode != 0, f"accepted: {done.stdout}"
    assert any(s in done.stderr for s in said), done.stderr
    after = json.loads(policy.run("get", "pluginupdate", "proposed", "-o", "json").stdout)
    assert after["spec"] == before["spec"] and after.get("status") == before.get("status")
    assert policy.run("get", "pluginupdates", "-o", "name").stdout.split() == listed, "nothing created"


@pytest.mark.parametrize("case", ADMISSION_REFUSED, ids=list(ADMISSION_REFUSED))
def test_the_admission_policy_refuses(policy: Admission, case: str) -> None:
    _refused(policy, ADMISSION_REFUSED[case], "ValidatingAdmissionPolicy")


@pytest.mark.parametrize("case", ADMISSION_OR_CRD_REFUSED, ids=list(ADMISSION_OR_CRD_REFUSED))
def test_the_admission_policy_or_the_crd_refuses(policy: Admission, case: str) -> None:
    _refused(policy, ADMISSION_OR_CRD_REFUSED[case], "ValidatingAdmissionPolicy", "is immutable")
