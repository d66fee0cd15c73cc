"""Upstream resolution against the real loopback git server (design §3, §6, §8)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from localdev.gitserver import GitServer
from plugin_operator.domain.errors import InvalidSource, RefNotFound, RepositoryNotFound, SourceUnreachable
from plugin_operator.domain.source import Source, parse_source
from plugin_operator.domain.track import parse_track
from plugin_operator.git import GitRunner, Resolver
from tests.fixtures.gitserver import git_settings

pytestmark = pytest.mark.git

PLUGIN = {"plugin.yaml": "name: hello\n", "rules/a.md": "# A\n"}


def src(owner: str, rest: str) -> Source:
    return parse_source(f"github://{owner}/{rest}", allow_unpinned=True)


@pytest.fixture
def resolver(git_server: GitServer, tmp_path: Path) -> Resolver:
    return Resolver(git_settings(git_server.base_url, tmp_path))


async def test_branches_and_both_kinds_of_tags(git_server: GitServer, git_owner: str, resolver: Resolver) -> None:
    first = git_server.create_repo(git_owner, "hello", PLUGIN)
    second = git_server.commit(git_owner, "hello", {**PLUGIN, "rules/b.md": "B"})
    git_server.branch(git_owner, "hello", "stable", first)
    git_server.tag(git_owner, "hello", "light", first)
    git_server.tag(git_owner, "hello", "heavy", first, annotated=True)

    assert (await resolver.resolve(src(git_owner, "hello#main"))).sha == second
    assert (await resolver.resolve(src(git_owner, "hello#stable"))).sha == first
    assert (await resolver.resolve(src(git_owner, "hello#light"))).ref_name == "refs/tags/light"
    heavy = await resolver.resolve(src(git_owner, "hello#heavy"))
    assert heavy.sha == first  # peeled: the commit, not the tag object
    assert (await resolver.resolve(src(git_owner, "hello"))).sha == second  # unpinned: HEAD
    assert resolver.git_calls == 1


async def test_semver_tracks_ignore_non_semver_tags(git_server: GitServer, git_owner: str, resolver: Resolver) -> None:
    git_server.create_repo(git_owner, "hello", PLUGIN)
    shas = {}
    for tag in ("v1.0.0", "v1.4.2", "v2.0.0-rc.1", "latest", "release-9", "v1.10.0"):
        shas[tag] = git_server.commit(git_owner, "hello", PLUGIN, message=tag)
        git_server.tag(git_owner, "hello", tag, shas[tag], annotated=tag.endswith("2"))
    source = src(git_owner, "hello#main")
    latest = await resolver.resolve(source, parse_track("tag:latest", source))
    assert (latest.ref_name, latest.sha) == ("refs/tags/v1.10.0", shas["v1.10.0"])
    ranged = await resolver.resolve(source, parse_track("semver:~1.4", source))
    assert ranged.sha == shas["v1.4.2"]
    with pytest.raises(RefNotFound, match="within"):
        await resolver.resolve(source, parse_track("semver:^3", source))


async def test_a_moved_tag_and_a_force_pushed_branch_are_seen_after_the_cache_expires(
    git_server: GitServer, git_owner: str, tmp_path: Path
) -> None:
    now = [0.0]
    resolver = Resolver(git_settings(git_server.base_url, tmp_path), clock=lambda: now[0])
    old = git_server.create_repo(git_owner, "hello", PLUGIN)
    git_server.tag(git_owner, "hello", "v1.0.0", old, annotated=True)
    source = src(git_owner, "hello#main")
    tag_track = parse_track("tag:v1.0.0", source)
    assert (await resolver.resolve(source, tag_track)).sha == old

    rewritten = git_server.force_push(git_owner, "hello", {**PLUGIN, "evil.md": "x"})
    git_server.move_tag(git_owner, "hello", "v1.0.0", rewritten, annotated=True)
    assert (await resolver.resolve(source, tag_track)).sha == old  # still cached
    now[0] += resolver.settings.resolve_cache_ttl + 1
    assert (await resolver.resolve(source, tag_track)).sha == rewritten
    assert (await resolver.resolve(source)).sha == rewritten
    assert old not in git_server.git(git_owner, "hello", "rev-list", rewritten)  # history rewritten
    assert resolver.git_calls == 2


async def test_plugins_in_subdirectories_of_one_repo_share_one_ls_remote(
    git_server: GitServer, git_owner: str, resolver: Resolver
) -> None:
    sha = git_server.create_repo(
        git_owner,
        "plugins",
        {"a/plugin.yaml": "name: a\n", "b/plugin.yaml": "name: b\n", "tools/c/plugin.yaml": "name: c\n"},
    )
    sources = [src(git_owner, f"plugins/{sub}#main") for sub in ("a", "b", "tools/c")]
    results = await asyncio.gather(*(resolver.resolve(s) for s in sources * 20))
    assert {r.sha for r in results} == {sha}
    assert resolver.git_calls == 1


async def test_single_flight_one_git_call_for_many_concurrent_resolves(
    git_server: GitServer, git_owner: str, resolver: Resolver
) -> None:
    sha = git_server.create_repo(git_owner, "hello", PLUGIN)
    before = resolver.runner.calls
    results = await asyncio.gather(*(resolver.resolve(src(git_owner, "hello#main")) for _ in range(200)))
    assert {r.sha for r in results} == {sha}
    assert resolver.git_calls == 1
    assert resolver.runner.calls - before == 1


async def test_unknown_repository_and_unknown_ref(git_server: GitServer, git_owner: str, resolver: Resolver) -> None:
    with pytest.raises(RepositoryNotFound, match=f"{git_owner}/missing"):
        await resolver.resolve(src(git_owner, "missing#main"))
    git_server.create_repo(git_owner, "hello", PLUGIN)
    with pytest.raises(RefNotFound, match=r"no branch or tag named 'nope'.*branches: main"):
        await resolver.resolve(src(git_owner, "hello#nope"))


async def test_a_blackhole_times_out_fast_and_never_delays_another_host(
    git_server: GitServer, git_owner: str, blackhole_url: str, tmp_path: Path
) -> None:
    git_server.create_repo(git_owner, "hello", PLUGIN)
    resolver = Resolver(
        git_settings(git_server.base_url, tmp_path, resolve_timeout=1.5, per_host_concurrency=1), backoff_base=30
    )
    good_url = git_server.url(git_owner, "hello")
    dead_urls = [f"{blackhole_url}/{git_owner}/r{i}.git" for i in range(3)]

    async def timed(url: str) -> float:
        started = time.monotonic()
        await resolver.ls_remote(url)
        return time.monotonic() - started

    dead = [asyncio.ensure_future(timed(url)) for url in dead_urls]
    await asyncio.sleep(0.1)  # the dead host now holds its only slot
    good_elapsed = await timed(good_url)
    assert good_elapsed < 1.0
    started = time.monotonic()
    for outcome in await asyncio.gather(*dead, return_exceptions=True):
        assert isinstance(outcome, SourceUnreachable)
        assert "timed out" in outcome.message
    # Three calls, one slot on the dead host: serialised, each bounded by the timeout.
    assert time.monotonic() - started < 3 * 1.5 + 2

    # Backoff: the next call fails fast and says when it retries.
    started = time.monotonic()
    with pytest.raises(SourceUnreachable, match=r"next attempt in \d+s"):
        await resolver.ls_remote(dead_urls[0])
    # Three network failures in a row trip the host: its other repositories fail fast too.
    with pytest.raises(SourceUnreachable, match=r"host 127\.0\.0\.1:\d+ is failing"):
        await resolver.ls_remote(f"{blackhole_url}/{git_owner}/never-tried.git")
    assert time.monotonic() - started < 0.1
    assert resolver.git_calls == 4  # three dead + one good; the fail-fast calls ran no git


async def test_a_timeout_kills_the_whole_process_group(blackhole_url: str, tmp_path: Path) -> None:
    resolver = Resolver(git_settings(blackhole_url, tmp_path, resolve_timeout=1.0))
    port = blackhole_url.rsplit(":", 1)[1]
    marker = f"pgkill{os.getpid()}"
    with pytest.raises(SourceUnreachable, match="timed out"):
        await resolver.ls_remote(f"{blackhole_url}/{marker}/repo.git")
    await asyncio.sleep(0.2)
    assert _processes_mentioning(marker) == [], f"orphan git processes on port {port}"


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


async def test_option_shaped_values_never_reach_git_as_options(
    git_server: GitServer, git_owner: str, tmp_path: Path
) -> None:
    sentinel = tmp_path / "sentinel"
    for raw in (
        f"github://--upload-pack=touch {sentinel}/x#main",
        f"github://{git_owner}/x#--upload-pack=touch {sentinel}",
        f"--upload-pack=touch {sentinel}",
        f"github://{git_owner}/--upload-pack=touch#main",
    ):
        with pytest.raises(InvalidSource):
            parse_source(raw, allow_unpinned=True)
    # Below the grammar, the runner still ends options before the URL.
    resolver = Resolver(git_settings(git_server.base_url, tmp_path))
    with pytest.raises((RepositoryNotFound, SourceUnreachable)):
        await resolver.ls_remote(f"--upload-pack=touch {sentinel}")
    runner = GitRunner(resolver.settings)
    with pytest.raises(Exception, match="exited"):
        await runner.run(["ls-remote", "--end-of-options", f"--upload-pack=touch {sentinel}"], timeout=10)
    assert not sentinel.exists()


async def test_protocols_other_than_the_base_urls_are_refused(
    git_server: GitServer, git_owner: str, tmp_path: Path
) -> None:
    git_server.create_repo(git_owner, "hello", PLUGIN)
    resolver = Resolver(git_settings(git_server.base_url, tmp_path))
    with pytest.raises((RepositoryNotFound, SourceUnreachable)):
        await resolver.ls_remote(f"file://{git_server.path(git_owner, 'hello')}")
    with pytest.raises((RepositoryNotFound, SourceUnreachable)):
        await resolver.ls_remote(f"ext::sh -c touch% {tmp_path}/ext")
    assert not (tmp_path / "ext").exists()
