"""Benchmark: shared resolution vs one `git ls-remote` per install.

Starts the loopback git server, creates M repositories, then resolves N
installs spread over them twice in the same run:

- shared: every install through one `Resolver` concurrently (single flight,
  per-host concurrency, cache), as a drift sweep does;
- naive: a loop running one `git ls-remote` per install.

The last line is machine-readable:
RESULT installs=N repos=M git_calls=... naive_git_calls=... speedup=...
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "operator"))

from localdev.gitserver import GitServer
from plugin_operator.config import Settings
from plugin_operator.domain.source import parse_source
from plugin_operator.domain.track import parse_track
from plugin_operator.git import Resolver


def _seed(server: GitServer, repos: int) -> list[str]:
    names = []
    for i in range(repos):
        name = f"plugin{i}"
        sha = server.create_repo("bench", name, {"plugin.yaml": f"name: {name}\n"})
        for minor in range(3):
            server.tag("bench", name, f"v1.{minor}.0", sha, annotated=minor % 2 == 0)
        names.append(name)
    return names


async def _shared(server: GitServer, names: list[str], installs: int, cache_dir: Path) -> tuple[int, float]:
    settings = Settings(github_base_url=server.base_url, cache_dir=cache_dir, registry_dir=cache_dir)
    resolver = Resolver(settings)
    tracks = ("ref:main", "tag:latest", "semver:^1.1", "tag:v1.0.0")
    jobs = []
    for i in range(installs):
        source = parse_source(f"github://bench/{names[i % len(names)]}#main", allow_unpinned=False)
        jobs.append(resolver.resolve(source, parse_track(tracks[i % len(tracks)], source)))
    started = time.monotonic()
    await asyncio.gather(*jobs)
    return resolver.git_calls, time.monotonic() - started


def _naive(server: GitServer, names: list[str], installs: int) -> tuple[int, float]:
    started = time.monotonic()
    for i in range(installs):
        subprocess.run(
            ["git", "ls-remote", "--end-of-options", server.url("bench", names[i % len(names)])],
            check=True,
            capture_output=True,
        )
    return installs, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--installs", "-n", type=int, default=200, help="installs to resolve (N)")
    parser.add_argument("--repos", "-m", type=int, default=10, help="repositories they spread over (M)")
    args = parser.parse_args()

    with GitServer() as server, tempfile.TemporaryDirectory() as tmp:
        names = _seed(server, args.repos)
        git_calls, shared_s = asyncio.run(_shared(server, names, args.installs, Path(tmp)))
        print(f"shared resolver: {args.installs} installs, {git_calls} git calls, {shared_s:.2f}s")
        naive_calls, naive_s = _naive(server, names, args.installs)
        print(f"naive loop:      {args.installs} installs, {naive_calls} git calls, {naive_s:.2f}s")
    speedup = naive_s / shared_s if shared_s > 0 else float("inf")
    print(
        f"RESULT installs={args.installs} repos={args.repos} git_calls={git_calls} "
        f"naive_git_calls={naive_calls} speedup={speedup:.1f}"
    )


if __name__ == "__main__":
    main()
