"""Plugin trees: the digest, `manifest.json`, `plugin.yaml` (design §4).

The digest walk: every regular file of the tree except the root
`manifest.json`, as `relpath NUL content` byte strings (relpath with `/`
separators, UTF-8), sorted by relpath, concatenated, SHA-256 hex. The root
`manifest.json` is left out so that it can carry the digest of the rest; as a
consequence a publisher's `manifest.json` `sha256` equals the operator's
`installedDigest`, and a change to `manifest.json` alone does not change the
digest. Empty directories do not count (git does not store them).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from plugin_operator.domain.claude_md import find_marker_like
from plugin_operator.domain.errors import (
    IntegrityMismatch,
    InvalidPlugin,
    TreeLimitExceeded,
    UnsafeTree,
)
from plugin_operator.domain.source import PLUGIN_NAME

MANIFEST = "manifest.json"
PLUGIN_YAML = "plugin.yaml"
MAX_META_BYTES = 64 * 1024
MAX_META_DEPTH = 32  # nesting of plugin.yaml / manifest.json collections
MAX_YAML_ALIASES = 64  # `*alias` uses in plugin.yaml (no billion laughs)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SKILL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Never in a path: bidirectional overrides and isolates (they make a name
# display as another), besides the control, surrogate and separator categories.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_BAD_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
# Code points HFS+ ignores in names: `.g\u200cit` is `.git` there.
_HFS_IGNORED = frozenset(
    "\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u206a\u206b\u206c\u206d\u206e\u206f\ufeff"
)


def show_path(relpath: str, limit: int = 120) -> str:
    """`relpath` for a message: repr'd, and shortened when long."""
    text = repr(relpath)
    return text if len(text) <= limit else f"{text[: limit // 2]}…{text[-limit // 4 :]} ({len(relpath)} characters)"


def is_dotgit(segment: str) -> bool:
    """True for a path segment a git (or a case-insensitive file system)
    would take for `.git`: any letter case, trailing dots or spaces, code
    points HFS+ ignores, the NTFS short name `git~1`."""
    folded = "".join(c for c in segment if c not in _HFS_IGNORED).rstrip(". ").casefold()
    return folded in (".git", "git~1")


def check_relpath(relpath: str) -> str:
    """A path inside a tree: relative, `/`-separated, no `.`/`..`/empty
    segments, no NUL, backslash, control, surrogate (a name that was not
    UTF-8) or bidirectional-override characters, and no `.git` segment in any
    letter case. Raises UnsafeTree."""
    if (
        not relpath
        or relpath.startswith("/")
        or any(c == "\\" or c in _BIDI or unicodedata.category(c) in _BAD_CATEGORIES for c in relpath)
        or any(part in ("", ".", "..") for part in relpath.split("/"))
    ):
        if any(unicodedata.category(c) == "Cs" for c in relpath):
            raise UnsafeTree(f"path {show_path(relpath)} in the plugin tree is not valid UTF-8")
        raise UnsafeTree(f"unsafe path {show_path(relpath)} in the plugin tree")
    for part in relpath.split("/"):
        if is_dotgit(part):
            raise UnsafeTree(
                f"path {show_path(relpath)} contains a {part!r} segment; plugins may not carry git metadata (.git)"
            )
    return relpath


@dataclass(frozen=True)
class TreeLimits:
    """Caps on the shape of a plugin tree (design §4), checked from git's
    listing before anything is written, and while walking a local tree."""

    max_files: int = 10_000
    max_depth: int = 32  # path segments of a file: `a/b/c` is 3
    max_name_bytes: int = 255  # one segment, UTF-8
    max_path_bytes: int = 1024  # a whole relative path, UTF-8


def check_path(relpath: str, limits: TreeLimits) -> str:
    """check_relpath plus the length and depth caps of `limits`."""
    try:
        encoded = relpath.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeTree(f"path {show_path(relpath)} in the plugin tree is not valid UTF-8") from None
    if len(encoded) > limits.max_path_bytes:
        raise TreeLimitExceeded(
            f"path {show_path(relpath)} is {len(encoded)} bytes long, over the limit of "
            f"{limits.max_path_bytes} (PLUGIN_INSTALL_MAX_PATH_BYTES)"
        )
    parts = relpath.split("/")
    if len(parts) > limits.max_depth:
        raise TreeLimitExceeded(
            f"path {show_path(relpath)} is nested {len(parts)} levels deep, over the limit of "
            f"{limits.max_depth} (PLUGIN_INSTALL_MAX_DEPTH)"
        )
    for part in parts:
        size = len(part.encode("utf-8"))
        if size > limits.max_name_bytes:
            raise TreeLimitExceeded(
                f"name {show_path(part)} in {show_path(relpath)} is {size} bytes long, over the limit of "
                f"{limits.max_name_bytes} (PLUGIN_INSTALL_MAX_NAME_BYTES)"
            )
    return check_relpath(relpath)


def check_file_count(count: int, limits: TreeLimits) -> None:
    if count > limits.max_files:
        raise TreeLimitExceeded(f"the plugin tree has more than {limits.max_files} files (PLUGIN_INSTALL_MAX_FILES)")


def check_tree_paths(paths: Collection[str], limits: TreeLimits) -> None:
    """Check every path of a tree listing (check_path), then the listing as a
    whole: at most `max_files` files, no duplicate path, no name that is both
    a file and a directory, and no two names that differ only by letter case
    or Unicode normalisation (they collide on case-insensitive file systems).
    Raises UnsafeTree or TreeLimitExceeded."""
    check_file_count(len(paths), limits)
    files: set[str] = set()
    for relpath in paths:
        check_path(relpath, limits)
        if relpath in files:
            raise UnsafeTree(f"path {show_path(relpath)} appears twice in the plugin tree (duplicate tree entries)")
        files.add(relpath)
    dirs: set[str] = set()
    for relpath in files:
        parts = relpath.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    both = sorted(files & dirs)
    if both:
        raise UnsafeTree(f"{show_path(both[0])} is both a file and a directory in the plugin tree")
    folded: dict[str, str] = {}
    for name in sorted(files | dirs):
        key = unicodedata.normalize("NFC", name).lower()
        other = folded.setdefault(key, name)
        if other != name:
            raise UnsafeTree(
                f"paths {show_path(other)} and {show_path(name)} differ only by letter case or Unicode "
                "normalisation; they would collide on a case-insensitive file system"
            )


def check_no_markers(files: Mapping[str, bytes]) -> None:
    """Refuse plugin text that could forge or break a CLAUDE.md block: any
    line that looks like a plugin-operator begin/end marker (claude_md)."""
    for relpath in sorted(files):
        line = find_marker_like(files[relpath])
        if line is not None:
            raise UnsafeTree(
                f"{show_path(relpath)} line {line} looks like a plugin-operator CLAUDE.md marker "
                "(<!-- plugin-operator:begin|end … -->); plugins may not contain marker lines"
            )


def tree_digest(files: Iterable[tuple[str, bytes]]) -> str:
    """SHA-256 hex of the tree (see the module docstring for the walk)."""
    entries = sorted((check_relpath(relpath).encode(), content) for relpath, content in files if relpath != MANIFEST)
    digest = hashlib.sha256()
    previous: bytes | None = None
    for path, content in entries:
        if path == previous:
            raise UnsafeTree(f"duplicate path {path.decode()!r} in the plugin tree")
        previous = path
        digest.update(path + b"\0" + content)
    return digest.hexdigest()


def manifest_sha256(data: bytes) -> str | None:
    """The `sha256` a manifest.json declares, or None when it declares none."""
    if len(data) > MAX_META_BYTES:
        raise InvalidPlugin(f"{MANIFEST} is larger than {MAX_META_BYTES} bytes")
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys)
    except RecursionError:
        raise InvalidPlugin(f"{MANIFEST} is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, duplicate keys, huge numbers
        raise InvalidPlugin(f"{MANIFEST} is not valid JSON: {_short(exc)}") from None
    if not isinstance(doc, dict):
        raise InvalidPlugin(f"{MANIFEST} must be a JSON object")
    if _depth(doc) > MAX_META_DEPTH:
        raise InvalidPlugin(f"{MANIFEST} is nested more than {MAX_META_DEPTH} levels deep")
    value = doc.get("sha256")
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256.fullmatch(value.lower()):
        raise InvalidPlugin(f"{MANIFEST} sha256 must be 64 hexadecimal characters")
    return value.lower()


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"duplicate key {key[:100]!r}")
        doc[key] = value
    return doc


def _depth(value: object) -> int:
    """Nesting depth of a parsed JSON/YAML value (iterative: no recursion)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    seen: set[int] = set()
    while stack:
        item, level = stack.pop()
        if not isinstance(item, dict | list) or id(item) in seen:
            continue
        seen.add(id(item))
        deepest = max(deepest, level)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, level + 1) for child in children)
    return deepest


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + " …"


def check_integrity(files: Mapping[str, bytes], digest: str) -> None:
    """Raise IntegrityMismatch when manifest.json declares a different sha256."""
    data = files.get(MANIFEST)
    if data is None:
        return
    expected = manifest_sha256(data)
    if expected is not None and expected != digest:
        raise IntegrityMismatch(
            f"{MANIFEST} declares sha256 {expected} but the tree hashes to {digest}; refusing to install"
        )


@dataclass(frozen=True)
class Skill:
    name: str
    description: str = ""


@dataclass(frozen=True)
class PluginMeta:
    name: str
    version: str = ""
    description: str = ""
    author: str = ""
    tags: tuple[str, ...] = ()
    skills: tuple[Skill, ...] = ()
    runtimes: tuple[str, ...] = ()


def _text(doc: Mapping[str, Any], key: str, limit: int = 4096) -> str:
    value = doc.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):  # the loader keeps every scalar as the text written
        raise InvalidPlugin(f"{PLUGIN_YAML}: {key} must be a string")
    if len(value) > limit:
        raise InvalidPlugin(f"{PLUGIN_YAML}: {key} is longer than {limit} characters")
    return value


def _strings(doc: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = doc.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and len(v) <= 256 for v in value):
        raise InvalidPlugin(f"{PLUGIN_YAML}: {key} must be a list of short strings")
    if len(value) > 256:
        raise InvalidPlugin(f"{PLUGIN_YAML}: {key} has more than 256 entries")
    return tuple(value)


def _author(doc: Mapping[str, Any]) -> str:
    value = doc.get("author")
    if isinstance(value, dict):  # {name: ..., email: ...}
        return _text(value, "name")
    return _text(doc, "author")


def _skills(doc: Mapping[str, Any]) -> tuple[Skill, ...]:
    value = doc.get("skills")
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > 256:
        raise InvalidPlugin(f"{PLUGIN_YAML}: skills must be a list (at most 256)")
    skills: list[Skill] = []
    for item in value:
        if isinstance(item, str):
            name, description = item, ""
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            name, description = item["name"], _text(item, "description")
        else:
            raise InvalidPlugin(f"{PLUGIN_YAML}: each skill must be a name or a mapping with a name")
        # Skill names become directories in the pod (`skills/<skill>/`): never a path.
        if not _SKILL.fullmatch(name):
            raise InvalidPlugin(
                f"{PLUGIN_YAML}: skill name {name!r} is invalid: expected letters, digits, '.', '_' or '-'"
            )
        skills.append(Skill(name, description))
    if len({s.name for s in skills}) != len(skills):
        raise InvalidPlugin(f"{PLUGIN_YAML}: skill names must be unique")
    return tuple(skills)


class _Resolver(yaml.resolver.BaseResolver):
    """Resolves nothing implicitly but null: `version: 1.10` stays "1.10",
    `yes` stays "yes", a date stays its text."""


_Resolver.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])

_STR, _SEQ, _MAP, _NULL = (f"tag:yaml.org,2002:{t}" for t in ("str", "seq", "map", "null"))


class _Constructor(yaml.constructor.BaseConstructor):
    """Strings, lists, mappings and null only; any other tag (`!!python/…`,
    `!!binary`, `!!int` …) is refused; a key may appear once per mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(None, None, f"expected a mapping, found {node.id}", node.start_mark)
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | None):
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "a key must be a string", key_node.start_mark
                )
            if key in mapping:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {str(key)[:100]!r}",
                    key_node.start_mark,
                )
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping

    def _map(self, node: yaml.MappingNode) -> dict[Any, Any]:
        return self.construct_mapping(node, deep=True)

    def _seq(self, node: yaml.SequenceNode) -> list[Any]:
        return self.construct_sequence(node, deep=True)

    def _str(self, node: yaml.ScalarNode) -> str:
        return str(self.construct_scalar(node))

    def _null(self, node: yaml.ScalarNode) -> None:
        self.construct_scalar(node)

    def _undefined(self, node: yaml.Node) -> None:
        raise yaml.constructor.ConstructorError(
            None, None, f"the tag {node.tag[:100]!r} is not allowed in {PLUGIN_YAML}", node.start_mark
        )


_Constructor.add_constructor(_MAP, _Constructor._map)  # type: ignore[type-var]
_Constructor.add_constructor(_SEQ, _Constructor._seq)  # type: ignore[type-var]
_Constructor.add_constructor(_STR, _Constructor._str)  # type: ignore[type-var]
_Constructor.add_constructor(_NULL, _Constructor._null)  # type: ignore[type-var]
_Constructor.add_constructor(None, _Constructor._undefined)  # type: ignore[type-var]


class _Loader(
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    yaml.composer.Composer,
    _Constructor,
    _Resolver,
):
    """A bounded safe loader for plugin.yaml: no implicit typing, no
    duplicate keys, nesting at most MAX_META_DEPTH, at most MAX_YAML_ALIASES
    alias uses (an alias bomb is refused before it is expanded)."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _Constructor.__init__(self)
        _Resolver.__init__(self)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise InvalidPlugin(f"{PLUGIN_YAML} uses more than {MAX_YAML_ALIASES} aliases")
        self._depth += 1
        try:
            if self._depth > MAX_META_DEPTH:
                raise InvalidPlugin(f"{PLUGIN_YAML} is nested more than {MAX_META_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _load_yaml(text: str) -> Any:
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_plugin_yaml(data: bytes, *, expected_name: str) -> PluginMeta:
    """Parse a bounded plugin.yaml with a strict safe loader (_Loader):
    scalars are kept as written, duplicate keys, unknown tags, deep nesting
    and alias bombs are refused. Its `name` is required and must equal the
    plugin name derived from the source, since that name is the install
    directory in the pod."""
    if len(data) > MAX_META_BYTES:
        raise InvalidPlugin(f"{PLUGIN_YAML} is larger than {MAX_META_BYTES} bytes")
    try:
        doc = _load_yaml(data.decode("utf-8"))
    except RecursionError:
        raise InvalidPlugin(f"{PLUGIN_YAML} is nested too deeply") from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidPlugin(f"{PLUGIN_YAML} is not valid YAML: {_short(exc)}") from None
    if not isinstance(doc, dict):
        raise InvalidPlugin(f"{PLUGIN_YAML} must be a mapping")
    name = doc.get("name")
    if not isinstance(name, str) or not PLUGIN_NAME.fullmatch(name) or name in (".", ".."):
        raise InvalidPlugin(f"{PLUGIN_YAML}: name is required and must match {PLUGIN_NAME.pattern}")
    if name != expected_name:
        raise InvalidPlugin(
            f"{PLUGIN_YAML} names the plugin {name!r} but the source names it {expected_name!r}; "
            "they must agree (point the source at the plugin's own directory or rename it)"
        )
    return PluginMeta(
        name=name,
        version=_text(doc, "version", 128),
        description=_text(doc, "description"),
        author=_author(doc),
        tags=_strings(doc, "tags"),
        skills=_skills(doc),
        runtimes=_strings(doc, "runtimes"),
    )
