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
