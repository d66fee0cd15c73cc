"""The in-pod script run directly with the host's /bin/sh on a temporary
configs dir (in pods it runs the same way, through pods/exec)."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from plugin_operator.delivery.exec import POD_SCRIPT


def tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def run(op: str, root: Path, name: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    argv = ["/bin/sh", "-c", POD_SCRIPT, "plugin-operator", op, str(root), name, *args]
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=30, check=False)


def install(root: Path, name: str) -> subprocess.CompletedProcess[bytes]:
    files = {"plugin.yaml": f"name: {name}\n".encode(), ".plugin-operator.json": json.dumps({"n": name}).encode()}
    return run("install", root, name, "tok", str(len(files)), stdin=tar_of(files))


def test_installs_of_several_plugins_at_once_into_a_fresh_configs_dir_all_succeed(tmp_path: Path) -> None:
    for attempt in range(10):
        root = tmp_path / f"configs{attempt}"
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(install, [root] * 8, [f"p{n}" for n in range(8)]))
        assert [r.stderr.decode() for r in results if r.returncode] == []
        assert sorted(p.name for p in (root / "plugins").iterdir()) == [f"p{n}" for n in range(8)]


def test_a_plugins_dir_planted_as_a_symlink_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "configs"
    root.mkdir()
    (root / "plugins").symlink_to(elsewhere)
    result = install(root, "p")
    assert result.returncode == 3 and b"is a symlink" in result.stderr
    assert list(elsewhere.iterdir()) == []


def test_read_prints_the_marker_and_remove_takes_the_plugin_away(tmp_path: Path) -> None:
    root = tmp_path / "configs"
    assert install(root, "p").returncode == 0
    assert json.loads(run("read", root, "p").stdout) == {"n": "p"}
    assert run("remove", root, "p", "tok2").returncode == 0
    assert run("read", root, "p").stdout == b""
    assert list((root / "plugins").iterdir()) == []
