"""`plugin-operator run` starts the operator; `plugin-operator db ...` manages
the Postgres mirror."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plugin_operator.kube.lease import LeaseConfig


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "db":
        from plugin_operator import cli_db

        return cli_db.main(args[1:])
    parser = argparse.ArgumentParser(prog="plugin-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator (kopf) against the current kubeconfig or in-cluster")
    run.add_argument("--namespace", "-n", action="append", default=[], help="watch only these namespaces")
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL")
    run.add_argument("--peering", default=None, help="kopf peering name (default: standalone)")
    run.add_argument(
        "--leader-elect",
        action="store_true",
        help="run only while holding a coordination.k8s.io Lease (several replicas: one active)",
    )
    run.add_argument("--lease-name", default="plugin-operator", help="the Lease's name")
    run.add_argument(
        "--lease-namespace",
        default=None,
        help="the Lease's namespace (default: $POD_NAMESPACE, else the service account's namespace)",
    )
    sub.add_parser("db", help="db upgrade | db check")
    opts = parser.parse_args(args)
    from plugin_operator.config import ConfigError

    try:
        from plugin_operator import main as operator_main

        lease = _lease_config(opts) if opts.leader_elect else None
        return operator_main.run(namespaces=opts.namespace, liveness=opts.liveness, peering=opts.peering, lease=lease)
    except ConfigError as exc:
        print(f"plugin-operator: configuration error: {exc}", file=sys.stderr)
        return 2


def _lease_config(opts: argparse.Namespace) -> LeaseConfig:
    import os
    import socket

    from plugin_operator.config import ConfigError
    from plugin_operator.kube.lease import LeaseConfig

    if opts.peering:
        raise ConfigError("--leader-elect and --peering exclude each other: choose one")
    namespace = opts.lease_namespace or os.environ.get("POD_NAMESPACE")
    if not namespace:
        try:
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
                namespace = f.read().strip()
        except OSError:
            raise ConfigError("--leader-elect needs --lease-namespace or POD_NAMESPACE") from None
    # The pod's name (downward API) identifies the replica; outside a pod,
    # host and process id.
    identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    return LeaseConfig(namespace=namespace, name=opts.lease_name, identity=identity)


if __name__ == "__main__":
    sys.exit(main())
