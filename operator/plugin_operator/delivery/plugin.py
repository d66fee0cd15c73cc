"""Deliver a staged plugin tree into a pod, read back what a pod holds, remove it."""

from __future__ import annotations

from plugin_operator.delivery.exec import PodExecutor, PodTarget, new_token
from plugin_operator.domain.errors import InvalidPlugin
from plugin_operator.domain.marker import MARKER_FILE, Marker, parse_marker
from plugin_operator.staging import StagedPlugin, tar_stream


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


async def remove(executor: PodExecutor, target: PodTarget, name: str, skills: list[str]) -> None:
    await executor.checked(target, "remove", name, new_token(), *skills)
