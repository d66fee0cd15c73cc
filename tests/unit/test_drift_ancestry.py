"""The sweep's git side of "Trust" item 2 against the loopback git server:
the ancestry check (fast-forward or force-push; any failure counts as "not
proven") and the install's resolution agreeing with the track."""

from __future__ import annotations

from pathlib import Path

import pytest

from localdev.gitserver import GitServer
from plugin_operator.domain.source import Source, parse_source
from plugin_operator.domain.track import parse_track
from plugin_operator.git import Resolver
from tests.fixtures.gitserver import git_settings

pytestmark = pytest.mark.git

PLUGIN = {"plugin.yaml": "name: hello\n"}


def src(owner: str, rest: str) -> Source:
    return parse_source(f"github://{owner}/{rest}", allow_unpinned=True)


@pytest.fixture
def resolver(git_server: GitServer, tmp_path: Path) -> Resolver:
    return Resolver(git_settings(git_server.base_url, tmp_path))


async def test_fast_forward_force_push_and_failures(git_server: GitServer, git_owner: str, resolver: Resolver) -> None:
    first = git_server.create_repo(git_owner, "hello", PLUGIN)
    second = git_server.commit(git_owner, "hello", {**PLUGIN, "a": "2"})
    third = git_server.commit(git_owner, "hello", {**PLUGIN, "a": "3"})
    source = src(git_owner, "hello#main")
    ancestry = resolver.ancestry
    assert await ancestry.contains(source, third, first) is True
    assert await ancestry.contains(source, second, second) is True
    forced = git_server.force_push(git_owner, "hello", {**PLUGIN, "a": "rewritten"})
    assert await ancestry.contains(source, forced, third) is False
    assert await ancestry.contains(source, third, forced) is False
    # Unknown commit, missing repository: not proven.
    assert await ancestry.contains(source, "f" * 40, first) is None
    assert await ancestry.contains(src(git_owner, "nope#main"), third, first) is None
    # Facts about immutable commits are remembered; failures are not.
    checks = ancestry.checks
    assert await ancestry.contains(source, third, first) is True
    assert ancestry.checks == checks
    assert not list((resolver.settings.cache_dir / "ancestry").iterdir()), "scratch repositories are removed"


async def test_an_unreachable_host_is_not_proof(blackhole_url: str, tmp_path: Path) -> None:
    resolver = Resolver(git_settings(blackhole_url, tmp_path, fetch_timeout=2.0))
    assert await resolver.ancestry.contains(src("acme", "x#main"), "a" * 40, "b" * 40) is None


async def test_the_install_reads_the_fragment_the_way_the_track_follows_it(
    git_server: GitServer, git_owner: str, resolver: Resolver
) -> None:
    tagged = git_server.create_repo(git_owner, "hello", PLUGIN)
    git_server.tag(git_owner, "hello", "stable", tagged, annotated=True)
    branch = git_server.commit(git_owner, "hello", {**PLUGIN, "b": "1"}, branch="stable", parent=tagged)
    source = src(git_owner, "hello#stable")
    by_tag = await resolver.resolve_install(source, parse_track("tag:stable", source))
    assert (by_tag.sha, by_tag.ref_name) == (tagged, "refs/tags/stable")
    by_name = await resolver.resolve_install(source, parse_track(None, source))
    assert (by_name.sha, by_name.ref_name) == (branch, "refs/heads/stable")
    pinned = src(git_owner, f"hello#{tagged}")
    assert (await resolver.resolve_install(pinned, parse_track(None, pinned))).sha == tagged
