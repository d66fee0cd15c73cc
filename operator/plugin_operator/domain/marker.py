"""The marker file written next to a delivered plugin tree in each pod.

What the operator reads back from a pod is untrusted: the marker is bounded,
parsed strictly and only compared with what the operator itself staged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

MARKER_FILE = ".plugin-operator.json"
MAX_MARKER_BYTES = 4096
_SHA = re.compile(r"^[0-9a-f]{40}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Marker:
    source: str
    sha: str | None
    digest: str

    def to_bytes(self, installed_at: str) -> bytes:
        body = {"source": self.source, "sha": self.sha, "digest": self.digest, "installedAt": installed_at}
        return (json.dumps(body, sort_keys=True) + "\n").encode()


def parse_marker(raw: bytes) -> Marker | None:
    """The marker a pod reports, or None when absent or not trustworthy."""
    if not raw.strip() or len(raw) > MAX_MARKER_BYTES:
        return None
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    source, sha, digest = body.get("source"), body.get("sha"), body.get("digest")
    if not isinstance(source, str) or len(source) > 1024:
        return None
    if sha is not None and (not isinstance(sha, str) or not _SHA.fullmatch(sha)):
        return None
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        return None
    return Marker(source=source, sha=sha, digest=digest)
