"""The source grammar (design §3): what is accepted, how it normalises, and
that nothing accepted can become an option or climb out of a directory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin_operator.domain.errors import InvalidSource
from plugin_operator.domain.source import parse_source


def test_a_bare_name_means_local() -> None:
    source = parse_source("hello", allow_unpinned=False)
    assert (source.kind, source.name, source.normalized, source.repo_key) == (
        "local",
        "hello",
        "local://hello",
        None,
    )


def test_local_url_is_normalised_the_same_way() -> None:
    assert parse_source("  LOCAL://hello ", allow_unpinned=False).normalized == "local://hello"


def test_github_with_subdir_and_ref() -> None:
    source = parse_source("github://acme/plugins/tools/Lint#v1.2.0", allow_unpinned=False)
    assert source.kind == "github"
    assert (source.owner, source.repo, source.subdir, source.ref) == ("acme", "plugins", "tools/Lint", "v1.2.0")
    assert source.name == "lint"  # the last segment, lower-cased
    assert source.repo_key == "acme/plugins"
    assert source.normalized == "github://acme/plugins/tools/Lint#v1.2.0"


def test_the_repo_name_is_the_plugin_name_and_dot_git_is_dropped() -> None:
    source = parse_source("github://acme/hello.git#main", allow_unpinned=False)
    assert (source.repo, source.name, source.normalized) == ("hello", "hello", "github://acme/hello#main")


def test_a_full_sha_fragment_is_a_pin() -> None:
    sha = "a" * 40
    assert parse_source(f"github://acme/hello#{sha}", allow_unpinned=False).pinned_sha == sha
    assert parse_source("github://acme/hello#main", allow_unpinned=False).pinned_sha is None


def test_unpinned_is_refused_unless_allowed() -> None:
    with pytest.raises(InvalidSource, match=r"unpinned.*PLUGIN_ALLOW_UNPINNED"):
        parse_source("github://acme/hello", allow_unpinned=False)
    assert parse_source("github://acme/hello", allow_unpinned=True).ref is None


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ("", "empty"),
        ("github://acme#main", "expected github://<owner>/<repo>"),
        ("github://-acme/hello#main", "owner"),
        ("github://acme/-hello#main", "repository"),
        ("github://acme/hello/../x#main", "sub-directory segment '..'"),
        ("github://acme/hello//x#main", "empty path segment"),
        ("github://acme/hello/x#--upload-pack=touch", "must not start with '-'"),
        ("github://acme/hello#a..b", "'..'"),
        ("github://acme/hello#a b", "whitespace"),
        ("github://acme/hello#ma\tin", "whitespace"),
        ("github://acme/hello#", "empty"),
        ("github://acme/hello#x.lock", ".lock"),
        ("github://acme/hello#@{1}", "@"),
        ("github://acme/Hello World#main", "repository"),
        ("github://acme/UPPER_ONLY!#main", "repository"),
        ("ssh://acme/hello", "scheme 'ssh'"),
        ("local://../etc", "local plugin name"),
        ("local://.", "local plugin name"),
        ("local://Hello", "local plugin name"),
        ("a/b", "expected local://<name>"),
        ("--upload-pack=x", "local plugin name"),
    ],
)
def test_bad_sources_say_which_part_is_wrong(raw: str, complaint: str) -> None:
    with pytest.raises(InvalidSource) as info:
        parse_source(raw, allow_unpinned=True)
    assert complaint in info.value.message


# --- properties --------------------------------------------------------------

_ascii = st.characters(min_codepoint=0, max_codepoint=0x7F)
_anything = st.text(alphabet=st.one_of(_ascii, st.characters()), max_size=40)
_segment = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,12}", fullmatch=True)
_ref = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,20}", fullmatch=True)
_raw_github = st.builds(
    lambda owner, repo, sub, ref: (
        f"github://{owner}/{repo}" + "".join(f"/{s}" for s in sub) + (f"#{ref}" if ref else "")
    ),
    _segment,
    _segment,
    st.lists(_segment, max_size=3),
    st.one_of(st.none(), _ref),
)
_candidates = st.one_of(
    _raw_github,
    _anything,
    st.builds(lambda s: "github://" + s, _anything),
    st.builds(lambda s: "local://" + s, _anything),
    st.builds(lambda a, b: f"github://acme/hello{a}#{b}", _anything, _anything),
)


def _parsed(raw: str):  # type: ignore[no-untyped-def]
    try:
        return parse_source(raw, allow_unpinned=True)
    except InvalidSource:
        return None


@settings(max_examples=400)
@given(_candidates)
def test_normalising_is_idempotent_and_round_trips(raw: str) -> None:
    source = _parsed(raw)
    if source is None:
        return
    again = parse_source(source.normalized, allow_unpinned=True)
    assert again == source
    assert again.normalized == source.normalized


@settings(max_examples=400)
@given(_candidates)
def test_nothing_accepted_escapes_or_looks_like_an_option(raw: str) -> None:
    source = _parsed(raw)
    if source is None:
        return
    values = [source.name, source.owner, source.repo, source.ref]
    values += source.subdir.split("/") if source.subdir else []
    for value in filter(None, values):
        assert not value.startswith("-")
        assert value not in (".", "..")
        assert all(c.isprintable() and not c.isspace() for c in value)
        assert value.isascii()
    for segment in [source.name, source.owner, source.repo, *(source.subdir or "").split("/")]:
        if segment:
            assert "/" not in segment and "\\" not in segment
    if source.ref:
        assert ".." not in source.ref and not source.ref.startswith("/")
        assert all(part and not part.startswith(".") for part in source.ref.split("/"))
