"""Ref tables, semantic versions and ref selection (design §3, Resolution).

A `RefTable` is what one `git ls-remote` of a repository says: every branch
and tag, annotated tags peeled to their commit. Selection is exact
(`refs/heads/<n>` or `refs/tags/<n>`, never a suffix) and pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from plugin_operator.domain.errors import InvalidTrack, RefNotFound
from plugin_operator.domain.semver import SemverRange, Version
from plugin_operator.domain.source import Source, is_sha
from plugin_operator.domain.track import Track

_HEADS = "refs/heads/"
_TAGS = "refs/tags/"
_PEELED = "^{}"


@dataclass(frozen=True)
class RefTable:
    """Branches and tags of one repository, each mapped to a commit SHA."""

    heads: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    head: str | None = None  # what the remote's HEAD points at (default branch)
    label: str = "repository"  # e.g. 'owner/repo', for messages

    @classmethod
    def parse(cls, ls_remote_output: str, *, label: str = "repository") -> RefTable:
        """Parse `git ls-remote` output (`<sha>\\t<ref>` lines, `ref: ...` symref lines ignored)."""
        heads: dict[str, str] = {}
        tags: dict[str, str] = {}
        peeled: dict[str, str] = {}
        head: str | None = None
        for line in ls_remote_output.splitlines():
            sha, tab, ref = line.partition("\t")
            sha = sha.strip()
            if not tab or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", sha):
                continue  # `ref: refs/heads/main\tHEAD` symref lines and noise
            if ref == "HEAD":
                head = sha
            elif ref.startswith(_HEADS):
                heads[ref[len(_HEADS) :]] = sha
            elif ref.startswith(_TAGS):
                name = ref[len(_TAGS) :]
                if name.endswith(_PEELED):
                    peeled[name[: -len(_PEELED)]] = sha
                else:
                    tags[name] = sha
        tags.update({name: sha for name, sha in peeled.items() if name in tags})
        return cls(heads=heads, tags=tags, head=head, label=label)

    def describe(self, limit: int = 8) -> str:
        """A short list of what exists, for 'not found' messages."""

        def some(names: Iterable[str]) -> str:
            ordered = sorted(names)
            shown = ", ".join(ordered[:limit])
            return (shown + f", … ({len(ordered)} in all)") if len(ordered) > limit else (shown or "none")

        return f"branches: {some(self.heads)}; tags: {some(self.tags)}"


@dataclass(frozen=True)
class Resolved:
    sha: str
    ref_name: str | None  # full ref, e.g. 'refs/tags/v1.2.0'; None for a pinned SHA
    note: str | None = None


def highest_tag(table: RefTable, within: SemverRange | None = None) -> tuple[str, Version] | None:
    """The highest semver tag (optionally within a range); pre-releases count
    only when no release qualifies. Non-semver tags are ignored."""
    releases: list[tuple[Version, str]] = []
    pre: list[tuple[Version, str]] = []
    for name in table.tags:
        version = Version.parse(name)
        if version is None or (within is not None and not within.contains(version)):
            continue
        (pre if version.is_prerelease else releases).append((version, name))
    pool = releases or pre
    if not pool:
        return None
    # Same version under two names (`1.2.0` and `v1.2.0`): prefer the `v` one, deterministically.
    version, name = max(pool, key=lambda item: (item[0], item[1].startswith("v"), item[1]))
    return name, version


# --- selection ---------------------------------------------------------------


def _by_name(name: str, table: RefTable) -> Resolved:
    branch = table.heads.get(name)
    tag = table.tags.get(name)
    if branch is not None:
        note = None
        if tag is not None:
            note = f"both a branch and a tag are named {name!r}; using the branch refs/heads/{name}"
        return Resolved(branch, _HEADS + name, note)
    if tag is not None:
        return Resolved(tag, _TAGS + name)
    if is_sha(name):
        return Resolved(name, None, "a commit SHA; not checked against the remote's refs")
    raise RefNotFound(f"no branch or tag named {name!r} in {table.label} ({table.describe()})")


def select(track: Track | str, table: RefTable) -> Resolved:
    """Resolve a tracked ref (or a bare ref name) against a ref table."""
    if isinstance(track, str):
        return _by_name(track, table)
    if track.kind == "ref":
        return _by_name(track.value, table)
    if track.kind == "tag":
        sha = table.tags.get(track.value)
        if sha is None:
            raise RefNotFound(f"no tag named {track.value!r} in {table.label} ({table.describe()})")
        return Resolved(sha, _TAGS + track.value)
    if track.kind in ("latest", "semver"):
        within = SemverRange.parse(track.value) if track.kind == "semver" else None
        found = highest_tag(table, within)
        if found is None:
            wanted = f"within {track.value!r}" if within else "at all"
            raise RefNotFound(f"no semantic-version tag {wanted} in {table.label} ({table.describe()})")
        name, version = found
        note = f"pre-release {version}: no release qualifies" if version.is_prerelease else None
        return Resolved(table.tags[name], _TAGS + name, note)
    if track.kind == "sha":
        return Resolved(track.value, None)
    raise InvalidTrack("track 'none' is never resolved upstream; resolve the source's own ref instead")


def select_followed(track: Track, table: RefTable, installed_ref: str | None) -> Resolved:
    """What the sweep compares the install against: the tracked ref, read as
    the same kind of ref the install resolved (`installed_ref`, the install's
    status.resolvedRef) when that names the tracked ref.

    A `ref:<name>` installed from the tag `<name>` keeps following the tag
    (a branch of the same name created later does not shadow it), and one
    installed from the branch keeps following the branch. The followed ref
    gone upstream is an error (said in status), never a silent switch to
    the other kind."""
    if track.kind == "ref" and installed_ref in (_HEADS + track.value, _TAGS + track.value):
        assert installed_ref is not None
        kind = "branch" if installed_ref.startswith(_HEADS) else "tag"
        sha = (table.heads if kind == "branch" else table.tags).get(track.value)
        if sha is None:
            raise RefNotFound(
                f"the {kind} {track.value!r} the install follows ({installed_ref}) no longer exists in "
                f"{table.label} ({table.describe()})"
            )
        return Resolved(sha, installed_ref)
    return select(track, table)


def resolve_install_ref(source: Source, track: Track, table: RefTable) -> Resolved:
    """The commit an install of `source` starts from, read the way `track`
    follows it, so that the install and the sweep agree on the ref:

    - no fragment: what the track points at (a drifting track), else HEAD;
    - `#<name>` with `tag:<name>`: the tag `<name>` (even when a branch of
      that name exists);
    - `#<name>` with `tag:latest` / `semver:<range>`: the tag `<name>` when it
      exists (those tracks follow tags only);
    - otherwise (`ref:`, none, a different name): the branch, else the tag,
      as for `ref:<name>` (design §3 Resolution)."""
    if source.kind != "github":
        raise ValueError("local sources have no upstream ref")
    name = source.ref
    if name is None:
        return select(track, table) if track.drifts else resolve_source_ref(source, table)
    if track.kind == "tag" and track.value == name:
        return select(track, table)
    if track.kind in ("latest", "semver") and name in table.tags:
        note = f"both a branch and a tag are named {name!r}; using the tag (track {track.normalized} follows tags)"
        return Resolved(table.tags[name], _TAGS + name, note if name in table.heads else None)
    return _by_name(name, table)


def resolve_source_ref(source: Source, table: RefTable) -> Resolved:
    """The commit a source points at: its `#ref` fragment, else the remote's HEAD."""
    if source.kind != "github":
        raise ValueError("local sources have no upstream ref")
    if source.ref is not None:
        return _by_name(source.ref, table)
    if table.head is None:
        raise RefNotFound(f"{table.label} has no default branch (HEAD); pin the source with '#<ref>'")
    return Resolved(table.head, "HEAD", "unpinned source: following the default branch")
