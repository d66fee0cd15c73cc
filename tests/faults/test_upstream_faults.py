"""Faults around the operator (issue: Faults): the git host hanging, down or
answering 500 (a real TCP proxy in front of the loopback git server), the
operator's staging disk full (a real 64 MiB tmpfs as PLUGIN_CACHE_DIR, filled
to the last byte), kube-apiserver restarted in the middle of the sweeps and
etcd paused (SIGSTOP/SIGCONT) during an approval. After each, the invariants
hold and status says what happened.

One operator (sweeping every 10 s), PostgreSQL and namespace serve the whole
module; the control-plane faults run last, on the session's cluster (it
comes back whole: same ports, same data)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localdev.cluster import LocalCluster, stop_process_group
from localdev.postgres import PostgresServer
from localdev.slowproxy import FaultProxy
from tests.faults.conftest import Invariants
from tests.faults.faultkit import World, component, uuid_for
from tests.fixtures.cluster import scratch_namespace
from tests.fixtures.operator import Env, running_env
from tests.fixtures.postgres import PLATFORM_SCHEMA

pytestmark = [pytest.mark.cluster, pytest.mark.git, pytest.mark.postgres]
SALT = "fa17ed01"


@contextlib.contextmanager
def _small_disk(path: Path, size: str = "64m") -> Iterator[bool]:
    """A tmpfs of `size` at `path` (True), or a plain directory when this
    machine does not allow mounting (False)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, check=False
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture(scope="module")
def world(kube: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("faults-upstream")
    with (
        PostgresServer() as pg,
        _small_disk(workdir / "cache") as mounted,
        FaultProxy("127.0.0.1", 9) as git_proxy,
        scratch_namespace(kube, "fu") as namespace,
    ):
        pg.create_database("platform")
        pg.run_sql_file("platform", PLATFORM_SCHEMA)
        overrides = {
            "DATABASE_URL": pg.url_for("platform"),
            "GITHUB_BASE_URL": git_proxy.base_url,
            "PLUGIN_CACHE_DIR": str(workdir / "cache"),
            "DRIFT_SWEEP_INTERVAL": "10s",
            "PLUGIN_RESOLVE_TIMEOUT": "4s",
            "PLUGIN_INSTALL_FETCH_TIMEOUT": "15s",
        }
        with running_env(kube, namespace, workdir, **overrides) as env:
            git_proxy.target = ("127.0.0.1", int(env.git.base_url.rsplit(":", 1)[1]))
            found = World(env, pg, "platform", git_proxy=git_proxy)
            found.disk_mounted = mounted  # type: ignore[attr-defined]
            yield found


def _ready(world: World, name: str) -> bool:
    return world.env.jsonpath("pli", name, "{.status.conditions[?(@.type=='Ready')].status}") == "True"


def _reasons(world: World, name: str) -> dict[str, str]:
    obj = world.env.get("pli", name)
    return {c["type"]: c.get("reason", "") for c in (obj.get("status") or {}).get("conditions") or []}


def _warned(world: World, name: str, reasons: tuple[str, ...]) -> bool:
    return any(t == "Warning" and r in reasons for t, r, _ in world.events(name))


def _installed(world: World, ws: str, name: str) -> None:
    if ws not in world.env.workspaces:
        world.env.workspace(ws, replicas=1)
    world.repo(name)
    world.install(name, ws, name)
    world.env.wait_for(f"{name} installed", lambda: _ready(world, name), timeout=60)


def _git_mode(world: World, mode: str) -> None:
    assert world.git_proxy is not None
    world.git_proxy.mode = mode  # type: ignore[assignment]


def test_git_host_hangs_mid_sweep(world: World, invariants: Invariants) -> None:
    env = world.env
    _installed(world, uuid_for(1, SALT), "gh")
    sweeps = len(env.sweeps())
    _git_mode(world, "hang")  # connections accepted, never answered
    try:
        newer = world.commit("gh")
        env.wait_for("a sweep during the hang", lambda: len(env.sweeps()) > sweeps, timeout=40)
        env.wait_for(
            "UpToDate says upstream could not be resolved",
            lambda: (
                "could not resolve upstream"
                in env.jsonpath("pli", "gh", "{.status.conditions[?(@.type=='UpToDate')].message}")
            ),
            timeout=30,
        )
        invariants.check("the install stays Ready during the hang", _ready(world, "gh"))
    finally:
        _git_mode(world, "pass")
    update = f"gh-{newer[:12]}"
    env.wait_for("the proposal once the host answers", lambda: world.states().get(update) == "Pending", timeout=40)
    invariants.check("status names the pending update", update in env.jsonpath("pli", "gh", "{.status.pendingUpdate}"))
    world.check(invariants)


@pytest.mark.parametrize("mode", ["refuse", "http500"], ids=["git-host-down-then-back", "git-host-returns-500"])
def test_git_host_failing_then_back(world: World, invariants: Invariants, mode: str) -> None:
    env = world.env
    ws = uuid_for(2, SALT)
    if ws not in env.workspaces:
        env.workspace(ws, replicas=1)
    name = {"refuse": "gdown", "http500": "g500"}[mode]
    world.repo(name)
    _git_mode(world, mode)
    try:
        world.install(name, ws, name)
        env.wait_for("a condition saying why", lambda: "SourceUnreachable" in _reasons(world, name).values(), 40)
        env.wait_for("a Warning Event", lambda: _warned(world, name, ("SourceUnreachable",)), timeout=20)
        stalled = env.jsonpath("pli", name, "{.status.conditions[?(@.type=='Stalled')].message}")
        invariants.check("status says it retries", stalled.startswith("retrying"), stalled)
    finally:
        _git_mode(world, "pass")
    env.wait_for("installed once the host is back", lambda: _ready(world, name), timeout=60)
    world.check(invariants)


def test_staging_disk_full_then_freed(world: World, invariants: Invariants) -> None:
    if not getattr(world, "disk_mounted", False):
        pytest.skip("cannot mount a tmpfs here (not root or no CAP_SYS_ADMIN)")
    env = world.env
    ws = uuid_for(3, SALT)
    env.workspace(ws, replicas=1)
    world.repo("df")
    filler = env.configs_root.parent / "cache" / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:  # every last byte of the operator's staging disk
            out.write(b"\0" * (1 << 20))
            out.flush()
    with contextlib.suppress(OSError), (env.configs_root.parent / "cache" / "filler-tail").open("wb") as out:
        for _ in range(1 << 16):
            out.write(b"\0" * 64)
            out.flush()
    try:
        started = time.monotonic()
        world.install("df", ws, "df")
        env.wait_for("a StagingFailed condition", lambda: "StagingFailed" in _reasons(world, "df").values(), 30)
        env.wait_for("a Warning Event StagingFailed", lambda: _warned(world, "df", ("StagingFailed",)), 20)
        took = time.monotonic() - started
        invariants.check("said within seconds", took < 30, f"{took:.1f}s")
        message = env.jsonpath("pli", "df", "{.status.conditions[?(@.type=='Stalled')].message}")
        said_disk = "operator's disk" in message or "No space left on device" in message
        invariants.check("the condition says the disk is full", said_disk, message)
    finally:
        filler.unlink(missing_ok=True)
        (env.configs_root.parent / "cache" / "filler-tail").unlink(missing_ok=True)
    env.wait_for("installed once the disk has room", lambda: _ready(world, "df"), timeout=60)
    world.check(invariants)


def _restart_apiserver(env: Env, down_for: float) -> None:
    """Stop kube-apiserver, then start it again with the same flags (port, certificates, etcd)."""
    kube = env.kube
    proc = component(env, "kube-apiserver")
    args = list(proc.popen.args)
    stop_process_group(proc.popen)
    kube._procs.remove(proc)
    time.sleep(down_for)
    kube._spawn("kube-apiserver", args)
    deadline = time.monotonic() + 120
    while kube.kubectl("get", "--raw=/readyz", check=False).returncode != 0:
        assert time.monotonic() < deadline, "kube-apiserver did not come back"
        time.sleep(0.5)


def test_apiserver_restarted_mid_sweep(world: World, invariants: Invariants) -> None:
    env = world.env
    _installed(world, uuid_for(4, SALT), "ar")
    log_before = len(env.operator.log.read_text(errors="replace"))
    _git_mode(world, "hang")  # a sweep in flight lasts the resolve timeout: the restart lands in it
    time.sleep(2)
    try:
        _restart_apiserver(env, down_for=8)
    finally:
        _git_mode(world, "pass")
    back = time.monotonic()
    sweeps = len(env.sweeps())
    env.wait_for("a whole sweep after the restart", lambda: len(env.sweeps()) > sweeps, timeout=40)
    took = time.monotonic() - back
    log = env.operator.log.read_text(errors="replace")[log_before:]
    retried = "drift sweep failed (attempt" in log
    invariants.check("the failed sweep was retried with backoff", retried, env.operator.tail(30))
    invariants.check("a sweep completed soon after, not an interval later", took < 30, f"{took:.1f}s")
    world.check(invariants)


def test_etcd_paused_during_an_approval(world: World, invariants: Invariants) -> None:
    env = world.env
    _installed(world, uuid_for(5, SALT), "ep")
    update = world.propose("ep", "ep")
    etcd = component(env, "etcd")
    world.approve(update)
    os.kill(etcd.popen.pid, signal.SIGSTOP)
    try:
        time.sleep(10)
    finally:
        os.kill(etcd.popen.pid, signal.SIGCONT)
    env.wait_for("Applied after etcd is back", lambda: world.states().get(update) == "Applied", timeout=90)
    wanted = env.jsonpath("plu", update, "{.spec.toSHA}")
    installed = env.jsonpath("pli", "ep", "{.status.installedSHA}")
    invariants.check("status says the update was applied", installed == wanted, installed)
    world.check(invariants)
