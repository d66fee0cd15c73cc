"""The throwaway PostgreSQL harness itself: isolation, restart, clean teardown."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from localdev.postgres import PostgresError, PostgresServer

pytestmark = pytest.mark.postgres


def _postmaster_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_two_servers_do_not_collide_and_leave_nothing_behind() -> None:
    with PostgresServer() as one, PostgresServer() as two:
        assert one.port != two.port and one.base_dir != two.base_dir
        dirs = [one.base_dir, two.base_dir]
        pids = [server._proc.pid for server in (one, two) if server._proc is not None]
        with psycopg.connect(one.conninfo()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert not any(d is not None and d.exists() for d in dirs)
    assert not any(_postmaster_alive(pid) for pid in pids)


def test_a_restarted_server_keeps_its_port_and_data(private_postgres_server: PostgresServer) -> None:
    pg = private_postgres_server
    pg.create_database("kept")
    port = pg.port
    pg.stop()
    assert not pg.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.conninfo(), connect_timeout=2)
    pg.start()
    assert pg.port == port
    with psycopg.connect(pg.conninfo("kept")) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("kept",)


def test_teardown_runs_when_the_body_raises() -> None:
    with pytest.raises(KeyboardInterrupt), PostgresServer() as pg:
        base = pg.base_dir
        raise KeyboardInterrupt
    assert base is not None and not base.exists()


def test_missing_binaries_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_BIN_DIR", str(tmp_path))
    with pytest.raises(PostgresError, match=r"PostgreSQL server binaries .* not found in PG_BIN_DIR="):
        PostgresServer().__enter__()
