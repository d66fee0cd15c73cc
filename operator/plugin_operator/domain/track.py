"""The `track` grammar (design §3), stored in `workspace_plugins.tracked_ref`.

none                never swept
ref:<name> | <name> a branch (or tag); drift when it moves
tag:<tag>           drift only when that tag is re-pointed (UpstreamRewritten)
tag:latest          the highest semantic-version tag
semver:<range>      the highest tag within the range
sha:<40 hex>        pinned; never drifts

What counts as an upstream rewrite for each kind (never approved by
`updatePolicy: Automatic`) is decided in domain.drift.classify_rewrite; how
the install and the sweep read the same ref, in domain.refs
(resolve_install_ref, select_followed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from plugin_operator.domain.errors import InvalidSource, InvalidTrack
from plugin_operator.domain.semver import SemverRange
from plugin_operator.domain.source import Source, check_ref_name, is_sha

TrackKind = Literal["none", "ref", "tag", "latest", "semver", "sha"]


@dataclass(frozen=True)
class Track:
    kind: TrackKind
    value: str  # the ref/tag name, the range, the SHA; '' for none, 'latest' for latest

    @property
    def normalized(self) -> str:
        if self.kind == "none":
            return "none"
        if self.kind == "latest":
            return "tag:latest"
        return f"{self.kind}:{self.value}"

    @property
    def drifts(self) -> bool:
        """Whether the sweep ever looks upstream for this track."""
        return self.kind not in ("none", "sha")


NONE = Track("none", "")


def _ref(value: str, what: str) -> str:
    try:
        return check_ref_name(value, what)
    except InvalidSource as exc:
        raise InvalidTrack(exc.message) from None


def parse_track(raw: str | None, source: Source) -> Track:
    """Parse and normalise `spec.track`; omitted means "what the source's
    fragment says" (`#v1.2.0` -> `ref:v1.2.0`, `#<sha>` -> `sha:<sha>`)."""
    text = (raw or "").strip(" ")  # spaces only: a newline or other control character is refused below
    if any(ord(c) < 0x20 or c == "\x7f" for c in text):
        raise InvalidTrack(f"track {text!r} is invalid: it contains a control character")
    if not text:
        if source.kind != "github" or source.ref is None:
            return NONE
        if is_sha(source.ref):
            return Track("sha", source.ref)
        return Track("ref", source.ref)
    if text == "none":
        return NONE
    if source.kind == "local":
        raise InvalidTrack(f"track {text!r}: local:// sources have no upstream; use 'none' or omit track")
    kind, colon, value = text.partition(":")
    if not colon:
        return Track("ref", _ref(text, "track"))
    if kind == "ref":
        return Track("ref", _ref(value, "track ref"))
    if kind == "tag":
        if value == "latest":
            return Track("latest", "latest")
        return Track("tag", _ref(value, "track tag"))
    if kind == "semver":
        return Track("semver", SemverRange.parse(value).text)
    if kind == "sha":
        if not is_sha(value):
            raise InvalidTrack(f"track sha {value!r} is invalid: expected 40 lowercase hexadecimal characters")
        return Track("sha", value)
    raise InvalidTrack(
        f"track {text!r} is invalid: expected none, ref:<name>, <name>, tag:<tag>, tag:latest, "
        "semver:<range> or sha:<40 hex>"
    )
