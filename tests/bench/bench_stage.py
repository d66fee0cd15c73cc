"""Benchmark: staging through the shared content-addressed cache vs one
fetch per install.

Starts the loopback git server with one plugin of about --kib KiB, then
stages it for N installs twice in the same run:

- shared: every install through one `Stager` concurrently (single flight,
  content-addressed cache), as the operator does;
- naive: every install with its own empty cache, eight at a time, as an
  operator without the cache would.

Prints git fetches, wall time and peak Python heap (tracemalloc) for both.
The last line is machine-readable:
RESULT installs=N fetches=... naive_fetches=... speedup=... peak_kib=... naive_peak_kib=... memory_ratio=...
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "operator"))

from localdev.gitserver import GitServer
from plugin_operator.config import Settings
from plugin_operator.domain.source import Source, parse_source
from plugin_operator.git import Resolver
from plugin_operator.staging import Stager


def _seed(server: GitServer, kib: int) -> str:
    files = {"plugin.yaml": "name: big\nversion: 1.0.0\n"}
    chunk = "".join(chr(33 + i % 90) for i in range(1021)) + "\n"  # distinct-ish text, 1 KiB per line block
    for i in range(kib // 16):
        files[f"rules/part{i:04}.md"] = f"# part {i}\n" + chunk * 16
    return server.create_repo("bench", "big", files)


def _settings(server: GitServer, cache: Path) -> Settings:
    return Settings(github_base_url=server.base_url, cache_dir=cache, registry_dir=cache)


async def _shared(server: GitServer, source: Source, sha: str, installs: int, tmp: Path) -> tuple[int, float]:
    settings = _settings(server, tmp / "shared")
    stager = Stager(settings, Resolver(settings))
    started = time.monotonic()
    staged = await asyncio.gather(*(stager.stage(source, sha) for _ in range(installs)))
    assert len({s.digest for s in staged}) == 1
    return stager.fetches, time.monotonic() - started


async def _naive(server: GitServer, source: Source, sha: str, installs: int, tmp: Path) -> tuple[int, float]:
    gate = asyncio.Semaphore(8)
    fetches = 0

    async def one(i: int) -> None:
        nonlocal fetches
        async with gate:
            settings = _settings(server, tmp / f"naive{i}")
            stager = Stager(settings, Resolver(settings))
            await stager.stage(source, sha)
            fetches += stager.fetches

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(installs)))
    return fetches, time.monotonic() - started


def _measured(run: Coroutine[Any, Any, tuple[int, float]]) -> tuple[tuple[int, float], int]:
    tracemalloc.start()
    try:
        result = asyncio.run(run)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--installs", "-n", type=int, default=100, help="installs of the one plugin (N)")
    parser.add_argument("--kib", type=int, default=1024, help="approximate plugin size in KiB")
    args = parser.parse_args()

    with GitServer() as server, tempfile.TemporaryDirectory() as tmp:
        sha = _seed(server, args.kib)
        source = parse_source(f"github://bench/big#{sha}", allow_unpinned=False)
        (fetches, shared_s), peak = _measured(_shared(server, source, sha, args.installs, Path(tmp)))
        print(
            f"shared stager: {args.installs} installs, {fetches} fetches, {shared_s:.2f}s, peak heap {peak >> 10} KiB"
        )
        (naive_fetches, naive_s), naive_peak = _measured(_naive(server, source, sha, args.installs, Path(tmp)))
        print(
            f"naive:         {args.installs} installs, {naive_fetches} fetches, {naive_s:.2f}s, "
            f"peak heap {naive_peak >> 10} KiB"
        )
    print(
        f"RESULT installs={args.installs} fetches={fetches} naive_fetches={naive_fetches} "
        f"speedup={naive_s / max(shared_s, 1e-9):.1f} peak_kib={peak >> 10} naive_peak_kib={naive_peak >> 10} "
        f"memory_ratio={naive_peak / max(peak, 1):.1f}"
    )


if __name__ == "__main__":
    main()
