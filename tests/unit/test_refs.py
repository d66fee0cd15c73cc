"""Ref tables from `git ls-remote`, exact matching, semver selection."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugin_operator.domain.errors import InvalidTrack, RefNotFound
from plugin_operator.domain.refs import RefTable, resolve_source_ref, select
from plugin_operator.domain.semver import SemverRange, Version
from plugin_operator.domain.source import parse_source
from plugin_operator.domain.track import parse_track


def sha(n: int) -> str:
    return f"{n:040x}"


LS_REMOTE = "\n".join(
    [
        "ref: refs/heads/main\tHEAD",
        f"{sha(1)}\tHEAD",
        f"{sha(1)}\trefs/heads/main",
        f"{sha(2)}\trefs/heads/feature/main",
        f"{sha(3)}\trefs/heads/both",
        f"{sha(4)}\trefs/tags/both",
        f"{sha(10)}\trefs/tags/v1.0.0",
        f"{sha(11)}\trefs/tags/v1.2.0",  # annotated: the tag object …
        f"{sha(12)}\trefs/tags/v1.2.0^{{}}",  # … peeled to its commit
        f"{sha(13)}\trefs/tags/v1.10.0",
        f"{sha(14)}\trefs/tags/v2.0.0-rc.1",
        f"{sha(15)}\trefs/tags/nightly",
        f"{sha(16)}\trefs/tags/1.9.0",
        f"{sha(17)}\trefs/pull/1/head",
    ]
)
TABLE = RefTable.parse(LS_REMOTE, label="acme/hello")
SOURCE = parse_source("github://acme/hello#main", allow_unpinned=False)


def test_parse_peels_annotated_tags_and_ignores_other_refs() -> None:
    assert TABLE.head == sha(1)
    assert TABLE.tags["v1.2.0"] == sha(12)
    assert TABLE.tags["v1.0.0"] == sha(10)
    assert "pull/1/head" not in TABLE.heads and "pull/1/head" not in TABLE.tags


def test_a_name_matches_exactly_never_a_suffix() -> None:
    resolved = select("main", TABLE)
    assert (resolved.sha, resolved.ref_name) == (sha(1), "refs/heads/main")
    with pytest.raises(RefNotFound, match=r"no branch or tag named 'ain' in acme/hello \(branches:"):
        select("ain", TABLE)
    assert select("feature/main", TABLE).sha == sha(2)


def test_branch_wins_over_a_tag_of_the_same_name_and_says_so() -> None:
    resolved = select(parse_track("ref:both", SOURCE), TABLE)
    assert resolved.sha == sha(3)
    assert resolved.note is not None and "refs/heads/both" in resolved.note


def test_tag_track_only_looks_at_tags() -> None:
    assert select(parse_track("tag:both", SOURCE), TABLE).sha == sha(4)
    with pytest.raises(RefNotFound, match="no tag named 'main'"):
        select(parse_track("tag:main", SOURCE), TABLE)


def test_latest_is_the_highest_release_and_ignores_non_semver() -> None:
    resolved = select(parse_track("tag:latest", SOURCE), TABLE)
    assert (resolved.ref_name, resolved.sha) == ("refs/tags/v1.10.0", sha(13))


def test_prereleases_count_only_when_no_release_exists() -> None:
    only_pre = RefTable.parse(f"{sha(1)}\trefs/tags/v1.0.0-alpha\n{sha(2)}\trefs/tags/v1.0.0-beta\n")
    resolved = select(parse_track("tag:latest", SOURCE), only_pre)
    assert resolved.sha == sha(2)
    assert resolved.note is not None and "pre-release" in resolved.note


@pytest.mark.parametrize(
    ("track", "tag"),
    [
        ("semver:^1.2", "v1.10.0"),
        ("semver:~1.2.0", "v1.2.0"),
        ("semver:>=1.0 <1.5", "v1.2.0"),
        ("semver:>=1.0, <1.5", "v1.2.0"),
        ("semver:=1.0.0", "v1.0.0"),
        ("semver:1.x", "v1.10.0"),
        ("semver:1.9.*", "1.9.0"),
        ("semver:*", "v1.10.0"),
        ("semver:^2.0.0-rc.0", "v2.0.0-rc.1"),
    ],
)
def test_semver_ranges_select_the_highest_tag_within(track: str, tag: str) -> None:
    assert select(parse_track(track, SOURCE), TABLE).ref_name == f"refs/tags/{tag}"


def test_an_empty_range_is_ref_not_found() -> None:
    with pytest.raises(RefNotFound, match="no semantic-version tag within '\\^3'"):
        select(parse_track("semver:^3", SOURCE), TABLE)


def test_sha_track_is_returned_as_is() -> None:
    assert select(parse_track(f"sha:{sha(99)}", SOURCE), TABLE).sha == sha(99)


def test_none_track_is_not_selectable() -> None:
    with pytest.raises(InvalidTrack):
        select(parse_track("none", SOURCE), TABLE)


def test_source_ref_uses_fragment_else_head() -> None:
    assert resolve_source_ref(SOURCE, TABLE).sha == sha(1)
    unpinned = parse_source("github://acme/hello", allow_unpinned=True)
    assert resolve_source_ref(unpinned, TABLE).ref_name == "HEAD"
    pinned = parse_source(f"github://acme/hello#{sha(42)}", allow_unpinned=False)
    assert resolve_source_ref(pinned, TABLE).sha == sha(42)


@pytest.mark.parametrize(
    ("range_", "inside", "outside"),
    [
        ("^1.2.3", ["1.2.3", "1.9.9"], ["1.2.2", "2.0.0", "2.0.0-rc.1"]),
        ("^0.2.3", ["0.2.3", "0.2.9"], ["0.3.0"]),
        ("^0.0.3", ["0.0.3"], ["0.0.4"]),
        ("~1.2.3", ["1.2.3", "1.2.9"], ["1.3.0"]),
        ("~1", ["1.0.0", "1.9.0"], ["2.0.0"]),
        (">1.2", ["1.3.0"], ["1.2.9"]),
        ("<=1.2", ["1.2.9"], ["1.3.0"]),
        ("<1.2", ["1.1.9"], ["1.2.0", "1.2.0-rc.1"]),
    ],
)
def test_range_bounds(range_: str, inside: list[str], outside: list[str]) -> None:
    parsed = SemverRange.parse(range_)
    for text in inside:
        assert parsed.contains(_v(text)), text
    for text in outside:
        assert not parsed.contains(_v(text)), text


def _v(text: str) -> Version:
    version = Version.parse(text)
    assert version is not None
    return version


def test_semver_precedence_follows_the_spec() -> None:
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2"]
    ordered += ["1.0.0-beta.11", "1.0.0-rc.1", "1.0.0"]
    assert sorted(ordered, key=_v) == ordered
    assert Version.parse("v1.2.3+build.5") == Version.parse("1.2.3")
    for not_semver in ("1.2", "v01.2.3", "release-1", "V1.2.3", "1.2.3.4"):
        assert Version.parse(not_semver) is None


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=15))
def test_latest_is_the_maximum(versions: list[tuple[int, int, int]]) -> None:
    lines = [f"{sha(i + 1)}\trefs/tags/v{a}.{b}.{c}" for i, (a, b, c) in enumerate(versions)]
    table = RefTable.parse("\n".join(lines))
    resolved = select(parse_track("tag:latest", SOURCE), table)
    best = max(versions)
    assert resolved.ref_name == "refs/tags/v{}.{}.{}".format(*best)
