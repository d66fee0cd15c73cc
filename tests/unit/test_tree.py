"""Tree digests, manifest.json integrity and plugin.yaml parsing (design §4)."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugin_operator.domain.errors import IntegrityMismatch, InvalidPlugin, UnsafeTree
from plugin_operator.domain.tree import (
    check_integrity,
    check_relpath,
    manifest_sha256,
    parse_plugin_yaml,
    tree_digest,
)


def test_digest_is_sha256_of_sorted_relpath_nul_content() -> None:
    files = [("rules/b.md", b"B"), ("plugin.yaml", b"name: x\n"), ("rules/a.md", b"A")]
    expected = hashlib.sha256(b"plugin.yaml\0name: x\nrules/a.md\0Arules/b.md\0B").hexdigest()
    assert tree_digest(files) == expected


def test_root_manifest_is_left_out_of_the_digest_but_nested_ones_are_not() -> None:
    files = [("plugin.yaml", b"name: x\n")]
    assert tree_digest([*files, ("manifest.json", b"{}")]) == tree_digest(files)
    assert tree_digest([*files, ("sub/manifest.json", b"{}")]) != tree_digest(files)


def test_a_manifest_declaring_the_digest_passes_and_a_wrong_one_is_refused() -> None:
    files = {"plugin.yaml": b"name: x\n", "rules/a.md": b"A"}
    digest = tree_digest(files.items())
    check_integrity({**files, "manifest.json": json.dumps({"sha256": digest}).encode()}, digest)
    check_integrity({**files, "manifest.json": b'{"name": "x"}'}, digest)  # no sha256: nothing to check
    with pytest.raises(IntegrityMismatch, match="declares sha256"):
        check_integrity({**files, "manifest.json": json.dumps({"sha256": "0" * 64}).encode()}, digest)


@pytest.mark.parametrize("data", [b"not json", b"[]", b'{"sha256": "xyz"}', b" " * (64 * 1024 + 1)])
def test_malformed_manifests_are_invalid_plugins(data: bytes) -> None:
    with pytest.raises(InvalidPlugin):
        manifest_sha256(data)


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\\b", "a\0b", "a\nb"])
def test_unsafe_relpaths_are_refused(path: str) -> None:
    with pytest.raises(UnsafeTree):
        check_relpath(path)


def test_plugin_yaml_is_parsed_into_a_small_model() -> None:
    meta = parse_plugin_yaml(
        b"""
name: lint
version: 1.0
description: Lints things
author: {name: Ada, email: ada@example.com}
tags: [quality]
skills:
  - review
  - name: format
    description: formats
runtimes: [claude]
unknown: ignored
""",
        expected_name="lint",
    )
    assert meta.version == "1.0"
    assert meta.author == "Ada"
    assert [s.name for s in meta.skills] == ["review", "format"]
    assert meta.runtimes == ("claude",)


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"name: other\n", "names the plugin 'other'"),
        (b"version: 1\n", "name is required"),
        (b"- a list\n", "must be a mapping"),
        (b"name: lint\nskills: ['../../etc']\n", "skill name"),
        (b"name: lint\nskills: [a, a]\n", "unique"),
        (b"name: lint\ntags: [[1], {a: 2}]\n", "tags"),
        (b"name: lint\ndescription: [x]\n", "description must be a string"),
        (b"name: [unclosed\n", "not valid YAML"),
        (b"name: !!python/object:os.system x\n", "not valid YAML"),
        (b"#" * (64 * 1024 + 1), "larger than"),
    ],
)
def test_bad_plugin_yaml_is_an_invalid_plugin(data: bytes, complaint: str) -> None:
    with pytest.raises(InvalidPlugin) as info:
        parse_plugin_yaml(data, expected_name="lint")
    assert complaint in info.value.message


_paths = st.lists(st.from_regex(r"[a-z]{1,5}(/[a-z]{1,5}){0,2}", fullmatch=True), unique=True, max_size=8)


@given(_paths, st.randoms())
def test_digest_ignores_order(paths: list[str], rng) -> None:  # type: ignore[no-untyped-def]
    files = [(p, p.encode() * 3) for p in paths]
    shuffled = files[:]
    rng.shuffle(shuffled)
    assert tree_digest(files) == tree_digest(shuffled)


@given(_paths.filter(bool), st.binary(max_size=8))
def test_digest_changes_when_any_content_changes(paths: list[str], extra: bytes) -> None:
    files = {p: p.encode() for p in paths}
    changed = dict(files)
    changed[paths[0]] = files[paths[0]] + b"!" + extra
    assert tree_digest(files.items()) != tree_digest(changed.items())
