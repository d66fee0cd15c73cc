"""Semantic versions and version ranges for `tag:latest` and `semver:<range>`.

Versions are semver 2.0 with an optional leading `v`. Ranges are an AND of
comparators (comma or space separated): `^1.2`, `~1.2.3`, `>=1.2 <2`,
`=1.2.3`, `1.x`, `1.2.*`, `*`. Bounds follow npm: an upper bound excludes the
pre-releases of the next line (`<2` is `<2.0.0-0`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from plugin_operator.domain.errors import InvalidTrack

# Numeric components longer than this are not versions (and Python's int()
# refuses more than 4300 digits): a hostile tag `v<5000 digits>.0.0` is simply
# not semver, and a range naming such a number is refused.
MAX_NUMBER_DIGITS = 64

_SEMVER = re.compile(
    r"v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?",
    re.ASCII,  # `\d` is 0-9 only, never other scripts' digits
)


@total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Version | None:
        """A semver 2.0 version with an optional leading `v`; None if it is not one."""
        match = _SEMVER.fullmatch(text)
        if not match:
            return None
        pre = tuple(match.group(4).split(".")) if match.group(4) else ()
        numbers = [match.group(1), match.group(2), match.group(3), *(p for p in pre if p.isdigit())]
        if any(len(n) > MAX_NUMBER_DIGITS for n in numbers):
            return None
        return cls(int(match.group(1)), int(match.group(2)), int(match.group(3)), pre)

    @property
    def is_prerelease(self) -> bool:
        return bool(self.prerelease)

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __str__(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return core + ("-" + ".".join(self.prerelease) if self.prerelease else "")


def _floor(major: int, minor: int = 0, patch: int = 0) -> Version:
    """The lowest version of a line, below its own pre-releases (`X.Y.Z-0`)."""
    return Version(major, minor, patch, ("0",))


_PARTIAL = re.compile(
    r"v?(?P<major>\d+|[xX*])(?:\.(?P<minor>\d+|[xX*]))?(?:\.(?P<patch>\d+|[xX*]))?"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z.-]+)?",
    re.ASCII,
)
_COMPARATOR = re.compile(r"(\^|~|>=|<=|>|<|=)?(.+)", re.DOTALL)


def _partial(text: str, whole: str) -> tuple[int | None, int | None, int | None, tuple[str, ...]]:
    match = _PARTIAL.fullmatch(text)
    if not match:
        raise InvalidTrack(
            f"semver range {whole[:200]!r}: {text[:200]!r} is not a version such as 1, 1.2, 1.2.3 or 1.x"
        )
    pre = tuple(match.group("pre").split(".")) if match.group("pre") else ()
    for number in (*(match.group(k) or "" for k in ("major", "minor", "patch")), *(p for p in pre if p.isdigit())):
        if len(number) > MAX_NUMBER_DIGITS:
            raise InvalidTrack(
                f"semver range {whole[:200]!r}: a version number is longer than {MAX_NUMBER_DIGITS} digits"
            )
    parts: list[int | None] = []
    for key in ("major", "minor", "patch"):
        value = match.group(key)
        parts.append(None if value is None or value in "xX*" else int(value))
    # Anything after a wildcard is a wildcard too (`1.x.3` means `1.x`).
    for i in range(1, 3):
        if parts[i - 1] is None:
            parts[i] = None
    if pre and parts[2] is None:
        raise InvalidTrack(f"semver range {whole!r}: a pre-release needs a full version, got {text!r}")
    return parts[0], parts[1], parts[2], pre


Bound = tuple[str, Version]  # ('>=' | '>' | '<' | '<=', version)


def _comparator_bounds(token: str, whole: str) -> list[Bound]:
    match = _COMPARATOR.fullmatch(token)
    assert match is not None  # `.+` after an optional operator always matches
    op, text = match.group(1) or "=", match.group(2)
    major, minor, patch, pre = _partial(text, whole)
    if major is None:  # `*`, `x`, `>=*`: anything
        return [] if op in ("=", ">=", "<=", "^", "~") else [("<", _floor(0))]
    if op == "^":
        low = Version(major, minor or 0, patch or 0, pre)
        if major > 0 or minor is None:
            high = _floor(major + 1)
        elif minor > 0 or patch is None:
            high = _floor(0, minor + 1)
        else:
            high = _floor(0, 0, patch + 1)
        return [(">=", low), ("<", high)]
    if op == "~":
        low = Version(major, minor or 0, patch or 0, pre)
        high = _floor(major + 1) if minor is None else _floor(major, minor + 1)
        return [(">=", low), ("<", high)]
    if patch is not None:
        exact = Version(major, minor or 0, patch, pre)
        return [("=", exact)] if op == "=" else [(op, exact)]
    # A partial version names a whole line: [line_low, line_high).
    line_low = Version(major, minor or 0, 0)
    next_line = Version(major + 1, 0, 0) if minor is None else Version(major, minor + 1, 0)
    line_high = _floor(next_line.major, next_line.minor)
    if op == "=":
        return [(">=", line_low), ("<", line_high)]
    if op == ">=":
        return [(">=", line_low)]
    if op == ">":
        return [(">=", next_line)]
    if op == "<":
        return [("<", _floor(major, minor or 0))]
    return [("<", line_high)]  # '<='


@dataclass(frozen=True)
class SemverRange:
    """An AND of comparators: `^1.2`, `~1.2.3`, `>=1.2, <2`, `1.x`, `*` …"""

    text: str
    bounds: tuple[Bound, ...]

    @classmethod
    def parse(cls, raw: str) -> SemverRange:
        text = raw.strip(" ")
        if any(ord(c) < 0x20 or c == "\x7f" for c in text):
            raise InvalidTrack(f"semver range {raw!r} is invalid: it contains a control character")
        if not text:
            raise InvalidTrack("semver range is empty: expected e.g. ^1.2, ~1.2.3, >=1.0 <2 or 1.x")
        if "||" in text:
            raise InvalidTrack(f"semver range {raw!r}: '||' is not supported; use one range")
        # `>= 1.2` is `>=1.2`: glue operators to their version before splitting.
        glued = re.sub(r"(\^|~|>=|<=|>|<|=)\s+", r"\1", text)
        tokens = [t for t in re.split(r"[\s,]+", glued) if t]
        bounds: list[Bound] = []
        for token in tokens:
            bounds.extend(_comparator_bounds(token, raw))
        return cls(text=" ".join(tokens), bounds=tuple(bounds))

    def contains(self, version: Version) -> bool:
        for op, bound in self.bounds:
            ok = {
                "=": version == bound,
                ">=": version >= bound,
                ">": version > bound,
                "<": version < bound,
                "<=": version <= bound,
            }[op]
            if not ok:
                return False
        return True

    def __str__(self) -> str:
        return self.text
