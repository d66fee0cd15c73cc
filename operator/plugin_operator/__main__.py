"""`plugin-operator run` starts the operator; `plugin-operator db ...` manages
the Postgres mirror."""

from __future__ import annotations

import argparse
import sys


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
    sub.add_parser("db", help="db upgrade | db check")
    opts = parser.parse_args(args)
    from plugin_operator.config import ConfigError

    try:
        from plugin_operator import main as operator_main

        return operator_main.run(namespaces=opts.namespace, liveness=opts.liveness, peering=opts.peering)
    except ConfigError as exc:
        print(f"plugin-operator: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
