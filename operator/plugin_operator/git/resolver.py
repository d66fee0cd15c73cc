"""Shared upstream resolution (design §3 Resolution, §6).

One `Resolver` per operator process. For each repository URL it runs at most
one `git ls-remote` at a time (concurrent callers share it: single flight),
keeps the answer for `resolve_cache_ttl`, backs off exponentially after
failures (callers fail fast meanwhile), and bounds concurrency per host, so a
slow or dead host only ever holds its own slots. After `host_trip_after`
consecutive network failures on one host (no success in between), every
repository on that host fails fast until the host's own backoff expires, so
a dead host with many repositories costs one timeout per backoff period,
not one per repository.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from plugin_operator.concurrency import SingleFlight
from plugin_operator.config import Settings
from plugin_operator.domain.errors import PluginError, RepositoryNotFound, SourceUnreachable
from plugin_operator.domain.refs import RefTable, Resolved, resolve_install_ref, resolve_source_ref, select
from plugin_operator.domain.source import Source
from plugin_operator.domain.track import Track
from plugin_operator.git.ancestry import Ancestry
from plugin_operator.git.runner import GitError, GitRunner, GitTimeout, map_git_error, scrub


@dataclass
class _Failure:
    error: PluginError
    retry_at: float
    count: int


class Resolver:
    def __init__(
        self,
        settings: Settings,
        runner: GitRunner | None = None,
        *,
        backoff_base: float = 2.0,
        backoff_max: float = 300.0,
        host_trip_after: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.runner = runner or GitRunner(settings)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.host_trip_after = host_trip_after
        self._clock = clock
        self._cache: dict[str, tuple[float, RefTable]] = {}
        self._failures: dict[str, _Failure] = {}
        self._flights: SingleFlight[str, RefTable] = SingleFlight()
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._host_failures: dict[str, _Failure] = {}
        self.git_calls = 0  # `git ls-remote` commands started
        # Fast-forward or force-push? (the drift sweep's ancestry checks)
        self.ancestry = Ancestry(self.runner, workdir=settings.cache_dir / "ancestry", timeout=settings.fetch_timeout)

    async def ref_table(self, source: Source) -> RefTable:
        """Every branch and tag of the source's repository."""
        if source.kind != "github" or source.owner is None or source.repo is None:
            raise ValueError(f"{source.normalized} has no upstream repository")
        url = self.runner.repo_url(source.owner, source.repo)
        return await self.ls_remote(url, label=source.repo_key)

    async def resolve(self, source: Source, track: Track | str | None = None) -> Resolved:
        """The commit `track` (or, when None / 'none', the source's own `#ref`) points at."""
        if source.kind != "github":
            raise ValueError(f"{source.normalized} has no upstream repository")
        if track is None or (isinstance(track, Track) and track.kind == "none"):
            if source.pinned_sha is not None:  # nothing to ask upstream
                return Resolved(source.pinned_sha, None)
            return resolve_source_ref(source, await self.ref_table(source))
        if isinstance(track, Track) and track.kind == "sha":
            return select(track, RefTable(label=source.repo_key or source.name))
        return select(track, await self.ref_table(source))

    async def resolve_install(self, source: Source, track: Track) -> Resolved:
        """The commit an install starts from: the source's fragment read the
        way the track follows it (domain.refs.resolve_install_ref), so the
        install and the sweep agree on the ref. A pinned commit asks nothing
        upstream."""
        if source.kind != "github":
            raise ValueError(f"{source.normalized} has no upstream repository")
        if source.pinned_sha is not None:
            return Resolved(source.pinned_sha, None)
        return resolve_install_ref(source, track, await self.ref_table(source))

    async def ls_remote(self, url: str, *, label: str | None = None) -> RefTable:
        """The ref table at `url`, shared by concurrent callers and cached."""
        label = label or scrub(url)
        now = self._clock()
        cached = self._cache.get(url)
        if cached is not None and cached[0] > now:
            return cached[1]
        failure = self._failures.get(url)
        if failure is not None and failure.retry_at > now:
            raise _fail_fast(failure, now)
        host_failure = self._host_failures.get(_host_of(url))
        if host_failure is not None and host_failure.count >= self.host_trip_after and host_failure.retry_at > now:
            raise _fail_fast(host_failure, now)
        return await self._flights.run(url, lambda: self._ls_remote(url, label))

    def _host(self, url: str) -> asyncio.Semaphore:
        host = _host_of(url)
        semaphore = self._hosts.get(host)
        if semaphore is None:
            semaphore = self._hosts[host] = asyncio.Semaphore(self.settings.per_host_concurrency)
        return semaphore

    async def _ls_remote(self, url: str, label: str) -> RefTable:
        async with self._host(url):
            self.git_calls += 1
            try:
                result = await self.runner.run(
                    ["ls-remote", "--symref", "--end-of-options", url],
                    timeout=self.settings.resolve_timeout,
                )
            except (GitError, GitTimeout) as exc:
                error = map_git_error(exc, label)
                self._record_failure(url, error)
                raise error from None
        table = RefTable.parse(result.stdout.decode("utf-8", "replace"), label=label)
        self._failures.pop(url, None)
        self._host_failures.pop(_host_of(url), None)
        self._cache[url] = (self._clock() + self.settings.resolve_cache_ttl, table)
        return table

    def _record_failure(self, url: str, error: Exception) -> None:
        if not isinstance(error, PluginError):
            return
        previous = self._failures.get(url)
        count = previous.count + 1 if previous else 1
        if isinstance(error, SourceUnreachable):
            delay = min(self.backoff_base * 2 ** (count - 1), self.backoff_max)
            host = _host_of(url)
            seen = self._host_failures.get(host)
            host_count = seen.count + 1 if seen else 1
            host_delay = min(self.backoff_base * 2 ** max(host_count - self.host_trip_after, 0), self.backoff_max)
            message = f"host {host} is failing: {error.message}"
            self._host_failures[host] = _Failure(SourceUnreachable(message), self._clock() + host_delay, host_count)
        else:  # not found and the like: permanent, remembered like a cached answer
            delay = self.settings.resolve_cache_ttl
        self._failures[url] = _Failure(error, self._clock() + delay, count)

    def forget(self, source: Source | None = None) -> None:
        """Drop cached answers and backoff (all, or one repository's): for
        an explicit resolve request."""
        if source is None:
            self._cache.clear()
            self._failures.clear()
            self._host_failures.clear()
            return
        if source.owner and source.repo:
            url = self.runner.repo_url(source.owner, source.repo)
            self._cache.pop(url, None)
            self._failures.pop(url, None)


def _host_of(url: str) -> str:
    return urlsplit(url).netloc.rpartition("@")[2] or "local"


def _fail_fast(failure: _Failure, now: float) -> PluginError:
    if isinstance(failure.error, SourceUnreachable):
        wait = failure.retry_at - now
        return SourceUnreachable(
            f"{failure.error.message} (failed {failure.count} time(s); next attempt in {wait:.0f}s)"
        )
    if isinstance(failure.error, RepositoryNotFound):
        return RepositoryNotFound(failure.error.message)
    return failure.error
