"""The operator as a child process (`python -m plugin_operator run`), the way
it runs in a pod, pointed at a local cluster. Tests kill and restart it."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from localdev.cluster import ClusterError, LocalCluster, free_port, stop_process_group


class OperatorProcess:
    def __init__(
        self,
        cluster: LocalCluster,
        workdir: Path,
        env: Mapping[str, str],
        *,
        namespaces: list[str] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.namespaces = namespaces or []
        self.args = list(args or [])  # e.g. ["--leader-elect", "--lease-namespace=ns"]
        self.workdir = workdir
        self.extra_env = dict(env)
        self.log = workdir / "operator.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.health_port = 0
        self.metrics_port = 0

    def start(self) -> None:
        self.health_port = free_port()
        self.metrics_port = free_port()
        env = {
            **self.cluster.env(),
            "PLUGIN_CACHE_DIR": str(self.workdir / "cache"),
            "PLUGIN_METRICS_PORT": str(self.metrics_port),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "plugin_operator",
                    "run",
                    f"--liveness=http://127.0.0.1:{self.health_port}/healthz",
                    *(f"--namespace={ns}" for ns in self.namespaces),
                    *self.args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        import urllib.request

        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ClusterError(f"the operator exited with {self.popen.returncode}; log: {self.log}\n{self.tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1):
                    return
            time.sleep(0.2)
        raise ClusterError(f"the operator did not become live in 60s; log: {self.log}\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.popen is not None:
            stop_process_group(self.popen, sig, timeout)

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_exit(self, timeout: float) -> int | None:
        """The exit status once the process ends (a test crash point), or None."""
        if self.popen is None:
            return None
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL, as a crashed or evicted operator pod."""
        self.stop(signal.SIGKILL)

    def metrics(self) -> dict[str, float]:
        """The operator's Prometheus metrics, as {'name{labels}': value}."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        found = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                found[key] = float(value)
        return found

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    @classmethod
    @contextlib.contextmanager
    def running(
        cls, cluster: LocalCluster, workdir: Path, env: Mapping[str, str], *, namespaces: list[str] | None = None
    ) -> Iterator[OperatorProcess]:
        proc = cls(cluster, workdir, env, namespaces=namespaces)
        proc.start()
        try:
            yield proc
        finally:
            proc.stop()
