"""Faults on the install, apply and uninstall paths (issue: Faults, items 2,
6, 7): the operator SIGKILLed at named points (the test-only crash points of
plugin_operator.testhooks) and at a random moment mid-transfer, a pod
deleted or its volume wiped mid-delivery, a configs dir full (a tiny tmpfs)
or read-only, a symlink planted during a swap. Every test checks the
invariants of tests/faults/conftest.py through `invariants`."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import Invariants
from tests.faults.helpers import big_tree, check_all, updates, wait_incoming, watching
from tests.fixtures.operator import Env, plugin_files

pytestmark = [pytest.mark.cluster, pytest.mark.git]
CRASH = "PLUGIN_OPERATOR_TEST_CRASH_AT"
RESOLVE = "plugins.workspace.dev/resolve"


def arm(env: Env, point: str) -> None:
    """Restart the operator with a crash point armed."""
    env.operator.stop()
    env.operator.extra_env[CRASH] = point
    env.operator.start()


def crashed_then_restarted(env: Env, invariants: Invariants, point: str, timeout: float = 90) -> None:
    code = env.operator.wait_exit(timeout)
    invariants.check(f"the operator died at {point}", code == -9, f"exit {code}\n{env.operator.tail(20)}")
    env.operator.extra_env.pop(CRASH, None)
    env.operator.start()


def files_of(tree: dict[str, str]) -> int:
    return len(tree) + 1  # plus the marker


def _ready_at(env: Env, install: str, sha: str) -> bool:
    status = env.get("pli", install).get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
    return status.get("installedSHA") == sha and ready.get("status") == "True" and not status.get("targetSHA")


def wait_installed(env: Env, install: str, sha: str, timeout: float = 90) -> None:
    env.wait_for(f"{install} at {sha[:12]}", lambda: _ready_at(env, install, sha), timeout=timeout)


# -- SIGKILL at named points of the install path ------------------------------------


def test_crash_after_the_intent_is_recorded_on_a_first_install(env: Env, invariants: Invariants) -> None:
    tree = plugin_files("intent")
    sha = env.git.create_repo("acme", "intent", tree)
    env.workspace("wf1", replicas=2)
    arm(env, "install-after-intent")
    with watching(env, "wf1", "intent", [sha], {sha: files_of(tree)}) as watch:
        env.install("intent", "wf1", f"github://acme/intent#{sha}", restart="None")
        crashed_then_restarted(env, invariants, "install-after-intent")
        wait_installed(env, "intent", sha)
    check_all(env, invariants, watch, "intent", sha=sha)


def test_crash_after_the_first_pod_took_a_new_commit_goes_on_forward(env: Env, invariants: Invariants) -> None:
    v1, v2 = plugin_files("fwd", "1.0.0"), plugin_files("fwd", "2.0.0", {"rules/new.md": "new\n"})
    a = env.git.create_repo("acme", "fwd", v1)
    b = env.git.commit("acme", "fwd", v2)
    env.workspace("wf2", replicas=3)
    env.install("fwd", "wf2", f"github://acme/fwd#{a}", restart="None")
    wait_installed(env, "fwd", a)
    arm(env, "install-after-first-pod")
    with watching(env, "wf2", "fwd", [a, b], {a: files_of(v1), b: files_of(v2)}) as watch:
        env.install("fwd", "wf2", f"github://acme/fwd#{b}", restart="None")
        crashed_then_restarted(env, invariants, "install-after-first-pod")
        wait_installed(env, "fwd", b)
    check_all(env, invariants, watch, "fwd", sha=b)


def test_crash_after_the_swap_before_status_and_restart_restarts_once(env: Env, invariants: Invariants) -> None:
    v1, v2 = plugin_files("swap", "1.0.0"), plugin_files("swap", "2.0.0")
    a = env.git.create_repo("acme", "swap", v1)
    b = env.git.commit("acme", "swap", v2)
    env.workspace("wf3", replicas=2)
    env.install("swap", "wf3", f"github://acme/swap#{a}", restart="None")
    wait_installed(env, "swap", a)
    generation = env.sts_generation("wf3")
    arm(env, "install-after-swap")
    with watching(env, "wf3", "swap", [a, b], {a: files_of(v1), b: files_of(v2)}) as watch:
        env.install("swap", "wf3", f"github://acme/swap#{b}", restart="Rollout")
        crashed_then_restarted(env, invariants, "install-after-swap")
        wait_installed(env, "swap", b)
    check_all(env, invariants, watch, "swap", sha=b)
    invariants.check(
        "the interrupted restart happens, once",
        env.sts_generation("wf3") == generation + 1,
        str(env.sts_generation("wf3")),
    )


# -- SIGKILL while applying an approved update ----------------------------------------


def _propose(env: Env, install: str, repo: str, files: dict[str, str]) -> tuple[str, str]:
    """Push a new commit, request a resolve, return (update name, new sha)."""
    sha = env.git.commit("acme", repo, files)
    env.annotate("pli", install, RESOLVE)
    env.wait_for(
        "a Pending PluginUpdate",
        lambda: any(
            u["spec"]["toSHA"] == sha and (u.get("status") or {}).get("state") == "Pending" for u in updates(env)
        ),
    )
    (name,) = [u["metadata"]["name"] for u in updates(env) if u["spec"]["toSHA"] == sha]
    return name, sha


@pytest.mark.parametrize("point", ["apply-after-intent", "apply-after-first-pod", "apply-after-swap"])
def test_crash_while_applying_an_approved_update_never_rolls_a_pod_back(
    env: Env, invariants: Invariants, point: str
) -> None:
    repo = f"ap{point.split('-')[-1]}"
    v1, v2 = plugin_files(repo, "1.0.0"), plugin_files(repo, "2.0.0", {"hooks/h.sh": "echo\n"})
    a = env.git.create_repo("acme", repo, v1)
    env.workspace(repo, replicas=3)
    env.install(repo, repo, f"github://acme/{repo}#main", restart="None")
    wait_installed(env, repo, a)
    name, b = _propose(env, repo, repo, v2)
    arm(env, point)
    with watching(env, repo, repo, [a, b], {a: files_of(v1), b: files_of(v2)}) as watch:
        env.k("patch", "pluginupdate", name, "--type=merge", "-p", '{"spec":{"approved":true}}')
        crashed_then_restarted(env, invariants, point)
        env.wait_condition("plu", name, "Applied", timeout=90)
        wait_installed(env, repo, b)
    check_all(env, invariants, watch, repo, sha=b)
    status = env.get("pli", repo)["status"]
    invariants.check("no update left pending", not status.get("pendingUpdate"), str(status.get("pendingUpdate")))


def test_crash_mid_uninstall_finishes_the_removal(env: Env, invariants: Invariants) -> None:
    tree = plugin_files("gone")
    sha = env.git.create_repo("acme", "gone", tree)
    env.workspace("wf5", replicas=2)
    env.install("gone", "wf5", f"github://acme/gone#{sha}", restart="None")
    wait_installed(env, "gone", sha)
    arm(env, "uninstall-after-first-pod")
    with watching(env, "wf5", "gone", [sha], {sha: files_of(tree)}) as watch:
        env.k("delete", "pli", "gone", "--wait=false")
        crashed_then_restarted(env, invariants, "uninstall-after-first-pod")
        env.wait_for("the install gone", lambda: "gone" not in env.k("get", "pli", "-o", "name"), timeout=90)
    check_all(env, invariants, watch, "gone", sha=None)
    left = [str(d) for d in watch.dirs if (d / "plugins/gone").exists() or (d / "skills/gone-skill").exists()]
    invariants.check("the plugin is gone from every pod", not left, str(left))
    leftovers = [p.name for d in watch.dirs for p in (d / "plugins").iterdir() if "gone" in p.name]
    invariants.check("nothing of it is left", not leftovers, str(leftovers))


# -- SIGKILL at a random moment, pods and volumes going away ----------------------------


def test_sigkill_mid_transfer_of_a_large_update(env: Env, invariants: Invariants) -> None:
    v1 = plugin_files("bulk", "1.0.0")
    v2 = plugin_files("bulk", "2.0.0", big_tree())
    a = env.git.create_repo("acme", "bulk", v1)
    b = env.git.commit("acme", "bulk", v2)
    env.workspace("wf6", replicas=2)
    env.install("bulk", "wf6", f"github://acme/bulk#{a}", restart="None")
    wait_installed(env, "bulk", a)
    with watching(env, "wf6", "bulk", [a, b], {a: files_of(v1), b: files_of(v2)}) as watch:
        env.install("bulk", "wf6", f"github://acme/bulk#{b}", restart="None")
        wait_incoming(env, watch.dirs, "bulk", then=env.operator.kill)
        env.operator.start()
        wait_installed(env, "bulk", b, timeout=120)
    check_all(env, invariants, watch, "bulk", sha=b)


def test_a_pod_deleted_mid_delivery(env: Env, invariants: Invariants) -> None:
    tree = plugin_files("podgone", extra=big_tree())
    sha = env.git.create_repo("acme", "podgone", tree)
    env.workspace("wf7", replicas=2)
    with watching(env, "wf7", "podgone", [sha], {sha: files_of(tree)}) as watch:
        env.install("podgone", "wf7", f"github://acme/podgone#{sha}", restart="None")
        victim = watch.dirs[0].name
        wait_incoming(env, watch.dirs, "podgone", then=lambda: env.k("delete", "pod", victim, "--wait=false"))
        env.wait_for("the pod back", lambda: env.running_pods("wf7") == 2, timeout=60)
        wait_installed(env, "podgone", sha, timeout=120)
    check_all(env, invariants, watch, "podgone", sha=sha)


def test_a_pod_volume_wiped_mid_delivery(env: Env, invariants: Invariants) -> None:
    tree = plugin_files("wiped", extra=big_tree())
    sha = env.git.create_repo("acme", "wiped", tree)
    env.workspace("wf8", replicas=2)
    with watching(env, "wf8", "wiped", [sha], {sha: files_of(tree)}) as watch:
        env.install("wiped", "wf8", f"github://acme/wiped#{sha}", restart="None")
        wait_incoming(env, watch.dirs, "wiped", then=lambda: shutil.rmtree(watch.dirs[0], ignore_errors=True))
        watch.dirs[0].mkdir(exist_ok=True)
        # Brought back by the next pass (a failed pod is retried in 15 s; a
        # wiped volume of a pod said to hold it, by the periodic reconcile).
        env.wait_for(
            "the wiped pod refilled", lambda: (env.marker(watch.dirs[0], "wiped") or {}).get("sha") == sha, timeout=120
        )
        wait_installed(env, "wiped", sha, timeout=60)
    check_all(env, invariants, watch, "wiped", sha=sha)


# -- the pod's own disk: full, read-only ----------------------------------------------


@contextlib.contextmanager
def mounted(path: Path, *options: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)], check=False)
    if done.returncode != 0:
        pytest.skip("mount is not permitted here")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _pod_message(env: Env, install: str, pod: str) -> str:
    for entry in (env.get("pli", install).get("status") or {}).get("pods") or []:
        if entry["name"] == pod:
            return str(entry.get("message") or "")
    return ""


@pytest.mark.parametrize(
    ("mode", "said"),
    [("full", "no space left on device"), ("read-only", "read-only (EROFS)")],
)
def test_a_full_or_read_only_configs_dir_is_said_per_pod_and_recovers(
    env: Env, invariants: Invariants, mode: str, said: str
) -> None:
    plugin = "disk" + mode.replace("-", "")
    tree = plugin_files(plugin, extra={"assets/big.bin": "z" * 300_000})
    sha = env.git.create_repo("acme", plugin, tree)
    root = env.workspace(plugin, replicas=2)
    (first, _) = env.pod_dirs(plugin)
    pod = first.name
    with watching(env, plugin, plugin, [sha], {sha: files_of(tree)}) as watch:
        with mounted(root / pod, "size=128k", *(["ro"] if mode == "read-only" else [])):
            env.install(plugin, plugin, f"github://acme/{plugin}#{sha}", restart="None")
            env.wait_for(f"the pod's {mode} disk said", lambda: said in _pod_message(env, plugin, pod), timeout=60)
            message = _pod_message(env, plugin, pod)
            invariants.check("the pod's error is in words", "Exception" not in message and "(E" in message, message)
            condition = env.jsonpath("pli", plugin, "{.status.conditions[?(@.type=='Installed')].message}")
            invariants.check("the Installed condition says it too", said in condition, condition)
            invariants.check("nothing half-written", not list((root / pod).rglob("plugin.yaml")), pod)
        wait_installed(env, plugin, sha, timeout=90)
    check_all(env, invariants, watch, plugin, sha=sha)


# -- a symlink planted during a swap ------------------------------------------------------


def test_a_symlink_planted_during_a_swap_is_replaced_never_followed(
    env: Env, invariants: Invariants, tmp_path: Path
) -> None:
    v1 = plugin_files("plant", "1.0.0")
    v2 = plugin_files("plant", "2.0.0")
    a = env.git.create_repo("acme", "plant", v1)
    b = env.git.commit("acme", "plant", v2)
    env.workspace("wf9", replicas=1)
    env.install("plant", "wf9", f"github://acme/plant#{a}", restart="None")
    wait_installed(env, "plant", a)
    (pod_dir,) = env.pod_dirs("wf9")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep\n")
    link = pod_dir / "plugins/plant"
    planted = pod_dir / "plugins/.planted"
    planted.symlink_to(outside)
    planted.replace(link)  # planted over the operator's own link, atomically
    env.install("plant", "wf9", f"github://acme/plant#{b}", restart="None")
    wait_installed(env, "plant", b, timeout=90)
    invariants.check(
        "the outside dir is untouched",
        sorted(p.name for p in outside.iterdir()) == ["precious"] and (outside / "precious").read_text() == "keep\n",
        str(list(outside.iterdir())),
    )
    env.wait_for("the new version in place", lambda: (env.marker(pod_dir, "plant") or {}).get("sha") == b, timeout=60)
    target = json.loads((link / ".plugin-operator.json").read_text())["sha"]
    invariants.check(
        "the plugin is the new version, ours", target == b and str(link.readlink()).startswith(".."), target
    )
    with watching(env, "wf9", "plant", [a, b], {a: files_of(v1), b: files_of(v2)}) as watch:
        time.sleep(0.2)
    check_all(env, invariants, watch, "plant", sha=b)


# -- SIGKILL between superseding a pending PluginUpdate and creating the next -------------


@pytest.mark.parametrize("point", ["propose-after-supersede", "propose-after-record"])
def test_crash_between_supersede_and_create_leaves_one_pending_update(
    env: Env, invariants: Invariants, point: str
) -> None:
    repo = "sup" + point.split("-")[-1]
    v1, v2, v3 = (plugin_files(repo, f"{n}.0.0") for n in (1, 2, 3))
    a = env.git.create_repo("acme", repo, v1)
    env.workspace(repo, replicas=1)
    env.install(repo, repo, f"github://acme/{repo}#main", restart="None")
    wait_installed(env, repo, a)
    first, _ = _propose(env, repo, repo, v2)
    arm(env, point)
    c = env.git.commit("acme", repo, v3)
    with watching(env, repo, repo, [a], {a: files_of(v1)}) as watch:
        env.annotate("pli", repo, RESOLVE)
        crashed_then_restarted(env, invariants, point)
        env.wait_for(
            "the newer proposal Pending",
            lambda: any(
                u["spec"]["toSHA"] == c and (u.get("status") or {}).get("state") == "Pending" for u in updates(env)
            ),
            timeout=90,
        )
    check_all(env, invariants, watch, repo, sha=a)
    states = {u["metadata"]["name"]: (u.get("status") or {}).get("state") for u in updates(env)}
    invariants.check("the older proposal is Superseded", states.get(first) == "Superseded", str(states))
    status = env.get("pli", repo)["status"]
    invariants.check(
        "the install records the newer proposal",
        status.get("pendingUpdateSHA") == c and status.get("pendingUpdate") in states,
        f"{status.get('pendingUpdate')} {status.get('pendingUpdateSHA')}",
    )
