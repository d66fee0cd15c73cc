"""The `source` grammar (design §3).

    local://<name>          a directory in the operator's registry
    <name>                  same as local://<name>
    github://<owner>/<repo>[/<sub/dir>][#<ref>]

Everything is validated here, before any command runs: an accepted value
never starts with `-`, never holds whitespace or control characters, and no
segment can climb out of a directory (`.`, `..`, empty segments).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from plugin_operator.domain.errors import InvalidSource

# Every pattern is applied with fullmatch: `$` alone would accept a trailing newline
# (the anchors stay for readers that use .match, and for the messages).
PLUGIN_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
# GitHub's own owner/repo alphabet; `_` and `.` are fine inside, never `..`.
_OWNER_OR_REPO = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")
# A path segment inside the repository (the sub-directory).
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9_@+][A-Za-z0-9._@+-]{0,127}$")
# `git check-ref-format` characters minus the ones it forbids, ASCII only.
_REF_CHARS = re.compile(r"^[A-Za-z0-9._/@+=,%!$&'()\-]+$")
_SHA = re.compile(r"^[0-9a-f]{40}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_SOURCE_LENGTH = 512

SourceKind = Literal["local", "github"]


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    name: str
    normalized: str
    owner: str | None = None
    repo: str | None = None
    subdir: str | None = None
    ref: str | None = None

    @property
    def repo_key(self) -> str | None:
        """`owner/repo` for a git source (what resolution and caches key on)."""
        if self.kind != "github":
            return None
        return f"{self.owner}/{self.repo}"

    @property
    def pinned_sha(self) -> str | None:
        """The fragment when it is a full commit SHA (`#<40 hex>`)."""
        return self.ref if self.ref is not None and _SHA.fullmatch(self.ref) else None


def is_sha(value: str) -> bool:
    return bool(_SHA.fullmatch(value))


def check_plugin_name(name: str, what: str = "plugin name") -> str:
    if name in (".", "..") or not PLUGIN_NAME.fullmatch(name):
        raise InvalidSource(
            f"{what} {name!r} is invalid: expected lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, at most 128 characters"
        )
    return name


def check_ref_name(ref: str, what: str = "ref") -> str:
    """Validate a branch or tag name as `git check-ref-format` would, and
    stricter: ASCII only, no leading `-`, nothing a shell or git could read
    as an option or a revision expression."""
    problem = _ref_problem(ref)
    if problem:
        raise InvalidSource(f"{what} {ref!r} is invalid: {problem}")
    return ref


def _ref_problem(ref: str) -> str | None:
    if not ref:
        return "it is empty"
    if len(ref) > 255:
        return "longer than 255 characters"
    if not _REF_CHARS.fullmatch(ref):
        return (
            "only ASCII letters, digits and . _ / @ + = , % ! $ & ' ( ) - are allowed "
            "(no whitespace, control characters, ~ ^ : ? * [ \\ or #)"
        )
    if ref.startswith("-"):
        return "it must not start with '-'"
    if ref == "@" or "@{" in ref:
        return "'@' alone and '@{' are not allowed"
    if ".." in ref:
        return "'..' is not allowed"
    if ref.startswith("/") or ref.endswith("/") or "//" in ref:
        return "empty path components are not allowed"
    if ref.endswith("."):
        return "it must not end with '.'"
    for component in ref.split("/"):
        if component.startswith("."):
            return "a component must not start with '.'"
        if component.endswith(".lock"):
            return "a component must not end with '.lock'"
    return None


def _check_segment(value: str, pattern: re.Pattern[str], what: str, expected: str) -> str:
    if value in (".", "..") or not pattern.fullmatch(value):
        raise InvalidSource(f"{what} {value!r} is invalid: expected {expected}")
    return value


def parse_source(raw: str, *, allow_unpinned: bool) -> Source:
    """Parse and normalise a `spec.source` value; raise InvalidSource saying
    which part is wrong and what was expected."""
    if not isinstance(raw, str):
        raise InvalidSource(f"source must be a string, got {type(raw).__name__}")
    if _CONTROL.search(raw):
        raise InvalidSource(
            f"source {raw!r} is invalid: it contains a control character (a newline, CR, tab ...); "
            "no whitespace is allowed"
        )
    if len(raw) > MAX_SOURCE_LENGTH:
        raise InvalidSource(f"source is longer than {MAX_SOURCE_LENGTH} characters")
    text = raw.strip(" ")
    if not text:
        raise InvalidSource("source is empty: expected local://<name> or github://<owner>/<repo>[#<ref>]")
    scheme, sep, rest = text.partition("://")
    if not sep:
        if "/" in text or ":" in text or "#" in text:
            raise InvalidSource(
                f"source {raw!r} is invalid: expected local://<name>, a bare <name>, "
                "or github://<owner>/<repo>[/<sub/dir>][#<ref>]"
            )
        return _local(text)
    scheme = scheme.lower()
    if scheme == "local":
        return _local(rest)
    if scheme == "github":
        return _github(rest, allow_unpinned=allow_unpinned)
    raise InvalidSource(f"source scheme {scheme!r} is not supported: expected local:// or github://")


def _local(name: str) -> Source:
    check_plugin_name(name, "local plugin name")
    return Source(kind="local", name=name, normalized=f"local://{name}")


def _github(rest: str, *, allow_unpinned: bool) -> Source:
    path, hash_sign, ref = rest.partition("#")
    if hash_sign:
        check_ref_name(ref, "source ref (after '#')")
    elif not allow_unpinned:
        raise InvalidSource(
            "source github://" + path + " is unpinned: add '#<branch, tag or commit>' "
            "(unpinned sources need PLUGIN_ALLOW_UNPINNED=true)"
        )
    parts = path.split("/")
    if len(parts) < 2:
        raise InvalidSource(f"source github://{rest} is invalid: expected github://<owner>/<repo>")
    owner, repo, *sub = parts
    _check_segment(owner, _OWNER_OR_REPO, "owner", "letters, digits, '.', '_' or '-', not starting with '-'")
    if repo.endswith(".git") and len(repo) > 4:
        repo = repo[: -len(".git")]
    _check_segment(repo, _OWNER_OR_REPO, "repository", "letters, digits, '.', '_' or '-', not starting with '-'")
    for segment in sub:
        if segment == "":
            raise InvalidSource(f"sub-directory {'/'.join(sub)!r} is invalid: empty path segment")
        _check_segment(
            segment,
            _PATH_SEGMENT,
            "sub-directory segment",
            "letters, digits, '.', '_', '@', '+' or '-', not '.' or '..', not starting with '-'",
        )
    subdir = "/".join(sub) or None
    last = sub[-1] if sub else repo
    name = last.lower()
    check_plugin_name(name, f"plugin name (from {'sub-directory' if sub else 'repository'} {last!r})")
    normalized = f"github://{owner}/{repo}" + (f"/{subdir}" if subdir else "") + (f"#{ref}" if hash_sign else "")
    return Source(
        kind="github",
        name=name,
        normalized=normalized,
        owner=owner,
        repo=repo,
        subdir=subdir,
        ref=ref if hash_sign else None,
    )
