"""Two operator replicas as deploy/ runs them (issue: Faults, item 3):
leader election on a Lease, one active. A second replica started mid-
delivery changes nothing; the leader SIGKILLed mid-apply is replaced within
30 s and the approval is delivered exactly once per pod."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from localdev.operator_process import OperatorProcess
from tests.faults.conftest import Invariants
from tests.faults.helpers import big_tree, check_all, updates, wait_incoming, watching
from tests.faults.test_install_faults import files_of, wait_installed
from tests.fixtures.operator import Env, plugin_files

pytestmark = [pytest.mark.cluster, pytest.mark.git]
RESOLVE = "plugins.workspace.dev/resolve"
LEADS = "holds Lease"


def _elect(env: Env, identity: str) -> list[str]:
    env.operator.extra_env["POD_NAME"] = identity
    return ["--leader-elect", f"--lease-namespace={env.namespace}", "--lease-name=plugin-operator-test"]


def _leader(env: Env, tmp_path: Path) -> tuple[OperatorProcess, OperatorProcess]:
    """The env's operator restarted as replica a (it leads), and replica b
    (standby), with the same settings."""
    env.operator.stop()
    env.operator.args = _elect(env, "replica-a")
    env.operator.start()
    env.wait_for("replica a leads", lambda: LEADS in env.operator.log.read_text(), timeout=30)
    workdir = tmp_path / "replica-b"
    workdir.mkdir()
    other = OperatorProcess(
        env.kube,
        workdir,
        {**env.operator.extra_env, "POD_NAME": "replica-b"},
        namespaces=[env.namespace],
        args=env.operator.args,
    )
    return env.operator, other


def _acted(proc: OperatorProcess) -> bool:
    """Whether the process ran any handler (kopf logs each)."""
    text = proc.log.read_text(errors="replace") if proc.log.exists() else ""
    return "Handler '" in text or "Timer '" in text


def _propose(env: Env, install: str, repo: str, files: dict[str, str]) -> tuple[str, str]:
    sha = env.git.commit("acme", repo, files)
    env.annotate("pli", install, RESOLVE)
    env.wait_for(
        "a Pending PluginUpdate",
        lambda: any(
            u["spec"]["toSHA"] == sha and (u.get("status") or {}).get("state") == "Pending" for u in updates(env)
        ),
        timeout=60,
    )
    (name,) = [u["metadata"]["name"] for u in updates(env) if u["spec"]["toSHA"] == sha]
    return name, sha


def test_a_second_replica_started_mid_delivery_stays_standby(env: Env, invariants: Invariants, tmp_path: Path) -> None:
    tree = plugin_files("rep", extra=big_tree())
    sha = env.git.create_repo("acme", "rep", tree)
    env.workspace("wr1", replicas=2)
    leader, standby = _leader(env, tmp_path)
    try:
        with watching(env, "wr1", "rep", [sha], {sha: files_of(tree)}) as watch:
            env.install("rep", "wr1", f"github://acme/rep#{sha}", restart="None")
            # The standby starts while the leader delivers (starting takes
            # a few seconds: the delivery may be done by the time it is up).
            wait_incoming(env, watch.dirs, "rep")
            standby.start()
            wait_installed(env, "rep", sha, timeout=120)
            time.sleep(3)
        check_all(env, invariants, watch, "rep", sha=sha)
        invariants.check("the standby did nothing", not _acted(standby), standby.tail(20))
        per_pod = {pod: len(v) for pod, v in watch.versions.items()}
        invariants.check("delivered exactly once per pod", set(per_pod.values()) == {1}, str(per_pod))
        # A clean shutdown releases the Lease: the standby takes over at once.
        started = time.monotonic()
        leader.stop()
        env.wait_for("the standby leads", lambda: LEADS in standby.log.read_text(), timeout=30)
        took = time.monotonic() - started
        invariants.check("handover after a clean stop within 10 s", took < 10, f"{took:.1f}s")
    finally:
        standby.stop()


def test_the_leader_sigkilled_mid_apply_is_replaced_and_delivers_once(
    env: Env, invariants: Invariants, tmp_path: Path
) -> None:
    v1, v2 = plugin_files("lead", "1.0.0"), plugin_files("lead", "2.0.0", big_tree())
    a = env.git.create_repo("acme", "lead", v1)
    env.workspace("wr2", replicas=3)
    leader, standby = _leader(env, tmp_path)
    standby.start()
    try:
        env.install("lead", "wr2", "github://acme/lead#main", restart="None")
        wait_installed(env, "lead", a)
        name, b = _propose(env, "lead", "lead", v2)
        with watching(env, "wr2", "lead", [a, b], {a: files_of(v1), b: files_of(v2)}) as watch:
            time.sleep(0.3)
            before = {pod: set(v) for pod, v in watch.versions.items()}
            env.k("patch", "pluginupdate", name, "--type=merge", "-p", '{"spec":{"approved":true}}')
            standby_acted = _acted(standby)
            killed = [time.monotonic()]

            def kill_leader() -> None:
                killed[0] = time.monotonic()
                leader.kill()

            wait_incoming(env, watch.dirs, "lead", then=kill_leader)
            env.wait_for("the standby leads", lambda: LEADS in standby.log.read_text(), timeout=40)
            took = time.monotonic() - killed[0]
            env.wait_condition("plu", name, "Applied", timeout=120)
            wait_installed(env, "lead", b)
            time.sleep(3)
        invariants.check("takeover within 30 s of the leader dying", took <= 30, f"{took:.1f}s")
        invariants.check("the standby did nothing while the leader lived", not standby_acted, standby.tail(20))
        check_all(env, invariants, watch, "lead", sha=b)
        new = {pod: len(set(v) - before.get(pod, set())) for pod, v in watch.versions.items()}
        invariants.check("the approval delivered exactly once per pod", set(new.values()) == {1}, str(new))
    finally:
        standby.stop()
