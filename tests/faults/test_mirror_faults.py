"""Faults of the Postgres mirror (issue: Faults): a real PostgreSQL behind a
real delaying TCP proxy (localdev.slowproxy), killed, restarted, paused,
slowed to 3 s per reply, refusing writes, or misconfigured. Kubernetes is
the source of truth: installs, uninstalls and approvals never wait for the
database, and the tables are exact again once it is back.

One operator, PostgreSQL and namespace serve the whole module; each test
uses its own workspaces and plugins."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from localdev.cluster import LocalCluster
from localdev.postgres import PostgresServer
from localdev.slowproxy import FaultProxy
from tests.faults.conftest import Invariants
from tests.faults.faultkit import RESOLVE, World, uuid_for
from tests.fixtures.cluster import scratch_namespace
from tests.fixtures.operator import running_env
from tests.fixtures.postgres import PLATFORM_SCHEMA

pytestmark = [pytest.mark.cluster, pytest.mark.git, pytest.mark.postgres]
SALT = "fa17ed00"


@pytest.fixture(scope="module")
def world(kube: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("faults-mirror")
    with PostgresServer() as pg:
        pg.create_database("platform")
        pg.run_sql_file("platform", PLATFORM_SCHEMA)
        with FaultProxy("127.0.0.1", pg.port) as proxy, scratch_namespace(kube, "fm") as namespace:
            url = pg.url_for("platform").replace(f":{pg.port}/", f":{proxy.port}/")
            with running_env(kube, namespace, workdir, DATABASE_URL=url, DRIFT_SWEEP_INTERVAL="10h") as env:
                yield World(env, pg, "platform", pg_proxy=proxy)


def _ready(world: World, name: str) -> bool:
    return world.env.jsonpath("pli", name, "{.status.conditions[?(@.type=='Ready')].status}") == "True"


def _installed_sha(world: World, name: str) -> str:
    return world.env.jsonpath("pli", name, "{.status.installedSHA}")


def _all_applied(world: World, updates: list[str]) -> bool:
    states = world.states()
    return all(states.get(u) == "Applied" for u in updates)


def _approve_all(world: World, updates: list[str]) -> float:
    """Approve every update at once; seconds until all are Applied."""
    started = time.monotonic()
    for update in updates:
        world.approve(update)
    while not _all_applied(world, updates):
        assert time.monotonic() - started < 120, f"not Applied after 120s:\n{world.env.operator.tail(40)}"
        time.sleep(0.05)
    return time.monotonic() - started


def test_postgres_killed_mid_install(world: World, invariants: Invariants) -> None:
    env = world.env
    ws = uuid_for(1, SALT)
    env.workspace(ws, replicas=1)
    first = world.repo("kin")
    world.install("kin", ws, "kin")
    time.sleep(0.2)
    world.pg.kill()  # SIGKILL, as the OOM killer does
    try:
        env.wait_for("the install, Postgres dead", lambda: _ready(world, "kin"), timeout=60)
    finally:
        world.pg.start()
    invariants.check("status says installed", _installed_sha(world, "kin") == first, _installed_sha(world, "kin"))
    world.check(invariants)


def test_postgres_killed_mid_approval(world: World, invariants: Invariants) -> None:
    env = world.env
    ws = uuid_for(2, SALT)
    env.workspace(ws, replicas=1)
    world.repo("kap")
    world.install("kap", ws, "kap")
    env.wait_for("installed", lambda: _ready(world, "kap"), timeout=60)
    update = world.propose("kap", "kap")
    world.approve(update)
    world.pg.kill()
    try:
        env.wait_for("Applied, Postgres dead", lambda: world.states().get(update) == "Applied", timeout=60)
    finally:
        world.pg.start()
    wanted = env.jsonpath("plu", update, "{.spec.toSHA}")
    invariants.check("status says the update was applied", _installed_sha(world, "kap") == wanted)
    world.check(invariants)


def test_postgres_slow_during_approvals_stays_within_twice_the_healthy_time(
    world: World, invariants: Invariants
) -> None:
    env = world.env
    proxy = world.pg_proxy
    assert proxy is not None
    ws = uuid_for(3, SALT)
    env.workspace(ws, replicas=1)
    names = ["sa1", "sa2", "sa3"]
    for name in names:
        world.repo(name)
        world.install(name, ws, name)
    env.wait_for("three installs", lambda: all(_ready(world, n) for n in names), timeout=90)

    healthy = _approve_all(world, [world.propose(n, n) for n in names])
    proposals = [world.propose(n, n) for n in names]
    proxy.delay = 3.0  # every reply of PostgreSQL arrives 3 s late
    try:
        slow = _approve_all(world, proposals)
    finally:
        proxy.delay = 0.0
    print(f"\nFIGURE approve->Applied (3 approvals): healthy {healthy:.2f}s, Postgres +3s per reply {slow:.2f}s")
    # 0.3 s of slack: one poll of the states through kubectl, on a shared 2-core machine.
    invariants.check(
        "approve->Applied with Postgres 3 s per reply within 2x the healthy figure",
        slow <= 2 * healthy + 0.3,
        f"healthy {healthy:.2f}s, slow {slow:.2f}s",
    )
    for name in names:
        invariants.check(f"{name}: status says the second update", _installed_sha(world, name) in world.order)
    world.check(invariants)


def test_postgres_slow_during_a_burst_of_installs(world: World, invariants: Invariants) -> None:
    env = world.env
    proxy = world.pg_proxy
    assert proxy is not None
    workspaces = [uuid_for(40 + n, SALT) for n in range(2)]
    for ws in workspaces:
        env.workspace(ws, replicas=1)
    repos = ["bu1", "bu2", "bu3"]
    for repo in repos:
        world.repo(repo)
    proxy.delay = 3.0
    try:
        started = time.monotonic()
        names = []
        for i, ws in enumerate(workspaces):
            for repo in repos:
                names.append(f"{repo}-{i}")
                world.install(names[-1], ws, repo)
        env.wait_for("six installs, Postgres slow", lambda: all(_ready(world, n) for n in names), timeout=90)
        took = time.monotonic() - started
    finally:
        proxy.delay = 0.0
    print(f"\nFIGURE six installs with Postgres +3s per reply: {took:.1f}s")
    invariants.check("the burst did not wait for the database", took < 45, f"{took:.1f}s")
    world.check(invariants)


def test_postgres_refusing_writes_is_visible(world: World, invariants: Invariants) -> None:
    env = world.env
    ws = uuid_for(5, SALT)
    env.workspace(ws, replicas=1)
    world.repo("refused")
    # The platform's own rule refuses our row (as a revoked grant or a
    # read-only table would): a trigger of its schema.
    world.sql(
        "CREATE FUNCTION refuse_plugin() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.plugin_name = 'refused' THEN RAISE EXCEPTION 'platform policy refuses %', NEW.plugin_name; "
        "END IF; RETURN NEW; END $$"
    )
    world.sql(
        "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON workspace_plugins "
        "FOR EACH ROW EXECUTE FUNCTION refuse_plugin()"
    )
    before = world.metric('plugin_operator_mirror_write_failures_total{kind="refused"}')
    try:
        world.install("refused", ws, "refused")
        env.wait_for("installed, the database refusing its row", lambda: _ready(world, "refused"), timeout=60)
        env.wait_for(
            "a Warning Event MirrorWriteFailed",
            lambda: any(r == "MirrorWriteFailed" for _, r, _ in world.events("refused")),
            timeout=30,
        )
        said = [m for t, r, m in world.events("refused") if r == "MirrorWriteFailed" and t == "Warning"]
        invariants.check("the Event names the database's refusal", any("platform policy" in m for m in said), str(said))
        after = world.metric('plugin_operator_mirror_write_failures_total{kind="refused"}')
        invariants.check("the refusal is counted in a metric", after > before, f"{before} -> {after}")
    finally:
        world.sql("DROP TRIGGER refuse ON workspace_plugins")
    env.annotate("pli", "refused", RESOLVE)  # one more write: the resync follows at once
    world.check(invariants)


def test_postgres_restarted_and_back(world: World, invariants: Invariants) -> None:
    env = world.env
    ws = uuid_for(6, SALT)
    env.workspace(ws, replicas=1)
    world.repo("rsa")
    world.repo("rsb")
    world.install("rsa", ws, "rsa")
    env.wait_for("installed", lambda: _ready(world, "rsa"), timeout=60)
    world.pg.stop()
    try:
        env.k("delete", "pli", "rsa", "--timeout=60s")
        world.install("rsb", ws, "rsb")
        env.wait_for("installed, Postgres stopped", lambda: _ready(world, "rsb"), timeout=60)
    finally:
        world.pg.start()
    world.check(invariants)
    rows = world.sql(f"SELECT plugin_name FROM workspace_plugins WHERE workspace_id = '{ws}'")
    invariants.check("the uninstalled plugin's row is gone, the new one there", rows == [("rsb",)], str(rows))


def test_postgres_paused_during_an_approval(world: World, invariants: Invariants) -> None:
    env = world.env
    ws = uuid_for(7, SALT)
    env.workspace(ws, replicas=1)
    world.repo("pau")
    world.install("pau", ws, "pau")
    env.wait_for("installed", lambda: _ready(world, "pau"), timeout=60)
    update = world.propose("pau", "pau")
    world.pg.pause()  # SIGSTOP: connections open, nothing answers
    try:
        took = _approve_all(world, [update])
    finally:
        world.pg.resume()
    invariants.check("the approval did not wait for a paused database", took < 15, f"{took:.1f}s")
    world.check(invariants)


_BAD_URLS = {
    "wrong-scheme": ("mysql://app:s3cret@db:3306/platform", "unsupported scheme"),
    "bad-port": ("postgresql://app:s3cret@db:5x32/platform", "not a valid URL"),
    "no-host": ("postgresql://app:s3cret@/platform", "no host"),
}


def test_bad_database_url_at_start_up(world: World, invariants: Invariants) -> None:
    """Three bad URLs, each its own operator process, started together."""
    started = time.monotonic()
    procs = {
        case: subprocess.Popen(
            [sys.executable, "-m", "plugin_operator", "run", "--liveness", "http://127.0.0.1:0/healthz"],
            env={**os.environ, **world.env.kube.env(), "DATABASE_URL": url, "PLUGIN_METRICS_PORT": "0"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for case, (url, _) in _BAD_URLS.items()
    }
    for case, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        took = time.monotonic() - started
        said = _BAD_URLS[case][1]
        output = out + err
        invariants.check(f"{case}: exits 2 at start-up", proc.returncode == 2, f"rc={proc.returncode}: {output[-400:]}")
        invariants.check(f"{case}: at once, not after a liveness timeout", took < 30, f"{took:.1f}s")
        invariants.check(f"{case}: names DATABASE_URL and why", "DATABASE_URL" in err and said in err, output)
        invariants.check(f"{case}: never shows the password", "s3cret" not in output, output)
    world.check(invariants)  # the running operator and its mirror are untouched
