"""Deliver a staged plugin tree into a pod, read back what a pod holds, remove it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from plugin_operator.delivery.exec import PodExecutor, PodTarget, new_token
from plugin_operator.domain.errors import InvalidPlugin
from plugin_operator.domain.marker import MARKER_FILE, Marker, parse_marker
from plugin_operator.staging import StagedPlugin, tar_stream
from plugin_operator.testhooks import crash_point


def check_deliverable(staged: StagedPlugin) -> None:
    if (staged.path / MARKER_FILE).exists():
        raise InvalidPlugin(f"the plugin tree holds {MARKER_FILE}, a name reserved for the operator's marker")


def payload(staged: StagedPlugin, marker: bytes) -> tuple[bytes, int]:
    """The tar to deliver (the staged tree plus the marker) and its file count,
    which the pod script checks before swapping the tree in."""
    return tar_stream(staged, {MARKER_FILE: marker}), staged.files + 1


async def read_installed(executor: PodExecutor, target: PodTarget, name: str) -> Marker | None:
    return parse_marker(await executor.checked(target, "read", name))


async def install(executor: PodExecutor, target: PodTarget, name: str, payload: bytes, files: int) -> None:
    await executor.checked(target, "install", name, new_token(), str(files), stdin=payload)


@dataclass(frozen=True)
class RemoveReport:
    """What the pod script said about the workspace's CLAUDE.md on removal."""

    removed_blocks: int = 0
    left_alone: str | None = None  # why CLAUDE.md was left untouched, if it was


_MAX_REPORT = 4096
_MAX_REASON = 300
_NOTE = re.compile(r"claude-md: (removed (\d{1,6})|(ambiguous|left-alone): (.+))")


def parse_remove_report(stdout: bytes) -> RemoveReport:
    """The `claude-md: ...` line of the pod script's output. The output is
    untrusted: bounded, decoded leniently, the reason reduced to printable
    characters and cut short; anything unexpected is ignored."""
    text = stdout[:_MAX_REPORT].decode("utf-8", "replace")
    for line in text.splitlines():
        match = _NOTE.fullmatch(line.strip())
        if match is None:
            continue
        if match.group(2) is not None:
            return RemoveReport(removed_blocks=int(match.group(2)))
        reason = "".join(c if c.isprintable() else "?" for c in match.group(4).strip())[:_MAX_REASON]
        kind = "ambiguous content" if match.group(3) == "ambiguous" else "left alone"
        return RemoveReport(left_alone=f"{kind}: {reason}")
    return RemoveReport()


async def remove(executor: PodExecutor, target: PodTarget, name: str, skills: list[str]) -> RemoveReport:
    report = parse_remove_report(await executor.checked(target, "remove", name, new_token(), *skills))
    crash_point("uninstall-after-first-pod")
    return report
