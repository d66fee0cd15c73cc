"""What the install and replica fault tests share: a watcher of the pods'
plugin directories (no partial tree, no pod going back to an older commit,
deliveries counted), and the end-state invariants."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.conftest import Invariants
from tests.fixtures.operator import Env


@dataclass
class PodWatch:
    """Polls plugins/<plugin> of every pod dir: what commit it holds over
    time, each new version directory (one per delivery), and any moment the
    plugin is there but not whole."""

    dirs: list[Path]
    plugin: str
    order: list[str]  # commits, oldest first
    files: dict[str, int]  # commit -> files of its tree (marker included)
    seen: dict[str, list[str]] = field(default_factory=dict)
    versions: dict[str, set[str]] = field(default_factory=dict)
    partial: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _look(self, d: Path) -> None:
        target = d / "plugins" / self.plugin
        with contextlib.suppress(OSError):
            self.versions.setdefault(d.name, set()).add(os.readlink(target))
        try:
            marker = json.loads((target / ".plugin-operator.json").read_text())
        except (OSError, ValueError):
            if target.exists() and not (target / "plugin.yaml").exists():
                self.partial.append(f"{target}: no plugin.yaml")
            return
        sha = marker.get("sha")
        history = self.seen.setdefault(d.name, [])
        if not history or history[-1] != sha:
            history.append(sha)
        if not (target / "plugin.yaml").is_file():
            self.partial.append(f"{target}: marker of {sha[:12]} without plugin.yaml")

    def _run(self) -> None:
        while not self._stop.is_set():
            for d in self.dirs:
                self._look(d)
            time.sleep(0.01)

    def __enter__(self) -> PodWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        for d in self.dirs:
            self._look(d)

    def went_back(self) -> list[str]:
        back = []
        for pod, history in self.seen.items():
            ranks = [self.order.index(s) if s in self.order else -1 for s in history]
            if any(b < a for a, b in itertools.pairwise(ranks)):
                back.append(f"{pod}: {[s[:8] for s in history]}")
        return back

    def whole(self) -> list[str]:
        """Every pod's tree, now: absent, or exactly the files of its commit."""
        found = list(self.partial)
        for d in self.dirs:
            target = d / "plugins" / self.plugin
            if not target.exists():
                continue
            try:
                sha = json.loads((target / ".plugin-operator.json").read_text())["sha"]
            except (OSError, ValueError, KeyError):
                found.append(f"{target}: no readable marker")
                continue
            count = sum(1 for p in target.rglob("*") if p.is_file())
            if sha in self.files and count != self.files[sha]:
                found.append(f"{target}: {count} of {self.files[sha]} files of {sha[:12]}")
            leftovers = [
                p.name
                for p in (d / "plugins").iterdir()
                if p.name.startswith(".") and self.plugin in p.name and p.name != os.readlink(target)
            ]
            if leftovers:
                found.append(f"{d}: leftovers {leftovers}")
        return found


@contextlib.contextmanager
def watching(env: Env, workspace: str, plugin: str, order: list[str], files: dict[str, int]) -> Iterator[PodWatch]:
    with PodWatch(env.pod_dirs(workspace), plugin, order, files) as watch:
        yield watch


def updates(env: Env) -> list[dict[str, Any]]:
    return list(json.loads(env.k("get", "pluginupdates", "-o", "json"))["items"])


def check_all(
    env: Env,
    invariants: Invariants,
    watch: PodWatch,
    install: str,
    *,
    sha: str | None,
    said: str | None = None,
) -> None:
    """The invariants every fault test checks after recovery."""
    invariants.check("no partial tree in any pod", not watch.whole(), "; ".join(watch.whole()[:5]))
    invariants.check("no pod went back to an older commit", not watch.went_back(), "; ".join(watch.went_back()))
    pending: dict[str, int] = {}
    for u in updates(env):
        if (u.get("status") or {}).get("state") == "Pending":
            owner = u["spec"]["pluginInstall"]
            pending[owner] = pending.get(owner, 0) + 1
    invariants.check(
        "at most one Pending PluginUpdate per install", all(n <= 1 for n in pending.values()), str(pending)
    )
    if sha is None:
        return
    status = env.get("pli", install).get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
    held = [(env.marker(d, watch.plugin) or {}).get("sha") for d in watch.dirs]
    invariants.check("every pod holds the commit", held == [sha] * len(held), f"{[str(h)[:8] for h in held]}")
    invariants.check(
        "status says what happened",
        status.get("installedSHA") == sha and ready.get("status") == "True" and not status.get("targetSHA"),
        f"installedSHA={status.get('installedSHA')} targetSHA={status.get('targetSHA')} Ready={ready}",
    )
    if said is not None:
        invariants.check("the message says it", said in json.dumps(status), said)


def big_tree(n: int = 40, kib: int = 256) -> dict[str, str]:
    """Enough bytes that a delivery takes a while."""
    return {f"assets/blob{i:02d}.bin": ("y" * 1023 + "\n") * kib for i in range(n)}


def wait_incoming(
    env: Env, dirs: list[Path], plugin: str, timeout: float = 60, then: Callable[[], None] | None = None
) -> None:
    """Wait until a delivery of `plugin` is being unpacked in some pod (its
    `.incoming@` directory exists) and run `then` at that very moment: a
    tight loop, as a transfer may last well under a second."""
    deadline = time.monotonic() + timeout
    prefix = f".incoming@{plugin}@"
    while time.monotonic() < deadline:
        for d in dirs:
            with contextlib.suppress(OSError):
                if any(name.startswith(prefix) for name in os.listdir(d / "plugins")):
                    if then is not None:
                        then()
                    return
        time.sleep(0.002)
    raise AssertionError(f"no delivery of {plugin} seen in {timeout:.0f}s\n{env.operator.tail(30)}")
