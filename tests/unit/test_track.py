"""The track grammar (design §3) and its defaults from the source fragment."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugin_operator.domain.errors import InvalidTrack
from plugin_operator.domain.source import parse_source
from plugin_operator.domain.track import parse_track

PINNED = parse_source("github://acme/hello#v1.2.0", allow_unpinned=False)
UNPINNED = parse_source("github://acme/hello", allow_unpinned=True)
LOCAL = parse_source("hello", allow_unpinned=False)
SHA = "0123456789abcdef0123456789abcdef01234567"


def test_omitted_track_follows_the_source_fragment() -> None:
    assert parse_track(None, PINNED).normalized == "ref:v1.2.0"
    assert parse_track("", PINNED).normalized == "ref:v1.2.0"


def test_omitted_track_of_a_sha_pinned_source_is_a_sha_pin() -> None:
    source = parse_source(f"github://acme/hello#{SHA}", allow_unpinned=False)
    assert parse_track(None, source).normalized == f"sha:{SHA}"


def test_omitted_track_without_fragment_or_for_local_is_none() -> None:
    assert parse_track(None, UNPINNED).kind == "none"
    assert parse_track(None, LOCAL).normalized == "none"


@pytest.mark.parametrize(
    ("raw", "kind", "normalized"),
    [
        ("none", "none", "none"),
        ("main", "ref", "ref:main"),
        ("ref:release/1.x", "ref", "ref:release/1.x"),
        ("tag:v1.0.0", "tag", "tag:v1.0.0"),
        ("tag:latest", "latest", "tag:latest"),
        ("semver:^1.2", "semver", "semver:^1.2"),
        ("semver: >= 1.2 , <2", "semver", "semver:>=1.2 <2"),
        (f"sha:{SHA}", "sha", f"sha:{SHA}"),
    ],
)
def test_track_forms(raw: str, kind: str, normalized: str) -> None:
    track = parse_track(raw, PINNED)
    assert (track.kind, track.normalized) == (kind, normalized)
    assert parse_track(track.normalized, PINNED) == track


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ("sha:ABC", "40 lowercase hexadecimal"),
        (f"sha:{SHA.upper()}", "40 lowercase hexadecimal"),
        ("branch:main", "expected none, ref:<name>"),
        ("ref:-x", "must not start with '-'"),
        ("tag:a..b", "'..'"),
        ("semver:", "empty"),
        ("semver:banana", "not a version"),
        ("semver:1 || 2", "'||'"),
        ("ref:has space", "whitespace"),
    ],
)
def test_bad_tracks_are_refused_with_a_reason(raw: str, complaint: str) -> None:
    with pytest.raises(InvalidTrack) as info:
        parse_track(raw, PINNED)
    assert complaint in info.value.message


def test_local_sources_cannot_track_upstream() -> None:
    with pytest.raises(InvalidTrack, match="local:// sources have no upstream"):
        parse_track("ref:main", LOCAL)


@given(st.text(max_size=30))
def test_parsing_the_normalised_track_is_stable(raw: str) -> None:
    try:
        track = parse_track(raw, PINNED)
    except InvalidTrack:
        return
    assert parse_track(track.normalized, PINNED) == track
    assert not track.value.startswith("-")


@pytest.mark.parametrize("raw", ["main\n", "\nmain", "tag:v1\n", "semver:^1.2\n", "ref:ma\tin", "tag:latest\r"])
def test_a_control_character_anywhere_in_a_track_is_refused_not_stripped(raw: str) -> None:
    source = parse_source("github://acme/hello#main", allow_unpinned=False)
    with pytest.raises(InvalidTrack):
        parse_track(raw, source)
