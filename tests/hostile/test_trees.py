"""Hostile plugin trees, plugin.yaml, manifest.json and tags (issue: Trust).

Each case is one hostile input, staged by the real Stager from the real
loopback git server (or the local registry). Every one must be refused with
a PluginError of the expected reason whose message names the cause; nothing
may reach the cache's trees/, the work dir must be gone, and staging the same
commit again must re-raise the same error without fetching again (the
negative cache).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from localdev.gitserver import Entry, File, GitServer, Submodule, Symlink
from plugin_operator.config import Settings
from plugin_operator.domain.errors import PluginError
from plugin_operator.domain.source import parse_source
from plugin_operator.domain.track import parse_track
from plugin_operator.git import GitRunner, Resolver
from plugin_operator.staging import Stager
from tests.fixtures.gitserver import git_settings

pytestmark = pytest.mark.git

YAML = "name: hello\nversion: 1.0.0\n"
BASE: dict[str, Entry] = {"plugin.yaml": YAML, "rules/style.md": "# Style\n"}
Builder = Callable[[GitServer, str], str]
RawEntries = Callable[[GitServer, str], list[tuple[str, bytes | str, str]]]


@dataclass(frozen=True)
class Case:
    build: Builder
    reason: str
    complaint: str  # a regex the message must match (case-insensitive)
    settings: Mapping[str, Any] = field(default_factory=dict)


def files(extra: Mapping[str, Entry], *, base: Mapping[str, Entry] = BASE) -> Builder:
    def build(server: GitServer, owner: str) -> str:
        return server.create_repo(owner, "hello", {**base, **extra})

    return build


def only(tree: Mapping[str, Entry]) -> Builder:
    return files(tree, base={})


def yaml_file(text: str | bytes) -> Builder:
    return only({"plugin.yaml": text, "rules/style.md": "# Style\n"})


def manifest(text: str | bytes) -> Builder:
    return files({"manifest.json": text})


def raw(make: RawEntries, *, with_yaml: bool = True) -> Builder:
    """A root tree written byte for byte (duplicates, any names)."""

    def build(server: GitServer, owner: str) -> str:
        server.create_repo(owner, "hello")
        entries = make(server, owner)
        if with_yaml:
            entries = [("100644", "plugin.yaml", server.blob(owner, "hello", YAML)), *entries]
        return server.commit_tree(owner, "hello", server.raw_tree(owner, "hello", entries))

    return build


def blob(name: bytes | str, content: str = "x") -> RawEntries:
    return lambda s, o: [("100644", name, s.blob(o, "hello", content))]


def nested(depth: int, segment: str = "d") -> dict[str, Entry]:
    return {"/".join([segment] * depth) + "/f.md": "deep"}


def many_same_blob(count: int) -> RawEntries:
    def make(s: GitServer, o: str) -> list[tuple[str, bytes | str, str]]:
        oid = s.blob(o, "hello", "same")
        return [("100644", f"f{i:06d}.md", oid) for i in range(count)]

    return make


def billion_laughs() -> str:
    lines = ["name: hello", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def deep_block_yaml(depth: int) -> str:
    lines = ["name: hello", "x:"]
    lines += [" " * (2 * i) + f"k{i}:" for i in range(1, depth)]
    return "\n".join(lines) + " v\n"


GOOD_SHA = "0" * 64
MARK_BEGIN = "<!-- plugin-operator:begin other -->"

CASES: dict[str, Case] = {
    # --- links, submodules, git metadata ---------------------------------------------------------
    "symlink-to-etc-passwd": Case(
        files({"rules/passwd.md": Symlink("../../../../etc/passwd")}), "UnsafeTree", "symbolic link"
    ),
    "symlink-dir-to-root": Case(files({"skills": Symlink("/")}), "UnsafeTree", "symbolic link"),
    "symlink-plugin-yaml": Case(only({"plugin.yaml": Symlink("/etc/hostname")}), "UnsafeTree", "symbolic link"),
    "submodule-at-root": Case(files({"vendor": Submodule("1" * 40)}), "UnsafeTree", "submodule"),
    "submodule-nested": Case(files({"skills/x/vendor": Submodule("2" * 40)}), "UnsafeTree", "submodule"),
    "dotgit-dir-at-root": Case(files({".git/config": "[core]\n\tfsmonitor = evil\n"}), "UnsafeTree", r"\.git"),
    "dotgit-uppercase": Case(files({".GIT/config": "x"}), "UnsafeTree", r"\.git"),
    "dotgit-mixed-case-nested": Case(files({"skills/x/.gIt/hooks/pre-commit": "x"}), "UnsafeTree", r"\.git"),
    "dotgit-as-file": Case(files({"rules/.git": "gitdir: /tmp/evil\n"}), "UnsafeTree", r"\.git"),
    "dotgit-trailing-dot": Case(files({".git./config": "x"}), "UnsafeTree", r"\.git"),
    "dotgit-trailing-space": Case(files({".git /config": "x"}), "UnsafeTree", r"\.git"),
    "dotgit-hfs-zero-width": Case(files({".g\u200cit/config": "x"}), "UnsafeTree", r"\.git|unsafe"),
    "dotgit-ntfs-short-name": Case(files({"GIT~1/config": "x"}), "UnsafeTree", r"\.git"),
    # --- unsafe names ---------------------------------------------------------------------------
    "entry-named-dotdot": Case(raw(blob("..")), "UnsafeTree", "unsafe path"),
    "entry-named-dot": Case(raw(blob(".")), "UnsafeTree", "unsafe path"),
    "dir-entry-named-dotdot": Case(
        raw(lambda s, o: [("40000", "..", s.tree(o, "hello", {"evil.md": "x"}))]), "UnsafeTree", "unsafe path"
    ),
    "entry-absolute-name": Case(raw(blob("/etc/passwd")), "UnsafeTree", "unsafe path"),
    "entry-name-with-slash-shadowing-a-file": Case(
        raw(
            lambda s, o: [
                *blob("rules/style.md", "evil")(s, o),
                ("40000", "rules", s.tree(o, "hello", {"style.md": "good"})),
            ]
        ),
        "UnsafeTree",
        "appears twice",
    ),
    "backslash-traversal-name": Case(files({"rules\\..\\..\\x.md": "x"}), "UnsafeTree", "unsafe path"),
    "newline-in-name": Case(files({"rules/a\nb.md": "x"}), "UnsafeTree", "unsafe path"),
    "escape-sequence-in-name": Case(files({"a\x1b[31m.md": "x"}), "UnsafeTree", "unsafe path"),
    "del-char-in-name": Case(files({"a\x7f.md": "x"}), "UnsafeTree", "unsafe path"),
    "c1-control-in-name": Case(files({"a\x85.md": "x"}), "UnsafeTree", "unsafe path"),
    "bidi-override-in-name": Case(files({"rules/\u202edm.txt": "x"}), "UnsafeTree", "unsafe path"),
    "line-separator-in-name": Case(files({"a\u2028b.md": "x"}), "UnsafeTree", "unsafe path"),
    "non-utf8-name": Case(raw(blob(b"\xff\xfe.md")), "UnsafeTree", "not valid UTF-8"),
    "overlong-utf8-dotdot-name": Case(raw(blob(b"\xc0\xae\xc0\xae")), "UnsafeTree", "not valid UTF-8"),
    "utf8-encoded-surrogate-name": Case(raw(blob(b"\xed\xa0\x80.md")), "UnsafeTree", "not valid UTF-8"),
    # --- caps on names, depth, paths, files -----------------------------------------------------
    "name-300-bytes": Case(files({"rules/" + "a" * 300 + ".md": "x"}), "TreeLimitExceeded", "MAX_NAME_BYTES"),
    "name-256-bytes-multibyte": Case(files({"\u00e9" * 128: "x"}), "TreeLimitExceeded", "MAX_NAME_BYTES"),
    "name-5000-bytes": Case(raw(blob("n" * 5000)), "TreeLimitExceeded", "MAX_PATH_BYTES"),
    "nesting-33-levels": Case(files(nested(33)), "TreeLimitExceeded", "MAX_DEPTH"),
    "nesting-120-levels": Case(files(nested(120)), "TreeLimitExceeded", "MAX_DEPTH"),
    "path-1100-bytes": Case(files({"/".join(["p" * 220] * 5): "x"}), "TreeLimitExceeded", "MAX_PATH_BYTES"),
    "files-over-default-cap-10001": Case(raw(many_same_blob(10_001)), "TreeLimitExceeded", "MAX_FILES"),
    "files-over-configured-cap": Case(raw(many_same_blob(21)), "TreeLimitExceeded", "MAX_FILES", {"max_files": 20}),
    "depth-over-configured-cap": Case(files(nested(4)), "TreeLimitExceeded", "MAX_DEPTH", {"max_depth": 4}),
    "name-over-configured-cap": Case(
        files({"abcdefghijklmnopq.md": "x"}), "TreeLimitExceeded", "MAX_NAME_BYTES", {"max_name_bytes": 16}
    ),
    # --- collisions ------------------------------------------------------------------------------
    "duplicate-blob-entries": Case(raw(lambda s, o: blob("a.md")(s, o) * 2), "UnsafeTree", "appears twice"),
    "duplicate-entries-different-content": Case(
        raw(lambda s, o: [*blob("a.md", "one")(s, o), *blob("a.md", "two")(s, o)]), "UnsafeTree", "appears twice"
    ),
    "duplicate-plugin-yaml": Case(raw(blob("plugin.yaml", "name: evil\n")), "UnsafeTree", "appears twice"),
    "file-and-directory-same-name": Case(
        raw(lambda s, o: [*blob("a")(s, o), ("40000", "a", s.tree(o, "hello", {"b": "x"}))]),
        "UnsafeTree",
        "both a file and a directory",
    ),
    "case-collision-files": Case(files({"README.md": "a", "readme.md": "b"}), "UnsafeTree", "letter case"),
    "case-collision-directories": Case(files({"Rules/a.md": "a"}), "UnsafeTree", "letter case"),
    "case-collision-file-vs-directory": Case(
        files({"Skills": "x", "skills/x/SKILL.md": "y"}), "UnsafeTree", "letter case"
    ),
    "unicode-nfc-nfd-collision": Case(
        files({"caf\u00e9.md": "a", "cafe\u0301.md": "b"}), "UnsafeTree", "normalisation"
    ),
    # --- size -----------------------------------------------------------------------------------
    "blob-over-dir-cap": Case(
        files({"big.bin": os.urandom(20_000)}), "TreeTooLarge", "MAX_DIR_BYTES", {"max_dir_bytes": 10_000}
    ),
    "many-blobs-over-dir-cap": Case(
        files({f"r/{i}.md": os.urandom(500) for i in range(30)}),
        "TreeTooLarge",
        "MAX_DIR_BYTES",
        {"max_dir_bytes": 10_000},
    ),
    "one-blob-at-many-paths-over-cap": Case(
        files({f"copy{i}.bin": "z" * 4000 for i in range(5)}),
        "TreeTooLarge",
        "MAX_DIR_BYTES",
        {"max_dir_bytes": 10_000},
    ),
    # --- plugin.yaml ----------------------------------------------------------------------------
    "plugin-yaml-missing": Case(only({"rules/a.md": "A"}), "InvalidPlugin", r"plugin\.yaml is missing"),
    "plugin-yaml-is-a-directory": Case(
        only({"plugin.yaml/x": "name: hello\n"}), "InvalidPlugin", r"plugin\.yaml is missing"
    ),
    "plugin-yaml-names-another-plugin": Case(yaml_file("name: other\n"), "InvalidPlugin", "names the plugin 'other'"),
    "plugin-yaml-duplicate-key": Case(yaml_file("name: hello\nname: hello\n"), "InvalidPlugin", "duplicate key 'name'"),
    "plugin-yaml-duplicate-name-smuggling": Case(
        yaml_file("name: other\nversion: 1\nname: hello\n"), "InvalidPlugin", "duplicate key 'name'"
    ),
    "plugin-yaml-duplicate-nested-key": Case(
        yaml_file("name: hello\nauthor: {name: a, name: b}\n"), "InvalidPlugin", "duplicate key"
    ),
    "plugin-yaml-deep-flow-sequence": Case(
        yaml_file("name: hello\nx: " + "[" * 5000 + "]" * 5000 + "\n"), "InvalidPlugin", "nested"
    ),
    "plugin-yaml-deep-flow-mapping": Case(
        yaml_file("name: hello\nx: " + "{a: " * 3000 + "b" + "}" * 3000 + "\n"), "InvalidPlugin", "nested"
    ),
    "plugin-yaml-deep-block-mapping": Case(yaml_file(deep_block_yaml(100)), "InvalidPlugin", "nested"),
    "plugin-yaml-30000-open-brackets": Case(
        yaml_file("name: hello\nx: " + "[" * 30_000 + "\n"), "InvalidPlugin", "nested|not valid YAML"
    ),
    "plugin-yaml-billion-laughs": Case(yaml_file(billion_laughs()), "InvalidPlugin", "aliases"),
    "plugin-yaml-recursive-alias": Case(yaml_file("name: hello\na: &a [*a]\n"), "InvalidPlugin", "not valid YAML"),
    "plugin-yaml-python-object-tag": Case(
        yaml_file("name: hello\nx: !!python/object/apply:os.system ['touch /tmp/pwned']\n"), "InvalidPlugin", "tag"
    ),
    "plugin-yaml-binary-tag": Case(yaml_file("name: hello\nx: !!binary aGVsbG8=\n"), "InvalidPlugin", "tag"),
    "plugin-yaml-not-utf8": Case(yaml_file(b"name: hello\ndescription: \xff\xfe\n"), "InvalidPlugin", "not valid YAML"),
    "plugin-yaml-nul-byte": Case(yaml_file(b"name: hello\n\x00\n"), "InvalidPlugin", "not valid YAML"),
    "plugin-yaml-is-a-list": Case(yaml_file("- name: hello\n"), "InvalidPlugin", "must be a mapping"),
    "plugin-yaml-two-documents": Case(yaml_file("name: hello\n---\nname: other\n"), "InvalidPlugin", "not valid YAML"),
    "plugin-yaml-over-64k": Case(yaml_file("name: hello\n" + "#" * 70_000 + "\n"), "InvalidPlugin", "larger than"),
    "plugin-yaml-complex-key": Case(yaml_file("name: hello\n? [a, b]\n: c\n"), "InvalidPlugin", "key must be a string"),
    "plugin-yaml-skill-path-traversal": Case(
        yaml_file("name: hello\nskills: ['../../etc']\n"), "InvalidPlugin", "skill name"
    ),
    "plugin-yaml-name-trailing-newline": Case(yaml_file('name: "hello\\n"\n'), "InvalidPlugin", "name is required"),
    "plugin-yaml-version-5000-digits": Case(
        yaml_file("name: hello\nversion: 1" + "0" * 5000 + "\n"), "InvalidPlugin", "version is longer"
    ),
    # --- manifest.json --------------------------------------------------------------------------
    "manifest-duplicate-sha256-keys": Case(
        manifest('{"sha256": "' + GOOD_SHA + '", "sha256": "' + "f" * 64 + '"}'), "InvalidPlugin", "duplicate key"
    ),
    "manifest-30000-nested-arrays": Case(manifest("[" * 30_000 + "]" * 30_000), "InvalidPlugin", "nested|larger than"),
    "manifest-20000-open-brackets": Case(
        manifest('{"a": ' + "[" * 20_000), "InvalidPlugin", "nested too deeply|not valid JSON"
    ),
    "manifest-100-nested-objects": Case(manifest('{"a": ' * 100 + "1" + "}" * 100), "InvalidPlugin", "nested"),
    "manifest-5000-digit-number": Case(manifest('{"n": 1' + "0" * 5000 + "}"), "InvalidPlugin", "not valid JSON"),
    "manifest-wrong-sha256": Case(manifest('{"sha256": "' + GOOD_SHA + '"}'), "IntegrityMismatch", "declares sha256"),
    "manifest-sha256-trailing-newline": Case(
        manifest('{"sha256": "' + "a" * 64 + '\\n"}'), "InvalidPlugin", "64 hexadecimal"
    ),
    "manifest-not-json": Case(manifest("sha256 = yes"), "InvalidPlugin", "not valid JSON"),
    "manifest-is-an-array": Case(manifest("[]"), "InvalidPlugin", "JSON object"),
    # --- CLAUDE.md markers ----------------------------------------------------------------------
    "marker-begin-in-rules": Case(
        files({"rules/x.md": f"intro\n{MARK_BEGIN}\nevil\n"}), "UnsafeTree", r"rules/x\.md' line 2"
    ),
    "marker-end-in-claude-md-line-3": Case(
        files({"CLAUDE.md": "a\nb\n<!-- plugin-operator:end other -->\n"}), "UnsafeTree", r"CLAUDE\.md' line 3"
    ),
    "marker-uppercase-spaced": Case(
        files({"rules/x.md": "<!--   PLUGIN-OPERATOR : BEGIN other   -->\n"}), "UnsafeTree", "marker"
    ),
    "marker-with-crlf": Case(files({"rules/x.md": f"a\r\n{MARK_BEGIN}\r\n"}), "UnsafeTree", "line 2"),
    "marker-in-plugin-yaml-comment": Case(
        yaml_file("name: hello\n# <!-- plugin-operator:end hello -->\n"), "UnsafeTree", "marker"
    ),
    "marker-unterminated-comment": Case(
        files({"rules/x.md": "<!-- plugin-operator:end hello"}), "UnsafeTree", "marker"
    ),
    "marker-in-nested-skill": Case(files({"skills/a/b/SKILL.md": f"\n\n\n{MARK_BEGIN}"}), "UnsafeTree", "line 4"),
    "marker-in-executable": Case(
        files({"setup.sh": File(f"#!/bin/sh\necho '{MARK_BEGIN}'\n", executable=True)}), "UnsafeTree", "marker"
    ),
}


def src(owner: str, rest: str = "hello#main") -> Any:
    return parse_source(f"github://{owner}/{rest}", allow_unpinned=True)


def assert_cache_clean(settings: Settings) -> None:
    assert not list((settings.cache_dir / "trees").glob("*")), "nothing may reach the cache"
    assert not list((settings.cache_dir / "tmp").glob("*")), "the work dir must be removed"


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_a_hostile_git_tree_is_refused_and_never_fetched_twice(
    git_server: GitServer, git_owner: str, tmp_path: Path, case: Case
) -> None:
    settings = git_settings(git_server.base_url, tmp_path, **case.settings)
    sha = case.build(git_server, git_owner)
    stager = Stager(settings, GitRunner(settings))

    with pytest.raises(PluginError) as info:
        await stager.stage(src(git_owner), sha)
    error = info.value
    assert error.reason == case.reason, error.message
    assert error.permanent
    assert re.search(case.complaint, error.message, re.IGNORECASE), error.message
    assert len(error.message) < 1000
    assert_cache_clean(settings)
    assert stager.fetches == 1

    calls, git_fetches = stager.runner.calls, stager.git_fetches
    with pytest.raises(PluginError) as again:
        await stager.stage(src(git_owner, "hello#v1"), sha)  # same repo, commit and sub-directory
    assert (again.value.reason, again.value.message) == (error.reason, error.message)
    assert (stager.fetches, stager.git_fetches, stager.runner.calls) == (1, git_fetches, calls)
    assert_cache_clean(settings)


# --- the local registry ---------------------------------------------------------------------------


def _write(root: Path, tree: Mapping[str, str | bytes]) -> None:
    for relpath, content in tree.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def _non_utf8(root: Path) -> None:
    os.mkdir(os.path.join(os.fsencode(root), b"rules"))
    with open(os.path.join(os.fsencode(root), b"rules", b"\xff\xfe.md"), "wb") as handle:
        handle.write(b"x")


def _fifo(root: Path) -> None:
    os.mkfifo(root / "pipe.md")


def _socket(root: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "s.sock"))
    sock.close()


def _symlink(root: Path) -> None:
    (root / "rules").mkdir()
    (root / "rules" / "link.md").symlink_to("/etc/passwd")


def _hardlink(root: Path) -> None:
    (root / "a.md").write_text("a")
    os.link(root / "a.md", root / "b.md")


def _dirs(count: int) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        for i in range(count):
            (root / f"d{i}").mkdir()

    return make


def _tree(tree: Mapping[str, str | bytes]) -> Callable[[Path], None]:
    return lambda root: _write(root, tree)


LOCAL: dict[str, tuple[Callable[[Path], None], str, str, dict[str, Any]]] = {
    "local-non-utf8-name": (_non_utf8, "UnsafeTree", "not valid UTF-8", {}),
    "local-dotgit-dir": (_tree({".git/config": "[core]\n"}), "UnsafeTree", r"\.git", {}),
    "local-dotgit-uppercase-file": (_tree({"rules/.GIT": "gitdir: x"}), "UnsafeTree", r"\.git", {}),
    "local-symlink": (_symlink, "UnsafeTree", "symbolic link", {}),
    "local-hardlink": (_hardlink, "UnsafeTree", "hardlink", {}),
    "local-fifo": (_fifo, "UnsafeTree", "device, socket or pipe", {}),
    "local-unix-socket": (_socket, "UnsafeTree", "device, socket or pipe", {}),
    "local-nesting-40-levels": (_tree(nested(40)), "TreeLimitExceeded", "MAX_DEPTH", {}),
    "local-name-over-cap": (
        _tree({"abcdefghijklmnopq.md": "x"}),
        "TreeLimitExceeded",
        "MAX_NAME_BYTES",
        {"max_name_bytes": 16},
    ),
    "local-path-over-cap": (
        _tree({"aaaaaaaaaa/bbbbbbbbbb/cc.md": "x"}),
        "TreeLimitExceeded",
        "MAX_PATH_BYTES",
        {"max_path_bytes": 20},
    ),
    "local-files-over-cap": (
        _tree({f"f{i}.md": "x" for i in range(11)}),
        "TreeLimitExceeded",
        "MAX_FILES",
        {"max_files": 10},
    ),
    "local-empty-dirs-over-cap": (_dirs(11), "TreeLimitExceeded", "MAX_FILES", {"max_files": 10}),
    "local-case-collision": (_tree({"README.md": "a", "readme.md": "b"}), "UnsafeTree", "letter case", {}),
    "local-newline-name": (_tree({"a\nb.md": "x"}), "UnsafeTree", "unsafe path", {}),
    "local-bidi-name": (_tree({"\u202egnp.md": "x"}), "UnsafeTree", "unsafe path", {}),
    "local-marker-line": (_tree({"rules/x.md": MARK_BEGIN + "\n"}), "UnsafeTree", "line 1", {}),
    "local-over-size-cap": (
        _tree({"big.bin": b"\0" * 20_000}),
        "TreeTooLarge",
        "MAX_DIR_BYTES",
        {"max_dir_bytes": 10_000},
    ),
    "local-plugin-yaml-duplicate-key": (
        _tree({"plugin.yaml": "name: hello\nname: hello\n"}),
        "InvalidPlugin",
        "duplicate key",
        {},
    ),
    "local-manifest-deeply-nested": (
        _tree({"manifest.json": "[" * 30_000}),
        "InvalidPlugin",
        "nested|not valid JSON",
        {},
    ),
}


@pytest.mark.parametrize(("make", "reason", "complaint", "overrides"), LOCAL.values(), ids=LOCAL.keys())
async def test_a_hostile_local_tree_is_refused(
    tmp_path: Path,
    make: Callable[[Path], None],
    reason: str,
    complaint: str,
    overrides: dict[str, Any],
) -> None:
    settings = git_settings("https://github.invalid", tmp_path, **overrides)
    root = settings.registry_dir / "hello"
    root.mkdir(parents=True)
    if not (reason == "InvalidPlugin" and "duplicate" in complaint):
        (root / "plugin.yaml").write_text(YAML)
    make(root)
    stager = Stager(settings, GitRunner(settings))
    for _ in range(2):  # local reads are not negatively cached: the same error, and no git at all
        with pytest.raises(PluginError) as info:
            await stager.stage(parse_source("local://hello", allow_unpinned=False))
        assert info.value.reason == reason, info.value.message
        assert info.value.permanent
        assert re.search(complaint, info.value.message, re.IGNORECASE), info.value.message
        assert_cache_clean(settings)
    assert (stager.fetches, stager.runner.calls) == (0, 0)


# --- tags ----------------------------------------------------------------------------------------

HUGE = "9" * 5000


def _packed_tags(server: GitServer, owner: str, sha: str, names: list[str]) -> None:
    """Tags too long for a loose ref file, as a server's packed-refs holds them."""
    lines = "".join(f"{sha} refs/tags/{name}\n" for name in names)
    (server.path(owner, "hello") / "packed-refs").write_text("# pack-refs with: peeled \n" + lines)


TAGS: dict[str, tuple[list[str], str, str]] = {
    "tag-latest-only-5000-digit-major": ([f"v{HUGE}.0.0"], "tag:latest", "RefNotFound"),
    "tag-latest-only-5000-digit-patch": ([f"1.0.{HUGE}"], "tag:latest", "RefNotFound"),
    "tag-latest-only-5000-digit-prerelease": ([f"v1.0.0-{HUGE}"], "tag:latest", "RefNotFound"),
    "semver-range-5000-digit-tags": ([f"v{HUGE}.0.0", f"v1.{HUGE}.0"], "semver:>=1", "RefNotFound"),
}


@pytest.mark.parametrize(("tags", "track", "reason"), TAGS.values(), ids=TAGS.keys())
async def test_hostile_tags_are_not_versions(
    git_server: GitServer, git_owner: str, tmp_path: Path, tags: list[str], track: str, reason: str
) -> None:
    sha = git_server.create_repo(git_owner, "hello", BASE)
    _packed_tags(git_server, git_owner, sha, tags)
    settings = git_settings(git_server.base_url, tmp_path)
    resolver = Resolver(settings)
    source = src(git_owner, "hello")
    with pytest.raises(PluginError) as info:
        await resolver.resolve(source, parse_track(track, source))
    assert info.value.reason == reason, info.value.message[:300]

    # Next to a real release, the hostile tags are ignored rather than crashing the choice.
    _packed_tags(git_server, git_owner, sha, [*tags, "v1.2.0"])
    resolver.forget()
    resolved = await resolver.resolve(source, parse_track(track, source))
    assert resolved.sha == sha and (resolved.ref_name or "").endswith("v1.2.0")


@pytest.mark.parametrize(
    "track",
    [f"semver:^{HUGE}", f"semver:>=1.{HUGE}", f"semver:1.0.0-{HUGE}", "semver:^1.2\x00"],
    ids=[
        "semver-range-5000-digit-major",
        "semver-range-5000-digit-minor",
        "semver-range-5000-digit-prerelease",
        "semver-range-nul-byte",
    ],
)
def test_hostile_semver_ranges_are_invalid_tracks(track: str) -> None:
    source = parse_source("github://acme/hello#main", allow_unpinned=True)
    with pytest.raises(PluginError) as info:
        parse_track(track, source)
    assert info.value.reason == "InvalidTrack"
    assert len(info.value.message) < 1000
