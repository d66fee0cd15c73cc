"""Tree caps, collisions, `.git`, CLAUDE.md markers and strict metadata (design §4)."""

from __future__ import annotations

import pytest

from plugin_operator.config import ConfigError, Settings
from plugin_operator.domain.claude_md import BEGIN, END, begin_line, end_line, find_marker_like, is_marker_like
from plugin_operator.domain.errors import InvalidPlugin, TreeLimitExceeded, TreeTooLarge, UnsafeTree
from plugin_operator.domain.semver import Version
from plugin_operator.domain.tree import TreeLimits, check_tree_paths, is_dotgit, parse_plugin_yaml

LIMITS = TreeLimits(max_files=5, max_depth=3, max_name_bytes=8, max_path_bytes=20)


def test_marker_grammar() -> None:
    assert begin_line("x") == BEGIN.format(name="x") == "<!-- plugin-operator:begin x -->"
    assert end_line("x") == END.format(name="x") == "<!-- plugin-operator:end x -->"
    for line in [
        b"<!-- plugin-operator:begin x -->",
        b"<!--PLUGIN-OPERATOR : End x-->\r\n",
        "  <!-- plugin-operator:begin",
    ]:
        assert is_marker_like(line)
    for line in [b"plugin-operator:begin x", b"<!-- plugin-operator -->", b"# heading"]:
        assert not is_marker_like(line)
    assert find_marker_like(b"a\nb\n<!-- plugin-operator:end y -->\n") == 3
    assert find_marker_like(b"nothing here") is None


@pytest.mark.parametrize(
    ("paths", "error", "complaint"),
    [
        (["a", "b", "c", "d", "e", "f"], TreeLimitExceeded, "MAX_FILES"),
        (["a/b/c/d"], TreeLimitExceeded, "MAX_DEPTH"),
        (["abcdefghi"], TreeLimitExceeded, "MAX_NAME_BYTES"),
        (["\u00e9" * 5], TreeLimitExceeded, "MAX_NAME_BYTES"),
        (["abcdefgh/abcdefgh/abc"], TreeLimitExceeded, "MAX_PATH_BYTES"),
        (["a", "a"], UnsafeTree, "twice"),
        (["a", "a/b"], UnsafeTree, "both a file and a directory"),
        (["A", "a"], UnsafeTree, "letter case"),
        (["x/A/b", "x/a/c"], UnsafeTree, "letter case"),
        (["caf\u00e9", "cafe\u0301"], UnsafeTree, "normalisation"),
        ([".git/x"], UnsafeTree, r"\.git"),
        (["a/.GiT"], UnsafeTree, r"\.git"),
        (["\udcff"], UnsafeTree, "UTF-8"),
    ],
)
def test_tree_listings_are_checked(paths: list[str], error: type[Exception], complaint: str) -> None:
    with pytest.raises(error, match=complaint):
        check_tree_paths(paths, LIMITS)


def test_limit_errors_are_tree_too_large_too() -> None:
    assert issubclass(TreeLimitExceeded, TreeTooLarge) and TreeLimitExceeded.reason == "TreeLimitExceeded"


@pytest.mark.parametrize("segment", [".git", ".GIT", ".git.", ".git ", ".g\u200cit", "GIT~1"])
def test_dotgit_look_alikes(segment: str) -> None:
    assert is_dotgit(segment)
    assert not is_dotgit(".gitmodules") and not is_dotgit(".github")


def test_plugin_yaml_scalars_are_kept_as_written() -> None:
    meta = parse_plugin_yaml(b"name: x\nversion: 1.10\ndescription: ~\ntags: [yes, 012]\n", expected_name="x")
    assert (meta.version, meta.description, meta.tags) == ("1.10", "", ("yes", "012"))
    with pytest.raises(InvalidPlugin, match="duplicate key"):
        parse_plugin_yaml(b"name: x\nname: x\n", expected_name="x")


def test_huge_version_numbers_are_not_semver() -> None:
    assert Version.parse("v" + "9" * 5000 + ".0.0") is None
    assert Version.parse("1.2.3\n") is None
    assert Version.parse("v1.2.3") == Version(1, 2, 3)


def test_tree_caps_are_configurable_and_validated() -> None:
    settings = Settings.from_env(
        {
            "PLUGIN_INSTALL_MAX_FILES": "7",
            "PLUGIN_INSTALL_MAX_DEPTH": "4",
            "PLUGIN_INSTALL_MAX_NAME_BYTES": "100",
            "PLUGIN_INSTALL_MAX_PATH_BYTES": "300",
        }
    )
    assert (settings.max_files, settings.max_depth, settings.max_name_bytes, settings.max_path_bytes) == (
        7,
        4,
        100,
        300,
    )
    assert Settings().max_files == 10_000 and Settings().max_depth == 32
    for name in ("PLUGIN_INSTALL_MAX_FILES", "PLUGIN_INSTALL_MAX_DEPTH", "PLUGIN_INSTALL_MAX_NAME_BYTES"):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: "0"})
