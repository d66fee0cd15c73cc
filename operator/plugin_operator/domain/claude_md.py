"""The marker lines that delimit a plugin's block in a workspace's `CLAUDE.md`
(design §4: "blocks written by this operator carry explicit begin and end
marker lines naming the plugin").

    <!-- plugin-operator:begin <name> -->
    ... the plugin's lines ...
    <!-- plugin-operator:end <name> -->

`BEGIN` / `END` are the exact lines the operator writes (`.format(name=...)`);
`begin_line` / `end_line` build them. `is_marker_like` is deliberately
generous: it recognises anything a reader of CLAUDE.md might take for one of
our markers (any letter case, any whitespace, other text in the comment), so
that plugin content which could forge or break a block is refused at staging
(design §4) and the uninstall side can treat such lines with suspicion.
"""

from __future__ import annotations

import re

BEGIN = "<!-- plugin-operator:begin {name} -->"
END = "<!-- plugin-operator:end {name} -->"

# An HTML comment opening, then (anywhere later on the line) `plugin-operator`
# `:` `begin|end`, with any whitespace around the colon, any letter case. The
# closing `-->` is not required: an unterminated comment is still suspicious.
_MARKER_LIKE = re.compile(rb"<!--.*?plugin-operator\s*:\s*(?:begin|end)", re.IGNORECASE | re.DOTALL)

_MENTION = re.compile(rb"plugin-operator\s*:\s*(?:begin|end)", re.IGNORECASE)


def begin_line(name: str) -> str:
    """The begin marker line for plugin `name` (no trailing newline)."""
    return BEGIN.format(name=name)


def end_line(name: str) -> str:
    """The end marker line for plugin `name` (no trailing newline)."""
    return END.format(name=name)


def is_marker_like(line: bytes | str) -> bool:
    """True when `line` (one line, with or without its newline / CR) looks
    like a plugin-operator begin or end marker."""
    raw = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line
    return _MARKER_LIKE.search(raw.rstrip()) is not None


def find_marker_like(content: bytes) -> int | None:
    """The 1-based number of the first marker-like line in `content`, or None."""
    if _MENTION.search(content) is None:  # fast path: most files never mention it
        return None
    for number, line in enumerate(content.split(b"\n"), start=1):
        if is_marker_like(line):
            return number
    return None
