"""The in-pod script run directly with the host's /bin/sh on a temporary
configs dir (in pods it runs the same way, through pods/exec)."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from plugin_operator.delivery.exec import POD_SCRIPT
from plugin_operator.delivery.plugin import RemoveReport, parse_remove_report
from plugin_operator.domain.claude_md import begin_line, end_line


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
        visible = sorted(p.name for p in (root / "plugins").iterdir() if not p.name.startswith("."))
        assert visible == [f"p{n}" for n in range(8)]
        assert all((root / "plugins" / f"p{n}" / "plugin.yaml").is_file() for n in range(8))


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


# -- CLAUDE.md on removal (design §4); the hostile variants are in tests/hostile/test_pod_script.py --

BEGIN, END = b"<!-- plugin-operator:begin p -->", b"<!-- plugin-operator:end p -->"
BUSYBOX = shutil.which("busybox")
SHELLS = [
    pytest.param(None, id="host-sh"),
    pytest.param("busybox", id="busybox", marks=pytest.mark.skipif(BUSYBOX is None, reason="no busybox")),
]


def remove_with(shell: str | None, root: Path, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    if shell is None:
        return run("remove", root, "p", "tok")
    assert BUSYBOX is not None
    bindir = tmp_path / "busybox-bin"
    bindir.mkdir(exist_ok=True)
    for tool in ("awk", "sh", "grep", "tr", "wc", "tail", "mv", "rm", "ls", "cut", "chmod", "head", "find", "mkdir"):
        if not (bindir / tool).exists():
            (bindir / tool).symlink_to(BUSYBOX)
    argv = [BUSYBOX, "sh", "-c", POD_SCRIPT, "plugin-operator", "remove", str(root), "p", "tok"]
    return subprocess.run(argv, capture_output=True, timeout=30, check=False, env={"PATH": str(bindir)})


@pytest.mark.parametrize("shell", SHELLS)
def test_remove_takes_out_exactly_the_plugins_block(tmp_path: Path, shell: str | None) -> None:
    root = tmp_path / "configs"
    assert install(root, "p").returncode == 0
    doc = root / "CLAUDE.md"
    doc.write_bytes(b"# Mine\r\n" + BEGIN + b"\r\nrule\r\n" + END + b"\r\n" + b"tail without newline")
    result = remove_with(shell, root, tmp_path)
    assert result.returncode == 0, result.stderr
    assert doc.read_bytes() == b"# Mine\r\ntail without newline"
    assert parse_remove_report(result.stdout) == RemoveReport(removed_blocks=1)


@pytest.mark.parametrize("shell", SHELLS)
def test_remove_leaves_an_unterminated_block_alone_and_says_so(tmp_path: Path, shell: str | None) -> None:
    root = tmp_path / "configs"
    assert install(root, "p").returncode == 0
    doc = root / "CLAUDE.md"
    content = b"# Mine\n" + BEGIN + b"\nrule\nthe user's own notes, written after the block\n"
    doc.write_bytes(content)
    result = remove_with(shell, root, tmp_path)
    assert result.returncode == 0, result.stderr
    assert doc.read_bytes() == content
    assert not (root / "plugins" / "p").exists()
    report = parse_remove_report(result.stdout)
    assert report.left_alone == "ambiguous content: the begin marker for p has no end marker, line 2"


def test_the_script_removes_the_markers_the_operator_writes() -> None:
    assert begin_line("p").encode() == BEGIN and end_line("p").encode() == END
    assert '<!-- plugin-operator:begin " name " -->' in POD_SCRIPT
    assert '<!-- plugin-operator:end " name " -->' in POD_SCRIPT


def test_the_report_from_the_pod_is_bounded_and_sanitised() -> None:
    hostile = b"noise\nclaude-md: ambiguous: " + b"\x1b[31m" + b"x" * 10_000 + b"\n"
    report = parse_remove_report(hostile)
    assert report.left_alone is not None and len(report.left_alone) < 400 and "\x1b" not in report.left_alone
    assert parse_remove_report(b"claude-md: removed 99999999999\n") == RemoveReport()
    assert parse_remove_report(b"") == RemoveReport()


# -- the operator's side: uninstall with the real script behind a fake exec ----------


class _LocalExecutor:
    """Runs the pod script with the host's /bin/sh on a directory per pod."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs

    async def checked(self, target: Any, op: str, *args: str, stdin: bytes | None = None) -> bytes:
        argv = ["/bin/sh", "-c", POD_SCRIPT, "plugin-operator", op, str(self.dirs[target.pod]), *args]
        done = await asyncio.to_thread(subprocess.run, argv, input=stdin or b"", capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout


class _Kube:
    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods
        self.statuses: list[Mapping[str, Any]] = []

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return self.pods

    async def patch_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.statuses.append(status)

    async def workload_of(self, namespace: str, kind: str, name: str) -> None:
        return None


class _Mirror:
    async def install_deleted(self, obj: Mapping[str, Any]) -> None:
        pass


async def test_uninstall_reports_a_claude_md_left_alone_and_still_completes(tmp_path: Path) -> None:
    from plugin_operator.reconcile.deps import Deps
    from plugin_operator.reconcile.restart import Restarter
    from plugin_operator.reconcile.uninstall import uninstall

    dirs = {"ws-0": tmp_path / "ws-0", "ws-1": tmp_path / "ws-1"}
    for root in dirs.values():
        assert install(root, "p").returncode == 0
    (dirs["ws-0"] / "CLAUDE.md").write_bytes(b"mine\n" + BEGIN + b"\nrule\n" + END + b"\n")
    ambiguous = b"mine\n" + BEGIN + b"\nrule and the user's notes after it\n"
    (dirs["ws-1"] / "CLAUDE.md").write_bytes(ambiguous)
    pods = [
        {
            "metadata": {"name": name, "labels": {}},
            "spec": {"containers": [{"name": "agent", "env": [{"name": "CONFIGS_DIR", "value": str(root)}]}]},
            "status": {"phase": "Running"},
        }
        for name, root in dirs.items()
    ]
    events: list[tuple[str, str, str]] = []
    kube = _Kube(pods)
    deps = Deps(
        settings=None,  # type: ignore[arg-type]
        kube=kube,  # type: ignore[arg-type]
        resolver=None,  # type: ignore[arg-type]
        stager=None,  # type: ignore[arg-type]
        executor=_LocalExecutor(dirs),  # type: ignore[arg-type]
        mirror=_Mirror(),  # type: ignore[arg-type]
        restarter=Restarter(lambda *a: asyncio.sleep(0)),
        emitter=lambda obj: lambda *event: events.append(event),
    )
    obj = {
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"workspace": "ws", "source": "local://p", "restart": "None"},
        "status": {"pluginName": "p", "installedDigest": "d" * 64, "installedSkills": []},
    }
    outcome = await uninstall(deps, obj)
    assert outcome.message == "removed" and outcome.retry_after is None
    assert (dirs["ws-0"] / "CLAUDE.md").read_bytes() == b"mine\n"
    assert (dirs["ws-1"] / "CLAUDE.md").read_bytes() == ambiguous
    assert not (dirs["ws-1"] / "plugins" / "p").exists()
    (warning,) = [e for e in events if e[1] == "ClaudeMdLeftAlone"]
    assert warning[0] == "Warning" and "ws-1" in warning[2] and "has no end marker, line 2" in warning[2]
    (status,) = kube.statuses
    by_pod = {p["name"]: p["message"] for p in status["pods"]}
    assert "CLAUDE.md left untouched" in by_pod["ws-1"] and "no end marker" in by_pod["ws-1"]
    assert by_pod["ws-0"] == "p removed"


# -- the atomic swap (design §5) and the pod's own errors in words ----------------


def _bin_dir(tmp_path: Path) -> Path:
    assert BUSYBOX is not None
    bindir = tmp_path / "busybox-bin"
    bindir.mkdir(exist_ok=True)
    tools = ("awk", "sh", "grep", "tr", "wc", "tail", "mv", "rm", "ls", "cut", "chmod", "head", "find", "mkdir")
    for tool in (*tools, "tar", "ln", "readlink", "dirname", "cat", "printf"):
        if not (bindir / tool).exists():
            (bindir / tool).symlink_to(BUSYBOX)
    return bindir


def run_with(
    shell: str | None, tmp_path: Path, op: str, root: Path, name: str, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    if shell is None:
        return run(op, root, name, *args, stdin=stdin)
    assert BUSYBOX is not None
    argv = [BUSYBOX, "sh", "-c", POD_SCRIPT, "plugin-operator", op, str(root), name, *args]
    env = {"PATH": str(_bin_dir(tmp_path))}
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=60, check=False, env=env)


def versioned(name: str, version: int, extra: int = 0) -> tuple[bytes, int]:
    files = {
        "plugin.yaml": f"name: {name}\nversion: {version}\n".encode(),
        ".plugin-operator.json": json.dumps({"v": version}).encode(),
        **{f"rules/r{i}.md": b"rule\n" for i in range(extra)},
    }
    return tar_of(files), len(files)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_reader_never_sees_the_plugin_missing_while_versions_swap(tmp_path: Path, shell: str | None) -> None:
    import threading

    root = tmp_path / "configs"
    data, files = versioned("p", 0)
    assert run_with(shell, tmp_path, "install", root, "p", "t0", str(files), stdin=data).returncode == 0
    plugin_yaml = root / "plugins" / "p" / "plugin.yaml"
    stop = threading.Event()
    reads, missing, torn = [0], [0], [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                text = plugin_yaml.read_text()
                if not text.startswith("name: p\nversion: "):
                    torn[0] += 1
            except OSError:
                missing[0] += 1
            reads[0] += 1

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for version in range(1, 31):
            data, files = versioned("p", version, extra=version % 5)
            result = run_with(shell, tmp_path, "install", root, "p", f"t{version}", str(files), stdin=data)
            assert result.returncode == 0, result.stderr
    finally:
        stop.set()
        thread.join()
    assert reads[0] > 1000 and missing[0] == 0 and torn[0] == 0, (reads, missing, torn)
    assert json.loads(run_with(shell, tmp_path, "read", root, "p").stdout) == {"v": 30}
    assert (root / "plugins" / "p").is_symlink()
    # Only the current version is kept, no leftovers.
    assert sorted(p.name for p in (root / "plugins").iterdir()) == ["..p@t30", "p"]


@pytest.mark.parametrize("shell", SHELLS)
def test_a_plain_directory_from_before_is_migrated_and_a_planted_link_replaced_not_followed(
    tmp_path: Path, shell: str | None
) -> None:
    root = tmp_path / "configs"
    (root / "plugins" / "old").mkdir(parents=True)
    (root / "plugins" / "old" / ".plugin-operator.json").write_text('{"v": "plain"}')
    assert json.loads(run_with(shell, tmp_path, "read", root, "old").stdout) == {"v": "plain"}
    data, files = versioned("old", 1)
    assert run_with(shell, tmp_path, "install", root, "old", "t1", str(files), stdin=data).returncode == 0
    assert (root / "plugins" / "old").is_symlink() and json.loads(
        (root / "plugins/old/.plugin-operator.json").read_text()
    ) == {"v": 1}
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep\n")
    for planted in ("../../outside", str(outside), "..p@x/../../../outside", "..p@nonexistent"):
        (root / "plugins" / "p").unlink(missing_ok=True)
        (root / "plugins" / "p").symlink_to(planted)
        assert run_with(shell, tmp_path, "read", root, "p").stdout == b""  # a planted link is not read
        data, files = versioned("p", 1)
        result = run_with(shell, tmp_path, "install", root, "p", "t1", str(files), stdin=data)
        assert result.returncode == 0, result.stderr
        assert sorted(p.name for p in outside.iterdir()) == ["precious"]
        assert json.loads(run_with(shell, tmp_path, "read", root, "p").stdout) == {"v": 1}
    (root / "plugins" / "p").unlink()
    (root / "plugins" / "p").symlink_to(outside)
    assert run_with(shell, tmp_path, "remove", root, "p", "t2").returncode == 0
    assert sorted(p.name for p in outside.iterdir()) == ["precious"]
    assert not (root / "plugins" / "p").exists() and not (root / "plugins" / "p").is_symlink()


@pytest.mark.parametrize("shell", SHELLS)
def test_a_read_only_configs_dir_is_said_in_words(tmp_path: Path, shell: str | None) -> None:
    import os

    root = tmp_path / "configs"
    (root / "plugins").mkdir(parents=True)
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions; the fault suite mounts a read-only tmpfs instead")
    (root / "plugins").chmod(0o555)
    try:
        data, files = versioned("p", 1)
        result = run_with(shell, tmp_path, "install", root, "p", "t1", str(files), stdin=data)
    finally:
        (root / "plugins").chmod(0o755)
    assert result.returncode == 3 and b"(EACCES)" in result.stderr, result.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_a_file_size_limit_is_said_in_words(tmp_path: Path, shell: str | None) -> None:
    import resource

    root = tmp_path / "configs"
    files = {"plugin.yaml": b"name: p\n", ".plugin-operator.json": b"{}", "big.bin": b"x" * 200_000}

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    argv = ["/bin/sh"] if shell is None else [str(BUSYBOX), "sh"]
    env = None if shell is None else {"PATH": str(_bin_dir(tmp_path))}
    result = subprocess.run(
        [*argv, "-c", POD_SCRIPT, "plugin-operator", "install", str(root), "p", "t1", "3"],
        input=tar_of(files),
        capture_output=True,
        timeout=30,
        check=False,
        preexec_fn=limit,
        env=env,
    )
    assert result.returncode == 3, result.stderr
    assert b"unpacking failed: a file is too large" in result.stderr and b"(EFBIG" in result.stderr, result.stderr
    assert not (root / "plugins" / "p").exists()
    assert [p.name for p in (root / "plugins").iterdir()] == []


def test_the_explanations_name_the_errno() -> None:
    for text, want in [
        ("tar: write error: No space left on device", "no space left on device in /c/plugins (ENOSPC)"),
        ("mkdir: cannot create directory: Read-only file system", "read-only (EROFS)"),
        ("Permission denied", "(EACCES)"),
        ("Not a directory", "(ENOTDIR)"),
    ]:
        script = POD_SCRIPT.replace(
            'case "$op" in\nread)', 'explain "$PO_ERR" /c/plugins; exit 0\ncase "$op" in\nread)'
        )
        done = subprocess.run(
            ["/bin/sh", "-c", script, "plugin-operator", "read", "/c", "p"],
            capture_output=True,
            env={"PO_ERR": text, "PATH": "/usr/bin:/bin"},
            check=False,
        )
        assert want in done.stdout.decode(), (text, done.stdout, done.stderr)


def test_exec_and_websocket_failures_are_said_in_words() -> None:
    from kubernetes.client.exceptions import ApiException
    from websocket import WebSocketBadStatusException, WebSocketConnectionClosedException

    from plugin_operator.delivery.exec import PodTarget, explain_exec_failure

    target = PodTarget("ns", "ws-0", "agent", "/configs")
    said = {
        "gone": explain_exec_failure(target, ApiException(status=404, reason="Not Found")),
        "forbidden": explain_exec_failure(target, ApiException(status=403, reason="Forbidden")),
        "handshake": explain_exec_failure(target, WebSocketBadStatusException("Handshake status 404 Not Found", 404)),
        "lost": explain_exec_failure(target, WebSocketConnectionClosedException("Connection to remote host was lost.")),
        "reset": explain_exec_failure(target, ConnectionResetError(104, "Connection reset by peer")),
    }
    assert "the pod is gone" in said["gone"] and "the pod is gone" in said["handshake"]
    assert "may not exec" in said["forbidden"]
    assert "connection to the pod was lost mid-transfer" in said["lost"]
    assert "connection to the pod was lost mid-transfer" in said["reset"]
    assert all(s.startswith("pod ns/ws-0: ") for s in said.values())
