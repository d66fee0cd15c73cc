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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from plugin_operator.domain.errors import IntegrityMismatch, InvalidPlugin, UnsafeTree
from plugin_operator.domain.source import PLUGIN_NAME

MANIFEST = "manifest.json"
PLUGIN_YAML = "plugin.yaml"
MAX_META_BYTES = 64 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SKILL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_relpath(relpath: str) -> str:
    """A path inside a tree: relative, `/`-separated, no `.`/`..`/empty
    segments, no NUL, backslash or control characters. Raises UnsafeTree."""
    if (
        not relpath
        or relpath.startswith("/")
        or any(ord(c) < 0x20 or c in "\\\x7f" for c in relpath)
        or any(part in ("", ".", "..") for part in relpath.split("/"))
    ):
        raise UnsafeTree(f"unsafe path {relpath!r} in the plugin tree")
    return relpath


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
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidPlugin(f"{MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidPlugin(f"{MANIFEST} must be a JSON object")
    value = doc.get("sha256")
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256.match(value.lower()):
        raise InvalidPlugin(f"{MANIFEST} sha256 must be 64 hexadecimal characters")
    return value.lower()


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
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidPlugin(f"{PLUGIN_YAML}: {key} must be a string")
    text = str(value)
    if len(text) > limit:
        raise InvalidPlugin(f"{PLUGIN_YAML}: {key} is longer than {limit} characters")
    return text


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
        if not _SKILL.match(name):
            raise InvalidPlugin(
                f"{PLUGIN_YAML}: skill name {name!r} is invalid: expected letters, digits, '.', '_' or '-'"
            )
        skills.append(Skill(name, description))
    if len({s.name for s in skills}) != len(skills):
        raise InvalidPlugin(f"{PLUGIN_YAML}: skill names must be unique")
    return tuple(skills)


def parse_plugin_yaml(data: bytes, *, expected_name: str) -> PluginMeta:
    """Parse a bounded plugin.yaml with the safe loader. Its `name` is
    required and must equal the plugin name derived from the source, since
    that name is the install directory in the pod."""
    if len(data) > MAX_META_BYTES:
        raise InvalidPlugin(f"{PLUGIN_YAML} is larger than {MAX_META_BYTES} bytes")
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidPlugin(f"{PLUGIN_YAML} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidPlugin(f"{PLUGIN_YAML} must be a mapping")
    name = doc.get("name")
    if not isinstance(name, str) or not PLUGIN_NAME.match(name) or name in (".", ".."):
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
