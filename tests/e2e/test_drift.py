"""Drift detection and approval through the real operator (issue 5): each
rule here fails when it breaks, unlike the sweeper this replaces."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.fixtures.operator import Env, plugin_files

pytestmark = [pytest.mark.cluster, pytest.mark.git]
RESOLVE = "plugins.workspace.dev/resolve"


def _updates(env: Env) -> list[dict[str, Any]]:
    return list(json.loads(env.k("get", "pluginupdates", "-o", "json"))["items"])


def _state(env: Env, name: str) -> str:
    return env.jsonpath("plu", name, "{.status.state}")


def _up_to_date(env: Env, install: str) -> dict[str, str]:
    status = env.get("pli", install).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == "UpToDate"), {})


def _sweep(env: Env, install: str) -> None:
    """Request a resolve and wait until the install reports it."""
    before = env.jsonpath("pli", install, "{.status.lastResolvedAt}")
    time.sleep(1.1)  # lastResolvedAt has one-second resolution
    env.annotate("pli", install, RESOLVE)
    env.wait_for("the resolve", lambda: env.jsonpath("pli", install, "{.status.lastResolvedAt}") not in ("", before))


def _installed(env: Env, workspace: str, plugin: str, sha: str) -> bool:
    return all((env.marker(d, plugin) or {}).get("sha") == sha for d in env.pod_dirs(workspace))


def test_full_loop_branch_push_sweep_approve_applied_and_quiet(env: Env) -> None:
    first = env.git.create_repo("acme", "loop", plugin_files("loop", "1.0.0"))
    env.workspace("wsd1", replicas=2)
    env.install(
        "loop",
        "wsd1",
        "github://acme/loop#main",
        restart="None",
    )
    env.k("label", "pli", "loop", "app.kubernetes.io/instance=gitops-app")
    env.k("annotate", "pli", "loop", "argocd.argoproj.io/tracking-id=gitops:plugins/PluginInstall:x/loop")
    env.wait_condition("pli", "loop", "Ready")
    _sweep(env, "loop")
    assert _up_to_date(env, "loop")["status"] == "True"
    assert _updates(env) == []

    second = env.git.commit("acme", "loop", plugin_files("loop", "2.0.0"))
    _sweep(env, "loop")
    (update,) = _updates(env)
    name = update["metadata"]["name"]
    assert name == f"loop-{second[:12]}"
    assert update["spec"]["fromSHA"] == first and update["spec"]["toSHA"] == second
    assert update["metadata"]["ownerReferences"][0]["name"] == "loop"
    assert "app.kubernetes.io/instance" not in (update["metadata"].get("labels") or {})
    assert not any(k.startswith("argocd") for k in update["metadata"].get("annotations") or {})
    env.wait_for("Pending", lambda: _state(env, name) == "Pending")
    condition = _up_to_date(env, "loop")
    assert condition["status"] == "False" and condition["reason"] == "DriftDetected" and name in condition["message"]
    assert env.jsonpath("pli", "loop", "{.status.pendingUpdate}") == name
    table = env.k("get", "pluginupdates")
    for column in ("WORKSPACE", "PLUGIN", "FROM", "TO", "STATE", "AGE"):
        assert column in table
    assert "wsd1" in table and second[:12] in table and "Pending" in table

    env.k("patch", "pluginupdate", name, "--type=merge", "-p", '{"spec":{"approved":true}}')
    env.wait_condition("plu", name, "Applied", timeout=90)
    assert _installed(env, "wsd1", "loop", second)
    status = env.get("plu", name)["status"]
    assert status["state"] == "Applied" and status["appliedSHA"] == second and status["appliedAt"]
    assert env.jsonpath("pli", "loop", "{.status.installedSHA}") == second
    assert env.jsonpath("pli", "loop", "{.status.pendingUpdate}") == ""

    _sweep(env, "loop")
    assert [u["metadata"]["name"] for u in _updates(env)] == [name], "a further sweep proposes nothing"
    assert _up_to_date(env, "loop")["status"] == "True"
    # Applying is idempotent: the applied update stays applied.
    env.annotate("plu", name, "plugins.workspace.dev/retry")
    time.sleep(2)
    assert _state(env, name) == "Applied"


def test_a_newer_push_supersedes_the_pending_update_and_approving_it_changes_nothing(env: Env) -> None:
    env.git.create_repo("acme", "sup", plugin_files("sup", "1.0.0"))
    env.workspace("wsd2", replicas=1)
    env.install("sup", "wsd2", "github://acme/sup#main", restart="None")
    env.wait_condition("pli", "sup", "Ready")
    installed = env.jsonpath("pli", "sup", "{.status.installedSHA}")
    second = env.git.commit("acme", "sup", plugin_files("sup", "2.0.0"))
    _sweep(env, "sup")
    old = f"sup-{second[:12]}"
    env.wait_for("Pending", lambda: _state(env, old) == "Pending")
    third = env.git.commit("acme", "sup", plugin_files("sup", "3.0.0"))
    _sweep(env, "sup")
    new = f"sup-{third[:12]}"
    env.wait_for("the new one Pending", lambda: _state(env, new) == "Pending")
    assert _state(env, old) == "Superseded"
    assert env.jsonpath("plu", old, "{.status.supersededBy}") == new
    assert sum(1 for u in _updates(env) if (u.get("status") or {}).get("state") == "Pending") == 1

    env.k("patch", "pluginupdate", old, "--type=merge", "-p", '{"spec":{"approved":true}}')
    env.wait_for("the refusal", lambda: "changes nothing" in env.jsonpath("plu", old, "{.status.message}"))
    assert _state(env, old) == "Superseded"
    assert env.jsonpath("pli", "sup", "{.status.installedSHA}") == installed


def test_dismissing_is_scoped_to_that_target(env: Env) -> None:
    env.git.create_repo("acme", "dis", plugin_files("dis", "1.0.0"))
    env.workspace("wsd3", replicas=1)
    env.install("dis", "wsd3", "github://acme/dis#main", restart="None")
    env.wait_condition("pli", "dis", "Ready")
    second = env.git.commit("acme", "dis", plugin_files("dis", "2.0.0"))
    _sweep(env, "dis")
    name = f"dis-{second[:12]}"
    env.wait_for("Pending", lambda: _state(env, name) == "Pending")
    env.k("patch", "pluginupdate", name, "--type=merge", "-p", '{"spec":{"dismissed":true}}')
    env.wait_for("Dismissed", lambda: _state(env, name) == "Dismissed")
    _sweep(env, "dis")
    assert len(_updates(env)) == 1, "the dismissed target is not proposed again"
    assert env.jsonpath("pli", "dis", "{.status.pendingUpdate}") == ""

    third = env.git.commit("acme", "dis", plugin_files("dis", "3.0.0"))
    _sweep(env, "dis")
    env.wait_for("a newer target", lambda: _state(env, f"dis-{third[:12]}") == "Pending")
    env.k("patch", "pluginupdate", name, "--type=merge", "-p", '{"spec":{"approved":true}}', check=False)
    time.sleep(2)
    assert _state(env, name) == "Dismissed"


def test_tag_latest_ignores_lower_and_non_semver_tags_and_converges_after_apply(env: Env) -> None:
    v1 = env.git.create_repo("acme", "lat", plugin_files("lat", "1.0.0"))
    env.git.tag("acme", "lat", "v1.0.0", v1, annotated=True)
    env.workspace("wsd4", replicas=1)
    env.install("lat", "wsd4", "github://acme/lat#v1.0.0", track="tag:latest", restart="None")
    env.wait_condition("pli", "lat", "Ready")

    lower = env.git.commit("acme", "lat", plugin_files("lat", "0.9.0"))
    env.git.tag("acme", "lat", "v0.9.0", lower)
    odd = env.git.commit("acme", "lat", plugin_files("lat", "nightly"))
    env.git.tag("acme", "lat", "nightly-build", odd)
    _sweep(env, "lat")
    assert _updates(env) == [], "a lower or non-semver tag must not trigger"

    v2 = env.git.commit("acme", "lat", plugin_files("lat", "2.0.0"))
    env.git.tag("acme", "lat", "v2.0.0", v2, annotated=True)
    _sweep(env, "lat")
    name = f"lat-{v2[:12]}"
    env.wait_for("Pending", lambda: _state(env, name) == "Pending")
    env.k("patch", "pluginupdate", name, "--type=merge", "-p", '{"spec":{"approved":true}}')
    env.wait_condition("plu", name, "Applied", timeout=90)
    _sweep(env, "lat")
    assert len(_updates(env)) == 1, "tag:latest converges after an apply"
    assert _up_to_date(env, "lat")["status"] == "True"


def test_semver_range_picks_the_highest_within(env: Env) -> None:
    v1 = env.git.create_repo("acme", "rng", plugin_files("rng", "1.2.0"))
    env.git.tag("acme", "rng", "v1.2.0", v1)
    env.workspace("wsd5", replicas=1)
    env.install("rng", "wsd5", "github://acme/rng#v1.2.0", track="semver:^1.2", restart="None")
    env.wait_condition("pli", "rng", "Ready")
    v2 = env.git.commit("acme", "rng", plugin_files("rng", "2.0.0"))
    env.git.tag("acme", "rng", "v2.0.0", v2)
    _sweep(env, "rng")
    assert _updates(env) == [], "2.0.0 is outside ^1.2"
    v13 = env.git.commit("acme", "rng", plugin_files("rng", "1.3.0"))
    env.git.tag("acme", "rng", "v1.3.0", v13)
    _sweep(env, "rng")
    env.wait_for("Pending", lambda: _state(env, f"rng-{v13[:12]}") == "Pending")


def test_a_re_pointed_tag_is_flagged_upstream_rewritten(env: Env) -> None:
    v1 = env.git.create_repo("acme", "rew", plugin_files("rew", "1.0.0"))
    env.git.tag("acme", "rew", "v1.0.0", v1)
    env.workspace("wsd6", replicas=1)
    env.install("rew", "wsd6", "github://acme/rew#v1.0.0", track="tag:v1.0.0", restart="None")
    env.wait_condition("pli", "rew", "Ready")
    evil = env.git.commit("acme", "rew", plugin_files("rew", "1.0.0-evil"))
    env.git.move_tag("acme", "rew", "v1.0.0", evil)
    _sweep(env, "rew")
    condition = _up_to_date(env, "rew")
    assert condition["reason"] == "UpstreamRewritten"
    events = json.loads(env.k("get", "events", "--field-selector", "involvedObject.name=rew", "-o", "json"))
    assert any(e["reason"] == "UpstreamRewritten" and e["type"] == "Warning" for e in events["items"])


def test_sha_tracks_never_drift(env: Env) -> None:
    v1 = env.git.create_repo("acme", "pin", plugin_files("pin", "1.0.0"))
    env.workspace("wsd7", replicas=1)
    env.install("pin", "wsd7", f"github://acme/pin#{v1}", track=f"sha:{v1}", restart="None")
    env.wait_condition("pli", "pin", "Ready")
    env.git.commit("acme", "pin", plugin_files("pin", "2.0.0"))
    env.annotate("pli", "pin", RESOLVE)
    time.sleep(3)
    assert _updates(env) == []


def test_a_commit_elsewhere_in_the_repository_is_recorded_without_an_update(env: Env) -> None:
    files = {f"plugins/a/{k}": v for k, v in plugin_files("a").items()}
    files.update({f"plugins/b/{k}": v for k, v in plugin_files("b").items()})
    env.git.create_repo("acme", "mono", files)
    env.workspace("wsd8", replicas=1)
    env.install("a", "wsd8", "github://acme/mono/plugins/a#main")
    env.wait_condition("pli", "a", "Ready")
    env.wait_for("the first rollout", lambda: env.running_pods("wsd8") == 1)
    generation = env.sts_generation("wsd8")
    files.update({f"plugins/b/{k}": v for k, v in plugin_files("b", "2.0.0").items()})
    moved = env.git.commit("acme", "mono", files)
    _sweep(env, "a")
    assert env.jsonpath("pli", "a", "{.status.upstreamSHA}") == moved
    assert _updates(env) == []
    assert _up_to_date(env, "a")["status"] == "True"
    assert env.sts_generation("wsd8") == generation, "no restart"


@pytest.mark.operator_env(DRIFT_SWEEP_INTERVAL="3s")
def test_automatic_policy_applies_by_itself_and_the_timer_sweeps_once_per_repository(env: Env) -> None:
    started = time.monotonic()
    env.git.create_repo("acme", "auto", plugin_files("auto", "1.0.0"))
    for i in range(3):
        env.workspace(f"wsd9-{i}", replicas=1)
        env.install(f"auto-{i}", f"wsd9-{i}", "github://acme/auto#main", restart="None", updatePolicy="Automatic")
    for i in range(3):
        env.wait_condition("pli", f"auto-{i}", "Ready")
    second = env.git.commit("acme", "auto", plugin_files("auto", "2.0.0"))
    env.wait_for(
        "automatic apply everywhere",
        lambda: all(env.jsonpath("pli", f"auto-{i}", "{.status.installedSHA}") == second for i in range(3)),
        timeout=90,
    )
    assert all(u["spec"].get("approved") for u in _updates(env))
    sweeps = [s for s in env.sweeps() if s["installs"] == 3]
    assert sweeps and all(s["repositories"] == 1 and s["git_calls"] == 1 for s in sweeps)
    # three installs' timers each look every 0.3 s; whole sweeps stay ~3 s apart
    assert len(env.sweeps()) <= (time.monotonic() - started) / 2.7 + 1
    metrics = env.operator.metrics()
    assert metrics["plugin_operator_sweeps_total"] >= len(sweeps)
    assert metrics["plugin_operator_git_ls_remote_calls"] >= len(sweeps)
    assert metrics['plugin_operator_installs_total{outcome="installed"}'] >= 6  # 3 first installs, 3 applies


def test_suspend_stops_sweeping(env: Env) -> None:
    env.git.create_repo("acme", "sus", plugin_files("sus", "1.0.0"))
    env.workspace("wsd10", replicas=1)
    env.install("sus", "wsd10", "github://acme/sus#main", restart="None")
    env.wait_condition("pli", "sus", "Ready")
    env.k("patch", "pli", "sus", "--type=merge", "-p", '{"spec":{"suspend":true}}')
    time.sleep(1)
    env.git.commit("acme", "sus", plugin_files("sus", "2.0.0"))
    env.annotate("pli", "sus", RESOLVE)
    time.sleep(3)
    assert _updates(env) == []


def test_a_failed_apply_keeps_the_old_plugin_backs_off_and_retries_on_request(env: Env) -> None:
    first = env.git.create_repo("acme", "flaky", plugin_files("flaky", "1.0.0"))
    env.workspace("wsd11", replicas=1)
    env.install("flaky", "wsd11", "github://acme/flaky#main", restart="None")
    env.wait_condition("pli", "flaky", "Ready")
    second = env.git.commit("acme", "flaky", plugin_files("flaky", "2.0.0"))
    _sweep(env, "flaky")
    name = f"flaky-{second[:12]}"
    env.wait_for("Pending", lambda: _state(env, name) == "Pending")

    # The pod's configs dir turns into a symlink: the pod script refuses it.
    (pod_dir,) = env.pod_dirs("wsd11")
    real = pod_dir.with_name(pod_dir.name + ".real")
    pod_dir.rename(real)
    pod_dir.symlink_to(real)
    env.k("patch", "pluginupdate", name, "--type=merge", "-p", '{"spec":{"approved":true}}')
    env.wait_for("Failed", lambda: _state(env, name) == "Failed")
    assert "symlink" in env.jsonpath("plu", name, "{.status.message}")
    assert env.marker(real, "flaky")["sha"] == first  # type: ignore[index]
    assert env.jsonpath("pli", "flaky", "{.status.installedSHA}") == first

    pod_dir.unlink()
    real.rename(pod_dir)
    env.annotate("plu", name, "plugins.workspace.dev/retry")
    env.wait_condition("plu", name, "Applied", timeout=60)
    assert env.marker(pod_dir, "flaky")["sha"] == second  # type: ignore[index]
    assert int(env.jsonpath("plu", name, "{.status.attempts}")) >= 2


# -- Trust: only what the operator proposed applies; Automatic never approves a rewrite ---


def _hand_written(env: Env, name: str, install: str, to_sha: str, *, owner_uid: str | None = None, **spec: Any) -> None:
    """A PluginUpdate made by hand (what a user with create rights could
    write), optionally owned by the install like the operator's."""
    status = env.get("pli", install)["status"]
    meta: dict[str, Any] = {"name": name, "namespace": env.namespace}
    if owner_uid is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": "plugins.workspace.dev/v1alpha1",
                "kind": "PluginInstall",
                "name": install,
                "uid": owner_uid,
                "controller": True,
            }
        ]
    body = {
        "pluginInstall": install,
        "workspace": env.get("pli", install)["spec"]["workspace"],
        "plugin": status["pluginName"],
        "trackedRef": status["trackedRef"],
        "fromSHA": status["installedSHA"],
        "toSHA": to_sha,
        **spec,
    }
    env.apply({"apiVersion": "plugins.workspace.dev/v1alpha1", "kind": "PluginUpdate", "metadata": meta, "spec": body})


def _events(env: Env, name: str) -> list[dict[str, Any]]:
    listed = json.loads(env.k("get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json"))
    return list(listed["items"])


def _condition(env: Env, kind: str, name: str, type_: str) -> dict[str, Any]:
    status = env.get(kind, name).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def test_a_hand_written_approved_update_is_rejected_and_installs_nothing(env: Env) -> None:
    first = env.git.create_repo("acme", "trust", plugin_files("trust", "1.0.0"))
    evil = env.git.commit("acme", "trust", plugin_files("trust", "evil"), branch="evil", parent=first)
    env.workspace("wst1", replicas=2)
    env.install("trust", "wst1", "github://acme/trust#main", restart="None")
    env.wait_condition("pli", "trust", "Ready")
    uid = env.jsonpath("pli", "trust", "{.metadata.uid}")
    generation = env.sts_generation("wst1")
    fetches_before = env.git.requests

    _hand_written(env, "trust-evil", "trust", evil, approved=True)  # no owner at all
    _hand_written(env, "trust-owned", "trust", evil, owner_uid=uid, approved=True)  # the right uid, unproposed
    for name in ("trust-evil", "trust-owned"):
        env.wait_for(f"{name} Rejected", lambda name=name: _state(env, name) == "Rejected")
        status = env.get("plu", name)["status"]
        assert "not proposed by the operator" in status["message"]
        assert _condition(env, "plu", name, "Applied")["reason"] == "NotProposed"
        assert any(e["reason"] == "NotProposed" and e["type"] == "Warning" for e in _events(env, name))
    assert env.git.requests == fetches_before, "nothing fetched for a rejected update"
    assert env.jsonpath("pli", "trust", "{.status.installedSHA}") == first
    assert _installed(env, "wst1", "trust", first)
    assert env.sts_generation("wst1") == generation
    assert "Rejected" in env.k("get", "plu")

    # Approving a rejected update changes nothing, and says why.
    _hand_written(env, "trust-late", "trust", evil)
    env.wait_for("Rejected", lambda: _state(env, "trust-late") == "Rejected")
    env.k("patch", "pluginupdate", "trust-late", "--type=merge", "-p", '{"spec":{"approved":true}}')
    env.wait_for("the refusal", lambda: "changes nothing" in env.jsonpath("plu", "trust-late", "{.status.message}"))
    assert _state(env, "trust-late") == "Rejected"
    assert env.jsonpath("pli", "trust", "{.status.installedSHA}") == first


def test_a_squatter_on_the_proposal_name_is_rejected_never_adopted(env: Env) -> None:
    env.git.create_repo("acme", "squat", plugin_files("squat", "1.0.0"))
    env.workspace("wst2", replicas=1)
    env.install("squat", "wst2", "github://acme/squat#main", restart="None")
    env.wait_condition("pli", "squat", "Ready")
    first = env.jsonpath("pli", "squat", "{.status.installedSHA}")
    uid = env.jsonpath("pli", "squat", "{.metadata.uid}")
    second = env.git.commit("acme", "squat", plugin_files("squat", "2.0.0"))
    name = f"squat-{second[:12]}"
    # Before the operator proposes it: the right name, owner and spec, approved.
    _hand_written(env, name, "squat", second, owner_uid=uid, approved=True)
    env.wait_for("Rejected", lambda: _state(env, name) == "Rejected")
    _sweep(env, "squat")
    condition = _up_to_date(env, "squat")
    assert condition["status"] == "False" and condition["reason"] == "ProposalBlocked"
    assert name in condition["message"] and "delete it" in condition["message"]
    assert env.jsonpath("pli", "squat", "{.status.pendingUpdate}") == ""
    assert env.get("plu", name)["spec"]["approved"] is True, "the squatter's spec is never patched"
    assert _state(env, name) == "Rejected"
    assert env.jsonpath("pli", "squat", "{.status.installedSHA}") == first

    # Deleting it unblocks: the operator's own proposal takes the name.
    env.k("delete", "pluginupdate", name)
    _sweep(env, "squat")
    env.wait_for("the operator's own Pending", lambda: _state(env, name) == "Pending")
    update = env.get("plu", name)
    assert update["metadata"]["ownerReferences"][0]["uid"] == uid and not update["spec"].get("approved")
    assert env.jsonpath("pli", "squat", "{.status.pendingUpdate}") == name
    env.k("patch", "pluginupdate", name, "--type=merge", "-p", '{"spec":{"approved":true}}')
    env.wait_condition("plu", name, "Applied", timeout=90)
    assert _installed(env, "wst2", "squat", second)


def _rewrite_not_applied(env: Env, install: str, name: str, rewrite: str, installed: str) -> None:
    env.wait_for("Pending", lambda: _state(env, name) == "Pending")
    update = env.get("plu", name)
    assert update["spec"]["rewrite"] == rewrite and not update["spec"].get("approved")
    condition = _condition(env, "plu", name, "UpstreamRewritten")
    assert condition["status"] == "True" and condition["reason"] == rewrite
    assert rewrite in env.k("get", "plu", name)
    assert "REWRITE" in env.k("get", "plu")
    assert _up_to_date(env, install)["reason"] == "UpstreamRewritten"
    assert any(e["reason"] == "UpstreamRewritten" and e["type"] == "Warning" for e in _events(env, install))
    time.sleep(2)
    assert _state(env, name) == "Pending"
    assert env.jsonpath("pli", install, "{.status.installedSHA}") == installed


def test_automatic_never_approves_a_moved_tag(env: Env) -> None:
    v1 = env.git.create_repo("acme", "amt", plugin_files("amt", "1.0.0"))
    env.git.tag("acme", "amt", "v1.0.0", v1, annotated=True)
    env.workspace("wst3", replicas=1)
    env.install("amt", "wst3", "github://acme/amt#v1.0.0", track="tag:v1.0.0", restart="None", updatePolicy="Automatic")
    env.wait_condition("pli", "amt", "Ready")
    evil = env.git.commit("acme", "amt", plugin_files("amt", "1.0.0-evil"))
    env.git.move_tag("acme", "amt", "v1.0.0", evil, annotated=True)
    _sweep(env, "amt")
    _rewrite_not_applied(env, "amt", f"amt-{evil[:12]}", "TagMoved", v1)
    assert _installed(env, "wst3", "amt", v1)


def test_automatic_never_approves_a_moved_tag_tracked_through_the_source_fragment(env: Env) -> None:
    v1 = env.git.create_repo("acme", "adt", plugin_files("adt", "1.0.0"))
    env.git.tag("acme", "adt", "v1.0.0", v1)
    env.workspace("wst4", replicas=1)
    env.install("adt", "wst4", "github://acme/adt#v1.0.0", restart="None", updatePolicy="Automatic")  # ref:v1.0.0
    env.wait_condition("pli", "adt", "Ready")
    assert env.jsonpath("pli", "adt", "{.status.resolvedRef}") == "refs/tags/v1.0.0"
    evil = env.git.commit("acme", "adt", plugin_files("adt", "1.0.0-evil"))
    env.git.move_tag("acme", "adt", "v1.0.0", evil)
    _sweep(env, "adt")
    _rewrite_not_applied(env, "adt", f"adt-{evil[:12]}", "TagMoved", v1)


def test_automatic_never_approves_a_force_pushed_branch(env: Env) -> None:
    first = env.git.create_repo("acme", "afp", plugin_files("afp", "1.0.0"))
    env.workspace("wst5", replicas=1)
    env.install("afp", "wst5", "github://acme/afp#main", restart="None", updatePolicy="Automatic")
    env.wait_condition("pli", "afp", "Ready")
    forced = env.git.force_push("acme", "afp", plugin_files("afp", "1.0.0-rewritten"))
    _sweep(env, "afp")
    _rewrite_not_applied(env, "afp", f"afp-{forced[:12]}", "HistoryRewritten", first)


def test_automatic_applies_a_fast_forward_branch(env: Env) -> None:
    env.git.create_repo("acme", "aff", plugin_files("aff", "1.0.0"))
    env.workspace("wst6", replicas=1)
    env.install("aff", "wst6", "github://acme/aff#main", restart="None", updatePolicy="Automatic")
    env.wait_condition("pli", "aff", "Ready")
    second = env.git.commit("acme", "aff", plugin_files("aff", "2.0.0"))
    _sweep(env, "aff")
    name = f"aff-{second[:12]}"
    env.wait_condition("plu", name, "Applied", timeout=90)
    update = env.get("plu", name)
    assert update["spec"]["approved"] is True and "rewrite" not in update["spec"]
    assert _installed(env, "wst6", "aff", second)
    assert env.jsonpath("pli", "aff", "{.status.installedSHA}") == second


def test_a_tag_track_and_a_same_named_branch_raise_no_false_rewrite(env: Env) -> None:
    tagged = env.git.create_repo("acme", "stb", plugin_files("stb", "1.0.0"))
    env.git.tag("acme", "stb", "stable", tagged, annotated=True)
    branch_head = env.git.commit("acme", "stb", plugin_files("stb", "1.1.0-branch"))
    env.git.branch("acme", "stb", "stable", branch_head)
    env.workspace("wst7", replicas=1)
    env.install("stb", "wst7", "github://acme/stb#stable", track="tag:stable", restart="None", updatePolicy="Automatic")
    env.wait_condition("pli", "stb", "Ready")
    assert env.jsonpath("pli", "stb", "{.status.installedSHA}") == tagged
    assert env.jsonpath("pli", "stb", "{.status.resolvedRef}") == "refs/tags/stable"
    _sweep(env, "stb")
    condition = _up_to_date(env, "stb")
    assert condition["status"] == "True" and condition["reason"] == "UpToDate"
    # The branch moving is not the tag moving.
    env.git.commit("acme", "stb", plugin_files("stb", "1.2.0-branch"), branch="stable")
    _sweep(env, "stb")
    assert _updates(env) == []
    assert _up_to_date(env, "stb")["reason"] == "UpToDate"
    events = _events(env, "stb")
    assert not any(e["reason"] == "UpstreamRewritten" for e in events)
