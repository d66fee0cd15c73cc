"""`plugin-operator db upgrade|check`: the mirror's schema and a consistency check.

    db upgrade   create or complete the mirror tables (Alembic, idempotent)
    db check     compare the tables with the PluginInstalls and PluginUpdates
                 of every namespace; exit 1 with the differences, 0 "in sync"

The database is DATABASE_URL (or --database-url); the cluster is the current
kubeconfig context, or the in-cluster config in a pod.
Exit status: 0 ok / in sync, 1 differences, 2 cannot check (configuration,
database or cluster unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from plugin_operator.domain.mirror_rows import rows_from_objects
from plugin_operator.domain.redact import redact
from plugin_operator.mirror import Mirror
from plugin_operator.mirror.urls import safe_url

EXIT_OK, EXIT_DIFFERENT, EXIT_CANNOT_CHECK = 0, 1, 2


def compare(
    mirror: Mirror, installs: Sequence[Mapping[str, Any]], updates: Sequence[Mapping[str, Any]]
) -> tuple[list[str], list[str]]:
    """(differences, notes) between the tables and the given cluster objects.
    Notes name objects that cannot have a row (e.g. a workspace that is not a UUID)."""
    desired = rows_from_objects(installs, updates)
    return mirror.diff(desired.installs.values(), desired.updates.values()), list(desired.skipped)


def report(differences: Sequence[str], notes: Sequence[str], out: TextIO, err: TextIO) -> int:
    for note in notes:
        print(f"note: not mirrored: {note}", file=err)
    if differences:
        print(f"out of sync ({len(differences)} difference(s)):", file=out)
        for line in differences:
            print(f"  {line}", file=out)
        return EXIT_DIFFERENT
    print("in sync", file=out)
    return EXIT_OK


def list_cluster_objects() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All PluginInstalls and PluginUpdates, every namespace."""
    from plugin_operator.kube.api import INSTALLS, UPDATES, Kube, load_config

    load_config()
    kube = Kube()

    async def both() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return await kube.list(INSTALLS), await kube.list(UPDATES)

    return asyncio.run(both())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plugin-operator db", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="default: $DATABASE_URL")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("upgrade", help="create or complete the mirror tables")
    commands.add_parser("check", help="compare the tables with the cluster")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point; `argv` excludes the program name and may start with "db"."""
    out, err = out or sys.stdout, err or sys.stderr
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["db"]:
        args_in = args_in[1:]
    args = _parser().parse_args(args_in)
    url = args.database_url or os.environ.get("DATABASE_URL")
    if not url:
        print("error: DATABASE_URL is not set (or pass --database-url)", file=err)
        return EXIT_CANNOT_CHECK
    from sqlalchemy.exc import SQLAlchemyError

    from plugin_operator.config import ConfigError, parse_database_url

    try:
        parse_database_url(url)
    except ConfigError as exc:  # names DATABASE_URL, never shows the password
        print(f"error: {exc}", file=err)
        return EXIT_CANNOT_CHECK
    try:
        mirror = Mirror(url)
    except Exception as exc:  # not a URL SQLAlchemy can read
        print(f"error: DATABASE_URL {safe_url(url)} is not usable: {redact(str(exc))}", file=err)
        return EXIT_CANNOT_CHECK
    try:
        if args.command == "upgrade":
            mirror.upgrade()
            print(f"mirror tables up to date in {safe_url(mirror.url)}", file=out)
            return EXIT_OK
        try:
            installs, updates = list_cluster_objects()
        except Exception as exc:
            print(f"error: listing PluginInstalls and PluginUpdates failed: {redact(str(exc))}", file=err)
            return EXIT_CANNOT_CHECK
        return report(*compare(mirror, installs, updates), out=out, err=err)
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        print(f"error: database {safe_url(mirror.url)}: {redact(first)}", file=err)
        return EXIT_CANNOT_CHECK
    finally:
        mirror.close()


if __name__ == "__main__":
    sys.exit(main())
