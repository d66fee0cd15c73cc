"""Install and uninstall through the real operator process, driven with
kubectl, against the local control plane with kwok pods (issue 4)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.operator import Env, plugin_files

pytestmark = [pytest.mark.cluster, pytest.mark.git]


def _ready(env: Env, name: str) -> bool:
    out = env.jsonpath("pli", name, "{.status.conditions[?(@.type=='Ready')].status}")
    return out == "True"


def _condition(env: Env, name: str, type_: str) -> dict[str, str]:
    status = env.get("pli", name).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def test_github_install_reaches_every_pod_and_records_the_commit(env: Env) -> None:
    sha = env.git.create_repo("acme", "hello", plugin_files("hello"))
    env.git.tag("acme", "hello", "v1.0.0", sha, annotated=True)
    env.workspace("ws1", replicas=2)
    generation = env.sts_generation("ws1")

    env.install("hello", "ws1", "github://acme/hello#v1.0.0")
    env.wait_condition("pli", "hello", "Ready")

    status = env.get("pli", "hello")["status"]
    assert status["installedSHA"] == sha
    assert status["pluginName"] == "hello"
    assert status["trackedRef"] == "ref:v1.0.0"
    # The rollout replaces the pods; each comes back holding the commit.
    env.wait_for(
        "both pods reported at the commit",
        lambda: [p.get("sha") for p in env.get("pli", "hello")["status"]["pods"]] == [sha, sha],
    )
    for pod_dir in env.pod_dirs("ws1"):
        assert (pod_dir / "plugins/hello/rules/style.md").read_text() == "# hello 1.0.0\n"
        assert env.marker(pod_dir, "hello") == {
            "source": "github://acme/hello#v1.0.0",
            "sha": sha,
            "digest": status["installedDigest"],
            "installedAt": env.marker(pod_dir, "hello")["installedAt"],  # type: ignore[index]
        }
    # The workspace was restarted once, the way `kubectl rollout restart` does.
    env.wait_for("the rollout restart", lambda: env.sts_generation("ws1") == generation + 1)
    restarted = env.jsonpath("statefulset", "ws-ws1", "{.spec.template.metadata.annotations}")
    assert "kubectl.kubernetes.io/restartedAt" in restarted
    table = env.k("get", "pli", "hello")
    assert "ws1" in table and sha[:12] in table and "True" in table
    # Restarted pods come back with their volume: no restart loop follows.
    time.sleep(5)
    assert env.sts_generation("ws1") == generation + 1


def test_local_registry_install(env: Env) -> None:
    plugin = env.registry / "notes"
    for rel, content in plugin_files("notes").items():
        (plugin / rel).parent.mkdir(parents=True, exist_ok=True)
        (plugin / rel).write_text(content)
    env.workspace("ws2", replicas=1)
    env.install("notes", "ws2", "local://notes", restart="None")
    env.wait_condition("pli", "notes", "Ready")
    status = env.get("pli", "notes")["status"]
    assert status.get("installedSHA") is None
    (pod_dir,) = env.pod_dirs("ws2")
    assert (pod_dir / "plugins/notes/plugin.yaml").is_file()
    assert env.marker(pod_dir, "notes")["digest"] == status["installedDigest"]  # type: ignore[index]


def test_changing_the_ref_delivers_the_new_commit_and_restarts_once(env: Env) -> None:
    first = env.git.create_repo("acme", "tools", plugin_files("tools", "1.0.0"))
    env.git.tag("acme", "tools", "v1", first)
    second = env.git.commit("acme", "tools", plugin_files("tools", "2.0.0"))
    env.git.tag("acme", "tools", "v2", second)
    env.workspace("ws3", replicas=2)
    env.install("tools", "ws3", "github://acme/tools#v1")
    env.wait_condition("pli", "tools", "Ready")
    env.wait_for("first restart", lambda: env.sts_generation("ws3") == 2)

    env.install("tools", "ws3", "github://acme/tools#v2")
    env.wait_for("the new commit", lambda: env.jsonpath("pli", "tools", "{.status.installedSHA}") == second)
    env.wait_for("second restart", lambda: env.sts_generation("ws3") == 3)
    env.wait_for("restarted pods", lambda: env.running_pods("ws3") == 2)
    for pod_dir in env.pod_dirs("ws3"):
        assert (pod_dir / "plugins/tools/rules/style.md").read_text() == "# tools 2.0.0\n"
    time.sleep(4)
    assert env.sts_generation("ws3") == 3, "exactly one restart per change"


def test_scaled_up_pods_get_the_recorded_commit_without_a_restart(env: Env) -> None:
    sha = env.git.create_repo("acme", "scale", plugin_files("scale"))
    env.workspace("ws4", replicas=1)
    env.install("scale", "ws4", f"github://acme/scale#{sha}", restart="None")
    env.wait_condition("pli", "scale", "Ready")
    generation = env.sts_generation("ws4")

    env.k("scale", "statefulset", "ws-ws4", "--replicas=3")
    env.wait_for("three pods", lambda: env.running_pods("ws4") == 3)
    env.wait_for(
        "every pod holds the plugin",
        lambda: all((env.marker(d, "scale") or {}).get("sha") == sha for d in env.pod_dirs("ws4")),
    )
    assert env.sts_generation("ws4") == generation + 1  # only the scale itself


def test_bad_input_stalls_with_a_message_changes_nothing_and_recovers(env: Env) -> None:
    good = env.git.create_repo("acme", "fixme", plugin_files("fixme"))
    env.git.tag("acme", "fixme", "v1", good)
    env.workspace("ws5", replicas=1)
    (pod_dir,) = env.pod_dirs("ws5")

    cases = {
        "github://acme/nosuchrepo#v1": "RepositoryNotFound",
        "github://acme/fixme#v9": "RefNotFound",
    }
    for source, reason in cases.items():
        env.install("fixme", "ws5", source)
        env.wait_for(f"Stalled {reason}", lambda r=reason: _condition(env, "fixme", "Stalled").get("reason") == r)
        stalled = _condition(env, "fixme", "Stalled")
        assert stalled["status"] == "True" and stalled["message"]
        assert not (pod_dir / "plugins").exists() or not any((pod_dir / "plugins").iterdir())
    events = env.k("get", "events", "--field-selector", "involvedObject.name=fixme", "-o", "json")
    assert any(e["reason"] == "RefNotFound" for e in json.loads(events)["items"])

    env.install("fixme", "ws5", "github://acme/fixme#v1")
    env.wait_condition("pli", "fixme", "Ready")
    assert _condition(env, "fixme", "Stalled")["status"] == "False"
    assert env.marker(pod_dir, "fixme")["sha"] == good  # type: ignore[index]


def test_unsafe_repositories_are_refused_before_any_pod_is_touched(env: Env) -> None:
    from localdev.gitserver import Symlink

    env.git.create_repo("acme", "sneaky", {**plugin_files("sneaky"), "rules/evil.md": Symlink("/etc/passwd")})
    env.git.tag("acme", "sneaky", "v1", env.git.git("acme", "sneaky", "rev-parse", "main").strip())
    env.workspace("ws6", replicas=1)
    env.install("sneaky", "ws6", "github://acme/sneaky#v1")
    env.wait_for("UnsafeTree", lambda: _condition(env, "sneaky", "Stalled").get("reason") == "UnsafeTree")
    (pod_dir,) = env.pod_dirs("ws6")
    assert not (pod_dir / "plugins/sneaky").exists()


def test_external_runtime_pods_are_not_pushed_to(env: Env) -> None:
    sha = env.git.create_repo("acme", "ext", plugin_files("ext"))
    env.workspace("ws7", replicas=1, runtime="external")
    env.install("ext", "ws7", f"github://acme/ext#{sha}")
    env.wait_condition("pli", "ext", "Ready")
    message = _condition(env, "ext", "Installed")["message"]
    assert "external runtime" in message and "pull" in message
    (pod_dir,) = env.pod_dirs("ws7")
    assert not (pod_dir / "plugins").exists()


def test_a_second_install_of_the_same_plugin_is_a_conflict_and_touches_nothing(env: Env) -> None:
    sha = env.git.create_repo("acme", "dup", plugin_files("dup"))
    env.workspace("ws8", replicas=1)
    env.install("dup", "ws8", f"github://acme/dup#{sha}", restart="None")
    env.wait_condition("pli", "dup", "Ready")
    env.install("dup-again", "ws8", f"github://acme/dup#{sha}", restart="None")
    env.wait_for("Conflict", lambda: _condition(env, "dup-again", "Stalled").get("reason") == "Conflict")
    assert "dup" in _condition(env, "dup-again", "Stalled")["message"]
    env.k("delete", "pli", "dup-again", "--timeout=60s")
    (pod_dir,) = env.pod_dirs("ws8")
    assert env.marker(pod_dir, "dup")["sha"] == sha  # type: ignore[index]


def test_uninstall_removes_plugin_skills_and_its_claude_md_block_only(env: Env) -> None:
    """Two installs deleted with one kubectl call: each removes its own plugin,
    skill and CLAUDE.md block (neither rewrite of CLAUDE.md is lost), and the
    workspace restarts once for both."""
    files = {f"plugins/{n}/{k}": v for n in ("gone", "also") for k, v in plugin_files(n).items()}
    sha = env.git.create_repo("acme", "gone", files)
    env.workspace("ws9", replicas=1)
    for name in ("gone", "also"):
        env.install(name, "ws9", f"github://acme/gone/plugins/{name}#{sha}")
    env.wait_condition("pli", "gone", "Ready")
    env.wait_condition("pli", "also", "Ready")
    env.wait_for("restarted pod", lambda: env.running_pods("ws9") == 1)
    (pod_dir,) = env.pod_dirs("ws9")
    for name in ("gone", "also"):
        (pod_dir / f"skills/{name}-skill").mkdir(parents=True)
        (pod_dir / f"skills/{name}-skill/SKILL.md").write_text("wired by the runtime\n")
    (pod_dir / "skills/mine").mkdir(parents=True)
    (pod_dir / "CLAUDE.md").write_text(
        "user line 1\n"
        "<!-- plugin-operator:begin gone -->\nrules of gone\n<!-- plugin-operator:end gone -->\n"
        "user line 2\n"
        "<!-- plugin-operator:begin also -->\nrules of also\n<!-- plugin-operator:end also -->\n"
    )
    generation = env.sts_generation("ws9")
    env.k("delete", "pli", "gone", "also", "--timeout=90s", timeout=100)
    for name in ("gone", "also"):
        assert not (pod_dir / f"plugins/{name}").exists()
        assert not (pod_dir / f"skills/{name}-skill").exists()
    assert (pod_dir / "skills/mine").is_dir()
    assert (pod_dir / "CLAUDE.md").read_text() == "user line 1\nuser line 2\n"
    assert env.sts_generation("ws9") == generation + 1, "one restart for both removals"


def test_a_planted_symlink_in_the_pod_is_not_followed(env: Env, tmp_path: Path) -> None:
    sha = env.git.create_repo("acme", "trap", plugin_files("trap"))
    env.workspace("ws10", replicas=1)
    (pod_dir,) = env.pod_dirs("ws10")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me\n")
    (pod_dir / "plugins").mkdir(parents=True)
    (pod_dir / "plugins/trap").symlink_to(outside)
    env.install("trap", "ws10", f"github://acme/trap#{sha}", restart="None")
    env.wait_condition("pli", "trap", "Ready")
    assert (outside / "precious").read_text() == "keep me\n"
    assert sorted(p.name for p in outside.iterdir()) == ["precious"]
    # plugins/trap is now the operator's own link to its version directory.
    assert os.readlink(pod_dir / "plugins/trap").startswith("..trap@")
    assert (pod_dir / "plugins/trap/plugin.yaml").is_file()


def test_killing_the_operator_mid_delivery_never_shows_a_half_written_plugin(env: Env) -> None:
    # A tree large enough that delivery takes a while: 60 files of 512 KiB.
    big = {f"assets/blob{i:02d}.bin": ("x" * 1023 + "\n") * 512 for i in range(60)}
    sha = env.git.create_repo("acme", "heavy", plugin_files("heavy", extra=big))
    env.workspace("ws11", replicas=3)
    pod_dirs = env.pod_dirs("ws11")
    expected_files = len(plugin_files("heavy", extra=big)) + 1  # plus the marker
    violations: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for d in pod_dirs:
                target = d / "plugins/heavy"
                try:
                    if target.exists():
                        count = sum(1 for p in target.rglob("*") if p.is_file())
                        if count != expected_files and target.exists():
                            violations.append(f"{target}: {count} files")
                except FileNotFoundError:
                    pass  # swapped while walking: renamed away whole
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        env.install("heavy", "ws11", f"github://acme/heavy#{sha}", restart="None")
        env.wait_for(
            "a delivery in progress",
            lambda: any(p.name.startswith(".incoming@heavy@") for d in pod_dirs for p in (d / "plugins").glob(".*")),
            timeout=90,
        )
        env.operator.kill()
        env.operator.start()
        env.wait_condition("pli", "heavy", "Ready", timeout=120)
    finally:
        stop.set()
        watcher.join()
    assert not violations, violations[:5]
    for d in pod_dirs:
        assert env.marker(d, "heavy")["sha"] == sha  # type: ignore[index]
        # Only the current version directory, no leftovers (design §5).
        hidden = [p.name for p in (d / "plugins").iterdir() if p.name.startswith(".")]
        assert hidden == [os.readlink(d / "plugins/heavy")]


def test_two_installs_finishing_together_restart_the_workspace_once(env: Env) -> None:
    files = {f"plugins/one/{k}": v for k, v in plugin_files("one").items()}
    files.update({f"plugins/two/{k}": v for k, v in plugin_files("two").items()})
    sha = env.git.create_repo("acme", "pair", files)
    env.workspace("ws12", replicas=1)
    generation = env.sts_generation("ws12")
    both = [
        {
            "apiVersion": "plugins.workspace.dev/v1alpha1",
            "kind": "PluginInstall",
            "metadata": {"name": name, "namespace": env.namespace},
            "spec": {"workspace": "ws12", "source": f"github://acme/pair/plugins/{name}#{sha}"},
        }
        for name in ("one", "two")
    ]
    env.kube.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": both}))
    env.wait_condition("pli", "one", "Ready")
    env.wait_condition("pli", "two", "Ready")
    env.wait_for("a restart", lambda: env.sts_generation("ws12") > generation)
    time.sleep(4)
    restarts = env.sts_generation("ws12") - generation
    assert restarts == 1, f"one restart for both, not {restarts}\noperator log:\n{env.operator.tail(60)}"


def test_a_workspace_without_pods_does_not_block_deletion(env: Env) -> None:
    sha = env.git.create_repo("acme", "lonely", plugin_files("lonely"))
    env.workspace("ws13", replicas=1)
    env.install("lonely", "ws13", f"github://acme/lonely#{sha}", restart="None")
    env.wait_condition("pli", "lonely", "Ready")
    env.k("delete", "statefulset", "ws-ws13", "--cascade=foreground", "--timeout=60s")
    env.wait_for("no pods", lambda: env.running_pods("ws13") == 0)
    env.k("delete", "pli", "lonely", "--timeout=30s", timeout=40)
    assert env.k("get", "pli", "-o", "name") == ""


def test_a_name_that_is_both_a_branch_and_a_tag_resolves_to_the_branch_and_says_so(env: Env) -> None:
    tagged = env.git.create_repo("acme", "dual", plugin_files("dual", "1.0.0"))
    env.git.tag("acme", "dual", "stable", tagged)
    branch = env.git.commit("acme", "dual", plugin_files("dual", "2.0.0"))
    env.git.branch("acme", "dual", "stable", branch)
    env.workspace("ws14", replicas=1)
    env.install("dual", "ws14", "github://acme/dual#stable", restart="None")
    env.wait_condition("pli", "dual", "Ready")
    assert env.jsonpath("pli", "dual", "{.status.resolvedRef}") == "refs/heads/stable"
    assert env.jsonpath("pli", "dual", "{.status.installedSHA}") == branch

    def said() -> bool:
        events = json.loads(env.k("get", "events", "--field-selector", "involvedObject.name=dual", "-o", "json"))
        return any(e["reason"] == "Resolved" and "both a branch and a tag" in e["message"] for e in events["items"])

    env.wait_for("an Event naming the choice", said, timeout=15)


def test_a_refused_restart_is_said_in_status_and_retried_until_it_goes_through(env: Env) -> None:
    """An admission policy (a real one, CEL in the apiserver) freezes the
    workspace's pod template; the install says so and finishes once it is lifted."""
    sha = env.git.create_repo("acme", "frozen", plugin_files("frozen"))
    env.workspace("ws15", replicas=1)
    generation = env.sts_generation("ws15")
    name = f"freeze-{env.namespace}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["UPDATE"],
                        "resources": ["statefulsets"],
                    }
                ]
            },
            "validations": [{"expression": "object.spec.template == oldObject.spec.template", "message": "frozen"}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.namespace}}},
        },
    }
    env.apply(policy)
    env.apply(binding)
    try:
        probe = ["patch", "statefulset", "ws-ws15", "--dry-run=server", "-p"]
        probe.append('{"spec":{"template":{"metadata":{"annotations":{"probe":"1"}}}}}')
        env.wait_for(
            "the policy in force", lambda: "frozen" in env.kube.kubectl(*probe, "-n", env.namespace, check=False).stderr
        )

        env.install("frozen", "ws15", f"github://acme/frozen#{sha}")
        env.wait_for("RestartFailed", lambda: _condition(env, "frozen", "Installed").get("reason") == "RestartFailed")
        assert "restart failed" in _condition(env, "frozen", "Installed")["message"]
        assert env.jsonpath("pli", "frozen", "{.status.installedSHA}") == ""  # not recorded before the restart
        assert env.sts_generation("ws15") == generation
    finally:
        env.kube.kubectl("delete", "validatingadmissionpolicybinding", name, "--ignore-not-found")
        env.kube.kubectl("delete", "validatingadmissionpolicy", name, "--ignore-not-found")

    env.wait_condition("pli", "frozen", "Ready", timeout=90)
    assert env.jsonpath("pli", "frozen", "{.status.installedSHA}") == sha
    env.wait_for("one restart", lambda: env.sts_generation("ws15") == generation + 1)
