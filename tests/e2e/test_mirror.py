"""The Postgres mirror behind the real operator (issue 6): rows follow the
cluster; an outage of the real server in the middle of a flow blocks nothing,
and the rows catch up exactly when it is back."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psycopg
import pytest

from tests.fixtures.operator import Env, MirrorDb, plugin_files

pytestmark = [pytest.mark.cluster, pytest.mark.git, pytest.mark.postgres]
WS_A = "6f1c2a7e-0000-4000-8000-00000000000a"
WS_B = "6f1c2a7e-0000-4000-8000-00000000000b"
WS_C = "6f1c2a7e-0000-4000-8000-00000000000c"


def _rows(db: MirrorDb, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(db.url.replace("postgresql+psycopg", "postgresql"), connect_timeout=3) as conn:
        cur = conn.execute(sql, params)  # type: ignore[call-overload]
        return list(cur.fetchall()) if cur.description else []


def _db_check(env: Env, db: MirrorDb) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plugin_operator", "db", "check"],
        env={**os.environ, **env.kube.env(), "DATABASE_URL": db.url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_rows_follow_the_cluster_through_an_outage(env: Env, mirror_db: MirrorDb) -> None:
    env.git.create_repo("acme", "mir", plugin_files("mir", "1.0.0"))
    first = env.git.git("acme", "mir", "rev-parse", "main").strip()
    for ws in (WS_A, WS_B, WS_C):
        env.workspace(ws, replicas=1)
    env.install("mir-a", WS_A, "github://acme/mir#main", restart="None")
    env.install("mir-c", WS_C, "github://acme/mir#main", restart="None")
    env.wait_condition("pli", "mir-a", "Ready")
    env.wait_condition("pli", "mir-c", "Ready")
    env.wait_for(
        "the install rows",
        lambda: len(_rows(mirror_db, "select 1 from workspace_plugins where installed_sha is not null")) == 2,
    )
    assert _rows(
        mirror_db, f"select source_raw, tracked_ref, installed_sha from workspace_plugins where workspace_id = '{WS_A}'"
    ) == [("github://acme/mir#main", "ref:main", first)]

    second = env.git.commit("acme", "mir", plugin_files("mir", "2.0.0"))
    env.annotate("pli", "mir-a", "plugins.workspace.dev/resolve")
    update = f"mir-a-{second[:12]}"
    env.wait_for("Pending", lambda: env.jsonpath("plu", update, "{.status.state}") == "Pending")
    uid = env.jsonpath("plu", update, "{.metadata.uid}")
    env.wait_for(
        "the pending queue row", lambda: _rows(mirror_db, "select status from plugin_update_queue") == [("pending",)]
    )
    assert _rows(mirror_db, "select id::text, current_sha, latest_sha from plugin_update_queue") == [
        (uid, first, second)
    ]

    # The database goes away in the middle of the flow: nothing in the cluster waits for it.
    mirror_db.server.stop()
    env.k("patch", "pluginupdate", update, "--type=merge", "-p", '{"spec":{"approved":true}}')
    env.wait_condition("plu", update, "Applied", timeout=90)
    env.install("mir-b", WS_B, "github://acme/mir#main", restart="None")
    env.wait_condition("pli", "mir-b", "Ready")
    env.k("delete", "pli", "mir-c", "--timeout=60s")
    time.sleep(2)
    mirror_db.server.start()

    env.wait_for("the mirror in sync", lambda: _db_check(env, mirror_db).returncode == 0, timeout=240)
    rows = _rows(mirror_db, "select workspace_id::text, plugin_name, installed_sha from workspace_plugins order by 1")
    assert rows == [(WS_A, "mir", second), (WS_B, "mir", second)]
    assert _rows(mirror_db, "select id::text, status from plugin_update_queue") == [(uid, "applied")]
    pending = _rows(
        mirror_db,
        "select workspace_id, plugin_name, count(*) from plugin_update_queue "
        "where status = 'pending' group by 1, 2 having count(*) > 1",
    )
    assert pending == []

    # `db check` tells people when the rows drift from the cluster.
    _rows(mirror_db, "delete from workspace_plugins where workspace_id = %s", WS_B)
    drifted = _db_check(env, mirror_db)
    assert drifted.returncode == 1
    assert WS_B in drifted.stdout + drifted.stderr
