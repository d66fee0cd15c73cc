"""Shared by the mirror and upstream fault suites: one operator per module
behind fault proxies (PostgreSQL, the git host), and the invariants every
fault test checks after recovery (see conftest.py):

- no partial tree in any pod (every plugin directory holds one whole version);
- no pod going back to an older commit (markers only move forward);
- at most one Pending PluginUpdate per install;
- the mirror equal to the cluster (`plugin-operator db check` exits 0).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from localdev.postgres import PostgresServer
from localdev.slowproxy import FaultProxy
from tests.faults.conftest import Invariants
from tests.fixtures.operator import Env, plugin_files

RESOLVE = "plugins.workspace.dev/resolve"
_VERSION = re.compile(r"^version: (\S+)$", re.M)


@dataclass
class World:
    env: Env
    pg: PostgresServer
    database: str
    pg_proxy: FaultProxy | None = None
    git_proxy: FaultProxy | None = None
    order: dict[str, int] = field(default_factory=dict)  # commit -> creation rank
    seen: dict[tuple[str, str], int] = field(default_factory=dict)  # (pod dir, plugin) -> highest rank seen
    regressions: list[str] = field(default_factory=list)
    _versions: dict[str, int] = field(default_factory=dict)

    @property
    def db_url(self) -> str:
        """The database itself, not through the proxy (for `db check`)."""
        return self.pg.url_for(self.database)

    # -- upstream ------------------------------------------------------------

    def repo(self, name: str) -> str:
        """A repository acme/<name> with the plugin <name> at 1.0.0; its first commit."""
        sha = self.env.git.create_repo("acme", name, plugin_files(name, "1.0.0"))
        self._versions[name] = 1
        self.order[sha] = len(self.order)
        return sha

    def commit(self, name: str) -> str:
        """A new version of the plugin on main; the new commit."""
        self._versions[name] += 1
        sha = self.env.git.commit("acme", name, plugin_files(name, f"{self._versions[name]}.0.0"))
        self.order[sha] = len(self.order)
        return sha

    # -- the cluster ------------------------------------------------------------

    def install(self, name: str, workspace: str, repo: str, **spec: Any) -> None:
        self.env.install(name, workspace, f"github://acme/{repo}#main", restart="None", **spec)

    def states(self) -> dict[str, str]:
        """PluginUpdate name -> state."""
        items = json.loads(self.env.k("get", "plu", "-o", "json"))["items"]
        return {u["metadata"]["name"]: (u.get("status") or {}).get("state", "") for u in items}

    def propose(self, install: str, repo: str) -> str:
        """Move upstream, ask for a resolve; the name of the Pending update."""
        sha = self.commit(repo)
        name = f"{install}-{sha[:12]}"
        self.env.annotate("pli", install, RESOLVE)
        self.env.wait_for(f"{name} Pending", lambda: self.states().get(name) == "Pending", timeout=60)
        return name

    def approve(self, update: str) -> None:
        self.env.k("patch", "plu", update, "--type=merge", "-p", '{"spec":{"approved":true}}')

    def events(self, name: str) -> list[tuple[str, str, str]]:
        out = self.env.k("get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json")
        return [(e.get("type", ""), e.get("reason", ""), e.get("message", "")) for e in json.loads(out)["items"]]

    def condition(self, kind: str, name: str, type_: str) -> dict[str, Any]:
        obj = self.env.get(kind, name)
        found = [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == type_]
        return found[0] if found else {}

    def metric(self, prefix: str) -> float:
        return sum(v for k, v in self.env.operator.metrics().items() if k.startswith(prefix))

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.pg.conninfo(self.database), autocommit=True) as conn:
            cur = conn.execute(statement.encode())
            return list(cur.fetchall()) if cur.description else []

    def db_check(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "plugin_operator", "db", "check"],
            env={**os.environ, **self.env.kube.env(), "DATABASE_URL": self.db_url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    # -- the invariants -------------------------------------------------------

    def observe(self) -> None:
        """Record the commit each pod holds; a lower rank than seen before is a regression."""
        for workspace in list(self.env.workspaces):
            for pod in self.env.pod_dirs(workspace):
                plugins = pod / "plugins"
                for plugin in sorted(plugins.iterdir()) if plugins.is_dir() else []:
                    marker = self.env.marker(pod, plugin.name) if not plugin.name.startswith(".") else None
                    rank = self.order.get(str((marker or {}).get("sha")), -1)
                    key = (str(pod), plugin.name)
                    if rank < self.seen.get(key, -1):
                        self.regressions.append(f"{pod.name}/{plugin.name} went back to rank {rank}")
                    self.seen[key] = max(rank, self.seen.get(key, -1))

    def partial_trees(self) -> list[str]:
        """Plugin directories in pods that do not hold one whole version."""
        bad = []
        for workspace in list(self.env.workspaces):
            for pod in self.env.pod_dirs(workspace):
                plugins = pod / "plugins"
                for plugin in sorted(plugins.iterdir()) if plugins.is_dir() else []:
                    if plugin.name.startswith("."):
                        continue
                    manifest, rules = plugin / "plugin.yaml", plugin / "rules" / "style.md"
                    marker = self.env.marker(pod, plugin.name)
                    if marker is None or not manifest.is_file() or not rules.is_file():
                        bad.append(f"{pod.name}/{plugin.name}: marker, plugin.yaml or rules missing")
                        continue
                    version = _VERSION.search(manifest.read_text())
                    if version is None or version.group(1) not in rules.read_text():
                        bad.append(f"{pod.name}/{plugin.name}: files of two versions")
        return bad

    def pending_per_install(self) -> dict[str, int]:
        items = json.loads(self.env.k("get", "plu", "-o", "json"))["items"]
        count: dict[str, int] = {}
        for u in items:
            if (u.get("status") or {}).get("state") == "Pending":
                owner = u["spec"].get("pluginInstall", "")
                count[owner] = count.get(owner, 0) + 1
        return {k: v for k, v in count.items() if v > 1}

    def check(self, invariants: Invariants, *, mirror_timeout: float = 90) -> None:
        """Every invariant after recovery (the fault undone)."""
        self.observe()
        partial = self.partial_trees()
        invariants.check("no partial tree in any pod", not partial, "; ".join(partial))
        invariants.check("no pod went back to an older commit", not self.regressions, "; ".join(self.regressions))
        doubled = self.pending_per_install()
        invariants.check("at most one Pending PluginUpdate per install", not doubled, str(doubled))
        deadline = time.monotonic() + mirror_timeout
        done = self.db_check()
        while done.returncode != 0 and time.monotonic() < deadline:
            time.sleep(2)
            done = self.db_check()
        invariants.check(
            "mirror equal to the cluster (db check exits 0)",
            done.returncode == 0,
            f"rc={done.returncode}: {(done.stdout + done.stderr)[-600:]}",
        )
        invariants.lost(0 if done.returncode == 0 else 1, "mirror rows differ from the cluster")


def wait_until(what: str, predicate: Callable[[], bool], timeout: float, env: Env) -> float:
    """Seconds it took; AssertionError with the operator's log after `timeout`."""
    started = time.monotonic()
    env.wait_for(what, predicate, timeout=timeout)
    return time.monotonic() - started


def uuid_for(n: int, salt: str) -> str:
    return f"{salt}-0000-4000-8000-{n:012d}"


def apiserver_pid(env: Env) -> int:
    for proc in env.kube._procs:
        if proc.name == "kube-apiserver":
            return proc.popen.pid
    raise RuntimeError("no kube-apiserver")


def component(env: Env, name: str) -> Any:
    for proc in env.kube._procs:
        if proc.name == name:
            return proc
    raise RuntimeError(f"no {name} in the local cluster")


def path_of(env: Env, *parts: str) -> Path:
    return env.configs_root.parent.joinpath(*parts)
