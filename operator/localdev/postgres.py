"""A throwaway PostgreSQL server on 127.0.0.1, for tests and the demo.

    with PostgresServer() as pg:
        url = pg.create_database("mirror")   # postgresql+psycopg://postgres@127.0.0.1:PORT/mirror
        pg.stop(); pg.start()                # same port, same data: an outage and its end

A fresh cluster (`initdb -A trust -U postgres`) in a private temporary dir, a
free loopback port, the Unix socket in that dir. `postgres` runs as a child of
this process rather than daemonised by `pg_ctl`: it then dies with the caller
(PR_SET_PDEATHSIG) even when the test run is killed, and teardown (also on an
exception or Ctrl-C) stops it and removes the directory. initdb and postgres
refuse to run as root, so as root they run as the `postgres` system user that
the Debian package creates, with the directory handed to that user.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import psycopg
from psycopg import sql

from localdev.cluster import free_port

SUPERUSER = "postgres"
_START_ATTEMPTS = 5
_PR_SET_PDEATHSIG = 1


class PostgresError(RuntimeError):
    """PostgreSQL could not be set up; the message says why and where the log is."""


def find_bin_dir() -> Path:
    """$PG_BIN_DIR, else the highest /usr/lib/postgresql/<version>/bin, else
    the directory of `initdb` on PATH."""
    env = os.environ.get("PG_BIN_DIR")
    candidates: list[Path] = [Path(env)] if env else []
    if not env:
        versions = []
        for path in Path("/usr/lib/postgresql").glob("*/bin"):
            if (path / "initdb").is_file() and re.fullmatch(r"\d+(\.\d+)?", path.parent.name):
                versions.append((float(path.parent.name), path))
        candidates += [path for _, path in sorted(versions, reverse=True)]
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(on_path).parent)
    for path in candidates:
        if all((path / name).is_file() for name in ("initdb", "postgres")):
            return path
    raise PostgresError(
        "PostgreSQL server binaries (initdb, postgres) not found in "
        + (f"PG_BIN_DIR={env}" if env else "/usr/lib/postgresql/*/bin or on PATH")
        + "; install the Debian package `postgresql` (scripts/setup.sh does) or set PG_BIN_DIR"
    )


def _die_with_parent() -> None:
    # Runs in the child after the switch to the postgres user (a uid change
    # clears the death signal, so it must be set afterwards).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class PostgresServer:
    """A private PostgreSQL cluster; see the module docstring."""

    def __init__(self, bin_dir: Path | None = None, *, start_timeout: float = 30.0) -> None:
        self.bin_dir = bin_dir
        self.start_timeout = start_timeout
        self.port = 0
        self.base_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._as_user: pwd.struct_passwd | None = None

    # -- paths and URLs -----------------------------------------------------

    @property
    def _base(self) -> Path:
        if self.base_dir is None:
            raise PostgresError("PostgresServer is not set up: use it as a context manager")
        return self.base_dir

    @property
    def data_dir(self) -> Path:
        return self._base / "data"

    @property
    def log_path(self) -> Path:
        return self._base / "postgres.log"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the `postgres` database."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """libpq connection string (for psycopg without SQLAlchemy)."""
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database} connect_timeout=5"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ------------------------------------------------------------

    def __enter__(self) -> PostgresServer:
        try:
            self._setup()
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _setup(self) -> None:
        self.bin_dir = self.bin_dir or find_bin_dir()
        if os.geteuid() == 0:
            try:
                self._as_user = pwd.getpwnam(SUPERUSER)
            except KeyError:
                raise PostgresError(
                    "PostgreSQL refuses to run as root and there is no `postgres` system user to run it as; "
                    "install the Debian package `postgresql`, which creates it"
                ) from None
        self.base_dir = Path(tempfile.mkdtemp(prefix="plugin-operator-pg-"))
        atexit.register(self.close)
        if self._as_user is not None:
            os.chown(self.base_dir, self._as_user.pw_uid, self._as_user.pw_gid)
        initdb_log = self.base_dir / "initdb.log"
        argv = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-A",
            "trust",
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
        with initdb_log.open("wb") as log:
            done = self._popen(argv, log)
            try:
                code = done.wait(120)
            except subprocess.TimeoutExpired:
                done.kill()
                done.wait()
                code = -1
        if code != 0:
            raise PostgresError(f"PostgreSQL initdb failed (exit {code}); log: {initdb_log}\n{_tail(initdb_log)}")

    def _popen(self, argv: Sequence[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        user = self._as_user
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self._base,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"},
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=() if user else None,
            process_group=0,
            preexec_fn=_die_with_parent,
        )

    def start(self) -> None:
        """Start the server; after stop(), on the same port and data dir."""
        if self.running:
            return
        fixed_port = self.port != 0
        for _attempt in range(1 if fixed_port else _START_ATTEMPTS):
            if not fixed_port:
                self.port = free_port()
            if self._spawn():
                return
            # Another process may have taken the port between free_port() and bind: retry.
            tail = _tail(self.log_path, 5)
            if fixed_port or not ("could not bind" in tail or "already in use" in tail):
                break
        raise PostgresError(
            f"PostgreSQL did not start on 127.0.0.1:{self.port}; log: {self.log_path}\n{_tail(self.log_path)}"
        )

    def _spawn(self) -> bool:
        argv = [
            str(self.bin_dir / "postgres") if self.bin_dir else "postgres",
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-k",
            str(self._base),
            "-c",
            "listen_addresses=127.0.0.1",
            # A throwaway server: durability buys nothing here.
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=100",
        ]
        with self.log_path.open("ab") as log:
            self._proc = self._popen(argv, log)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            try:
                with psycopg.connect(self.conninfo(), connect_timeout=1):
                    return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        self._kill()
        return False

    def stop(self) -> None:
        """Fast shutdown (as `pg_ctl stop -m fast`); data and port are kept."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                self._kill()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the whole server (a crash, as the OOM killer does); start()
        brings it back with crash recovery, on the same port and data."""
        self._kill()
        self._proc = None

    def pause(self) -> None:
        """SIGSTOP the server's processes: connections hang, nothing answers."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGCONT)

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)

    def close(self) -> None:
        """Stop the server and remove its directory. Idempotent."""
        try:
            self.stop()
        finally:
            if self.base_dir is not None:
                shutil.rmtree(self.base_dir, ignore_errors=True)
                self.base_dir = None
            atexit.unregister(self.close)

    # -- helpers --------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create an empty database; returns its SQLAlchemy URL."""
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def execute(self, database: str, statement: str) -> None:
        """Run one SQL statement (no parameters), autocommit."""
        with psycopg.connect(self.conninfo(database), autocommit=True) as conn:
            conn.execute(statement.encode())

    def run_sql_file(self, database: str, path: Path) -> None:
        """Run a file of SQL statements (no parameters) in one transaction."""
        with psycopg.connect(self.conninfo(database)) as conn:
            conn.execute(path.read_text().encode())
