"""`make demo`: the whole flow on this machine, nothing to install by hand.

Starts a local control plane (etcd, kube-apiserver, controller-manager, kwok),
PostgreSQL, a loopback git server holding a demo plugin, the operator, and a
demo workspace StatefulSet; applies a PluginInstall, waits until it is Ready,
then publishes v1.1.0 upstream and asks for a sweep, so a pending
PluginUpdate waits for approval; prints kubectl commands to look around
(and to approve) and keeps running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from localdev.cluster import LocalCluster
from localdev.gitserver import GitServer
from localdev.operator_process import OperatorProcess
from localdev.postgres import PostgresServer
from localdev.workspace import plugin_install, statefulset

WORKSPACE = "6f1c2a7e-0000-4000-8000-000000000001"
DEMO_FILES = {
    "plugin.yaml": "name: hello-plugin\nversion: 1.0.0\ndescription: A demo plugin\nskills:\n  - name: greet\n",
    "rules/hello.md": "# Hello\nBe kind to the user.\n",
    "skills/greet/SKILL.md": "Greet the user by name.\n",
}


def _stop_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _await_pending(kube: LocalCluster, update: str, timeout: float = 60) -> None:
    """`kubectl wait` fails at once on an object not created yet, so poll."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = kube.kubectl("get", "plu", "-n", "demo", "-o", "json").stdout
        if any(
            u["metadata"]["name"] == update and (u.get("status") or {}).get("state") == "Pending"
            for u in json.loads(found)["items"]
        ):
            return
        time.sleep(0.5)
    raise SystemExit(f"no pending PluginUpdate {update} after {timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exit", action="store_true", help="tear down once the update is pending (no Ctrl-C wait)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="plugin-operator-demo-")))
        print("starting the local control plane ...", flush=True)
        kube = stack.enter_context(LocalCluster.start())
        print("starting PostgreSQL ...", flush=True)
        pg = stack.enter_context(PostgresServer())
        git = stack.enter_context(GitServer())
        sha = git.create_repo("demo", "hello-plugin", DEMO_FILES)
        git.tag("demo", "hello-plugin", "v1.0.0", sha, annotated=True)

        subprocess_env = {
            "GITHUB_BASE_URL": git.base_url,
            "PLUGIN_REGISTRY_DIR": str(work / "registry"),
            "DATABASE_URL": pg.url,
            "DRIFT_SWEEP_INTERVAL": "60s",
        }
        subprocess.run(
            [sys.executable, "-m", "plugin_operator", "db", "upgrade"],
            env={**os.environ, "DATABASE_URL": pg.url},
            check=True,
        )
        print("starting the operator ...", flush=True)
        operator = stack.enter_context(OperatorProcess.running(kube, work, subprocess_env))

        kube.kubectl("create", "namespace", "demo")
        configs = work / "configs"
        kube.kubectl(
            "apply", "-f", "-", input=json.dumps(statefulset("workspace", "demo", WORKSPACE, configs, kube.node_name))
        )
        kube.kubectl("rollout", "status", "statefulset/workspace", "-n", "demo", "--timeout=60s")
        install = plugin_install(
            "hello-plugin", "demo", WORKSPACE, "github://demo/hello-plugin#v1.0.0", track="tag:latest"
        )
        kube.kubectl("apply", "-f", "-", input=json.dumps(install))
        print("waiting for the PluginInstall to become Ready ...", flush=True)
        kube.kubectl("wait", "--for=condition=Ready", "pli/hello-plugin", "-n", "demo", "--timeout=90s", timeout=100)

        print(kube.kubectl("get", "pli", "-n", "demo").stdout)

        print("publishing v1.1.0 upstream and asking for a sweep ...", flush=True)
        newer = git.commit(
            "demo", "hello-plugin", {**DEMO_FILES, "plugin.yaml": DEMO_FILES["plugin.yaml"].replace("1.0.0", "1.1.0")}
        )
        git.tag("demo", "hello-plugin", "v1.1.0", newer, annotated=True)
        kube.kubectl("annotate", "pli/hello-plugin", "-n", "demo", f"plugins.workspace.dev/resolve={time.time():.0f}")
        update = f"hello-plugin-{newer[:12]}"
        _await_pending(kube, update)
        print(kube.kubectl("get", "plu", "-n", "demo").stdout)
        print(
            f"""
The demo is running. In another shell:

  export KUBECONFIG={kube.kubeconfig} PATH={kube.bin_dir}:$PATH
  kubectl get pli -n demo                       # installs: WORKSPACE PLUGIN SOURCE TRACK INSTALLED READY UPDATE
  kubectl describe pli hello-plugin -n demo     # conditions and events
  kubectl explain plugininstall.spec.track      # the API documents itself
  ls -R {configs}/workspace-0/plugins           # what landed in the workspace pod
  kubectl get pluginupdates -n demo             # v1.1.0 waits for approval
  kubectl patch plu {update} -n demo --type=merge -p '{{"spec":{{"approved":true}}}}'
  psql '{pg.url.replace("+psycopg", "")}' -c 'table workspace_plugins'

The operator's log: {operator.log}
Press Ctrl-C to stop; everything started here is torn down.
""",
            flush=True,
        )
        if args.exit:
            return 0
        try:
            while operator.popen is not None and operator.popen.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            print("\nstopping ...", flush=True)
            return 0
        print(f"the operator exited; log: {operator.log}\n{operator.tail()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
