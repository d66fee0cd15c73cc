"""Deliver a staged plugin tree into a pod, read back what a pod holds, remove it."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from plugin_operator.delivery.exec import PodExecutor, PodTarget, new_token
from plugin_operator.domain.marker import MARKER_FILE, Marker, parse_marker


def tar_with_marker(tree: Path, marker: bytes) -> tuple[bytes, int]:
    """An uncompressed tar of a staged tree (regular files and dirs only,
    ownership and modes normalised) plus the marker; and the file count."""
    buf = io.BytesIO()
    files = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(tree):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(tree)
            for d in dirnames:
                info = tarfile.TarInfo(str(rel_dir / d))
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            for f in sorted(filenames):
                path = Path(dirpath) / f
                if path.is_symlink() or not path.is_file():
                    continue  # staging refuses these; never ship them
                rel = rel_dir / f
                if str(rel) == MARKER_FILE:
                    continue
                info = tarfile.TarInfo(str(rel))
                info.size = path.stat().st_size
                info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
                files += 1
        info = tarfile.TarInfo(MARKER_FILE)
        info.size, info.mode = len(marker), 0o644
        tar.addfile(info, io.BytesIO(marker))
        files += 1
    return buf.getvalue(), files


async def read_installed(executor: PodExecutor, target: PodTarget, name: str) -> Marker | None:
    return parse_marker(await executor.checked(target, "read", name))


async def install(executor: PodExecutor, target: PodTarget, name: str, payload: bytes, files: int) -> None:
    await executor.checked(target, "install", name, new_token(), str(files), stdin=payload)


async def remove(executor: PodExecutor, target: PodTarget, name: str, skills: list[str]) -> None:
    await executor.checked(target, "remove", name, new_token(), *skills)
