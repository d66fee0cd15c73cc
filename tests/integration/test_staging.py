"""Staging against the real loopback git server (design §4, §5 step 3, §8)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import tarfile
import threading
import time
from pathlib import Path

import pytest

from localdev.gitserver import File, GitServer, Submodule, Symlink
from plugin_operator.config import Settings
from plugin_operator.domain.errors import (
    IntegrityMismatch,
    InvalidPlugin,
    RefNotFound,
    SourceUnreachable,
    StagingFailed,
    TreeTooLarge,
    UnsafeTree,
)
from plugin_operator.domain.source import Source, parse_source
from plugin_operator.domain.tree import tree_digest
from plugin_operator.git import GitRunner, Resolver
from plugin_operator.staging import Stager, tar_stream
from tests.fixtures.gitserver import git_settings

pytestmark = pytest.mark.git

PLUGIN = {
    "plugin.yaml": "name: hello\nversion: 1.0.0\nskills: [greet]\n",
    "rules/style.md": "# Style\n",
    "skills/greet/SKILL.md": "Say hello.\n",
    "setup.sh": File("#!/bin/sh\necho setup\n", executable=True),
}


def src(owner: str, rest: str) -> Source:
    return parse_source(f"github://{owner}/{rest}", allow_unpinned=True)


@pytest.fixture
def settings(git_server: GitServer, tmp_path: Path) -> Settings:
    return git_settings(git_server.base_url, tmp_path)


@pytest.fixture
def stager(settings: Settings) -> Stager:
    return Stager(settings, Resolver(settings))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


async def test_stage_fetches_the_exact_commit_and_verifies_it(
    git_server: GitServer, git_owner: str, stager: Stager
) -> None:
    sha = git_server.create_repo(git_owner, "hello", PLUGIN)
    git_server.commit(git_owner, "hello", {**PLUGIN, "rules/new.md": "later"})  # main moves on
    staged = await stager.stage(src(git_owner, "hello#main"), sha)

    files = _files(staged.path)
    assert sorted(files) == ["plugin.yaml", "rules/style.md", "setup.sh", "skills/greet/SKILL.md"]
    assert staged.digest == tree_digest(files.items())
    assert (staged.sha, staged.files, staged.size) == (sha, 4, sum(map(len, files.values())))
    assert staged.meta.name == "hello" and [s.name for s in staged.meta.skills] == ["greet"]
    assert os.stat(staged.path / "setup.sh").st_mode & 0o777 == 0o555
    assert os.stat(staged.path / "rules/style.md").st_mode & 0o777 == 0o444
    assert os.stat(staged.path / "rules").st_mode & 0o222 == 0  # read-only


async def test_tar_stream_normalises_ownership_and_modes(git_server: GitServer, git_owner: str, stager: Stager) -> None:
    sha = git_server.create_repo(git_owner, "hello", PLUGIN)
    staged = await stager.stage(src(git_owner, "hello#main"), sha)
    with tarfile.open(fileobj=io.BytesIO(tar_stream(staged))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {
            "plugin.yaml",
            "rules",
            "rules/style.md",
            "setup.sh",
            "skills",
            "skills/greet",
            "skills/greet/SKILL.md",
        }
        for member in members.values():
            assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
            assert member.isdir() or member.isfile()
        assert members["setup.sh"].mode == 0o755
        assert members["rules/style.md"].mode == 0o644
        assert members["skills"].mode == 0o755
        extracted = tar.extractfile("rules/style.md")
        assert extracted is not None and extracted.read() == b"# Style\n"


async def test_several_plugins_in_subdirectories_of_one_repo(
    git_server: GitServer, git_owner: str, stager: Stager
) -> None:
    sha = git_server.create_repo(
        git_owner,
        "plugins",
        {
            "README.md": "many plugins",
            "lint/plugin.yaml": "name: lint\n",
            "lint/rules/a.md": "A",
            "tools/fmt/plugin.yaml": "name: fmt\n",
        },
    )
    lint = await stager.stage(src(git_owner, "plugins/lint#main"), sha)
    fmt = await stager.stage(src(git_owner, "plugins/tools/fmt#main"), sha)
    assert sorted(_files(lint.path)) == ["plugin.yaml", "rules/a.md"]
    assert sorted(_files(fmt.path)) == ["plugin.yaml"]
    assert lint.path != fmt.path
    with pytest.raises(InvalidPlugin, match="sub-directory 'nope' does not exist"):
        await stager.stage(src(git_owner, "plugins/nope#main"), sha)
    with pytest.raises(InvalidPlugin, match="is not a directory"):
        await stager.stage(src(git_owner, "plugins/README.md#main"), sha)


@pytest.mark.parametrize(
    ("extra", "error", "complaint"),
    [
        ({"rules/passwd.md": Symlink("../../../../etc/passwd")}, UnsafeTree, "symbolic link"),
        ({"rules": Symlink("/etc")}, UnsafeTree, "symbolic link"),
        ({"vendor": Submodule("1" * 40)}, UnsafeTree, "submodule"),
    ],
)
async def test_unsafe_trees_are_refused_and_nothing_is_cached(
    git_server: GitServer,
    git_owner: str,
    stager: Stager,
    settings: Settings,
    extra: dict[str, object],
    error: type[Exception],
    complaint: str,
) -> None:
    files = {k: v for k, v in PLUGIN.items() if not k.startswith("rules")} | extra
    sha = git_server.create_repo(git_owner, "hello", files)  # type: ignore[arg-type]
    with pytest.raises(error, match=complaint):
        await stager.stage(src(git_owner, "hello#main"), sha)
    assert not list((settings.cache_dir / "trees").glob("*"))
    assert not list((settings.cache_dir / "tmp").glob("*"))


async def test_a_tree_over_the_size_cap_is_refused(git_server: GitServer, git_owner: str, tmp_path: Path) -> None:
    settings = git_settings(git_server.base_url, tmp_path, max_dir_bytes=10_000)
    sha = git_server.create_repo(git_owner, "hello", {**PLUGIN, "big.bin": os.urandom(20_000)})
    with pytest.raises(TreeTooLarge, match="over 10000 bytes"):
        await Stager(settings, GitRunner(settings)).stage(src(git_owner, "hello#main"), sha)


async def test_manifest_integrity_is_checked(git_server: GitServer, git_owner: str, stager: Stager) -> None:
    digest = tree_digest((k, v.content.encode() if isinstance(v, File) else v.encode()) for k, v in PLUGIN.items())
    good = git_server.create_repo(git_owner, "hello", {**PLUGIN, "manifest.json": json.dumps({"sha256": digest})})
    staged = await stager.stage(src(git_owner, "hello#main"), good)
    assert staged.digest == digest

    bad = git_server.commit(git_owner, "hello", {**PLUGIN, "manifest.json": json.dumps({"sha256": "0" * 64})})
    with pytest.raises(IntegrityMismatch, match="declares sha256 0000"):
        await stager.stage(src(git_owner, "hello#main"), bad)


async def test_plugin_yaml_is_required_and_must_name_the_plugin(
    git_server: GitServer, git_owner: str, stager: Stager
) -> None:
    sha = git_server.create_repo(git_owner, "hello", {"rules/a.md": "A"})
    with pytest.raises(InvalidPlugin, match=r"plugin\.yaml is missing"):
        await stager.stage(src(git_owner, "hello#main"), sha)
    sha = git_server.commit(git_owner, "hello", {"plugin.yaml": "name: other\n"})
    with pytest.raises(InvalidPlugin, match="names the plugin 'other'"):
        await stager.stage(src(git_owner, "hello#main"), sha)


async def test_a_commit_the_server_does_not_have(git_server: GitServer, git_owner: str, stager: Stager) -> None:
    git_server.create_repo(git_owner, "hello", PLUGIN)
    with pytest.raises(RefNotFound, match="not available upstream"):
        await stager.stage(src(git_owner, "hello#main"), "0123456789abcdef0123456789abcdef01234567")


async def test_option_shaped_sha_is_refused_before_git_runs(
    git_server: GitServer, git_owner: str, stager: Stager, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="40-hex"):
        await stager.stage(src(git_owner, "hello#main"), f"--upload-pack=touch {tmp_path}/sentinel")
    assert stager.runner.calls == 0
    assert not (tmp_path / "sentinel").exists()


async def test_a_fetch_over_the_timeout_is_unreachable(blackhole_url: str, git_owner: str, tmp_path: Path) -> None:
    settings = git_settings(blackhole_url, tmp_path, fetch_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(SourceUnreachable, match="timed out"):
        await Stager(settings, GitRunner(settings)).stage(src(git_owner, "hello#main"), "1" * 40)
    assert time.monotonic() - started < 5


async def test_a_thousand_concurrent_stages_fetch_once_and_a_second_process_reuses_the_cache(
    git_server: GitServer, git_owner: str, settings: Settings
) -> None:
    sha = git_server.create_repo(git_owner, "hello", PLUGIN)
    stager = Stager(settings, GitRunner(settings))
    results = await asyncio.gather(*(stager.stage(src(git_owner, "hello#v1"), sha) for _ in range(1000)))
    assert stager.fetches == 1
    assert len({r.path for r in results}) == 1 and len({r.digest for r in results}) == 1

    another_process = Stager(settings, GitRunner(settings))
    again = await another_process.stage(src(git_owner, "hello#main"), sha)  # same repo+commit+subdir
    assert another_process.fetches == 0 and again.digest == results[0].digest


async def test_two_stagers_racing_on_one_cache_fetch_once(
    git_server: GitServer, git_owner: str, settings: Settings
) -> None:
    sha = git_server.create_repo(git_owner, "hello", PLUGIN)
    first, second = Stager(settings, GitRunner(settings)), Stager(settings, GitRunner(settings))
    a, b = await asyncio.gather(
        first.stage(src(git_owner, "hello#main"), sha), second.stage(src(git_owner, "hello#main"), sha)
    )
    assert a.path == b.path
    assert first.fetches + second.fetches == 1  # the file lock serialised them


async def test_the_cache_evicts_least_recently_used_entries(
    git_server: GitServer, git_owner: str, settings: Settings
) -> None:
    old = git_server.create_repo(git_owner, "hello", PLUGIN)
    new = git_server.commit(git_owner, "hello", {**PLUGIN, "rules/x.md": "x" * 100})
    stager = Stager(settings, GitRunner(settings), cache_max_bytes=200, eviction_grace=0)
    first = await stager.stage(src(git_owner, "hello#main"), old)
    os.utime(first.path.parent, (1, 1))  # long unused
    second = await stager.stage(src(git_owner, "hello#main"), new)
    assert not first.path.exists()
    assert second.path.exists()


async def test_local_plugins_come_from_the_registry(tmp_path: Path, settings: Settings) -> None:
    plugin = settings.registry_dir / "hello"
    (plugin / "rules").mkdir(parents=True)
    (plugin / "plugin.yaml").write_text("name: hello\n")
    (plugin / "rules/a.md").write_text("A")
    stager = Stager(settings, GitRunner(settings))
    staged = await stager.stage(parse_source("hello", allow_unpinned=False))
    assert staged.sha is None
    assert _files(staged.path) == {"plugin.yaml": b"name: hello\n", "rules/a.md": b"A"}

    (plugin / "rules/link.md").symlink_to(tmp_path / "secret")
    with pytest.raises(UnsafeTree, match="symbolic link"):
        await stager.stage(parse_source("hello", allow_unpinned=False))
    (plugin / "rules/link.md").unlink()
    os.link(plugin / "rules/a.md", tmp_path / "outside-hardlink")
    with pytest.raises(UnsafeTree, match="hardlink"):
        await stager.stage(parse_source("hello", allow_unpinned=False))
    with pytest.raises(InvalidPlugin, match="not in the registry"):
        await stager.stage(parse_source("local://missing", allow_unpinned=False))


# --- bounded downloads (design §4: size cap before download) ------------------------------------


class _PeakDiskUsage:
    """Samples the bytes under a directory from a thread while git writes:
    a real measurement of what staging put on the operator's disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _usage(self) -> int:
        total = 0
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_size
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._usage())
            time.sleep(0.001)

    def __enter__(self) -> _PeakDiskUsage:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._usage())


MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("overhead", "allow_filter", "complaint"),
    [
        (8 * MIB, True, r"is 30000\d\d bytes, over 1048576"),  # fetched within the budget, refused by its real size
        (256 * 1024, True, "server sent more than"),  # the file size limit stops the download itself
        (256 * 1024, False, "server sent more than"),  # a server without filter support: still bounded
    ],
    ids=["blob-fetched-then-refused", "rlimit-stops-the-blob-fetch", "rlimit-stops-a-full-fetch"],
)
async def test_a_3mb_blob_over_a_1mib_cap_never_fills_the_disk(
    git_server: GitServer, git_owner: str, tmp_path: Path, overhead: int, allow_filter: bool, complaint: str
) -> None:
    settings = git_settings(git_server.base_url, tmp_path, max_dir_bytes=MIB)
    sha = git_server.create_repo(
        git_owner, "hello", {**PLUGIN, "big.bin": os.urandom(3_000_000)}, allow_filter=allow_filter
    )
    stager = Stager(settings, GitRunner(settings), fetch_overhead=overhead)
    with _PeakDiskUsage(settings.cache_dir) as usage, pytest.raises(TreeTooLarge, match=complaint):
        await stager.stage(src(git_owner, "hello#main"), sha)
    # Each file git writes is bounded by RLIMIT_FSIZE; the pack index and
    # small bookkeeping files come on top (a few KiB here).
    assert usage.peak <= MIB + overhead + 64 * 1024, usage.peak
    assert usage.peak > 0
    assert not list((settings.cache_dir / "trees").glob("*"))
    assert not list((settings.cache_dir / "tmp").glob("*"))
    fetches = stager.git_fetches
    with pytest.raises(TreeTooLarge):  # remembered: no second download
        await stager.stage(src(git_owner, "hello#main"), sha)
    assert stager.git_fetches == fetches


async def test_a_subdirectory_source_downloads_only_its_own_blobs(
    git_server: GitServer, git_owner: str, settings: Settings
) -> None:
    sha = git_server.create_repo(
        git_owner,
        "mono",
        {
            "big/a.bin": os.urandom(2_000_000),
            "big/b.bin": os.urandom(2_000_000),
            "other/plugin.yaml": "name: other\n",
            "lint/plugin.yaml": "name: lint\n",
            "lint/rules/a.md": "A" * 1000,
        },
    )
    before = git_server.bytes_sent
    staged = await Stager(settings, GitRunner(settings)).stage(src(git_owner, "mono/lint#main"), sha)
    downloaded = git_server.bytes_sent - before
    assert sorted(_files(staged.path)) == ["plugin.yaml", "rules/a.md"]
    assert downloaded < 50_000, downloaded  # commit, trees and two small blobs: not 4 MB of big/

    # The same measurement against a server without filter support sees the whole commit.
    full = git_server.create_repo(
        git_owner,
        "mono-old",
        {"big/a.bin": os.urandom(2_000_000), "lint/plugin.yaml": "name: lint\n"},
        allow_filter=False,
    )
    before = git_server.bytes_sent
    staged = await Stager(settings, GitRunner(settings)).stage(src(git_owner, "mono-old/lint#main"), full)
    assert git_server.bytes_sent - before > 2_000_000
    assert sorted(_files(staged.path)) == ["plugin.yaml"]


async def test_no_object_is_fetched_lazily_behind_the_stagers_back(
    git_server: GitServer, git_owner: str, settings: Settings
) -> None:
    sha = git_server.create_repo(git_owner, "hello", PLUGIN)
    stager = Stager(settings, GitRunner(settings))
    before = git_server.requests
    await stager.stage(src(git_owner, "hello#main"), sha)
    # Two fetches (commit+trees, then the blobs), each a protocol-v2
    # ls-refs-less exchange: no third round trip from a lazy fetch.
    assert stager.git_fetches == 2
    assert git_server.requests - before <= 4


# --- the negative cache and the operator's own disk ------------------------------------------------


async def test_upstream_errors_are_remembered_briefly_and_temporary_ones_not_at_all(
    git_server: GitServer, git_owner: str, tmp_path: Path
) -> None:
    settings = git_settings(git_server.base_url, tmp_path)
    git_server.create_repo(git_owner, "hello", PLUGIN)
    missing = "0123456789abcdef0123456789abcdef01234567"
    stager = Stager(settings, GitRunner(settings), upstream_retry=60)
    for _ in range(3):
        with pytest.raises(RefNotFound):
            await stager.stage(src(git_owner, "hello#main"), missing)
    assert stager.fetches == 1
    quick = Stager(settings, GitRunner(settings), upstream_retry=0.01)
    for _ in range(2):
        with pytest.raises(RefNotFound):
            await quick.stage(src(git_owner, "hello#main"), missing)
        await asyncio.sleep(0.02)
    assert quick.fetches == 2  # expired: asked upstream again

    closed = git_settings("http://127.0.0.1:9", tmp_path / "closed")  # connection refused
    unreachable = Stager(closed, GitRunner(closed))
    for _ in range(2):
        with pytest.raises(SourceUnreachable):
            await unreachable.stage(src(git_owner, "hello#main"), missing)
    assert unreachable.fetches == 2  # temporary: never remembered


async def test_a_failing_operator_disk_is_a_temporary_staging_failure(
    git_server: GitServer, git_owner: str, tmp_path: Path
) -> None:
    sha = git_server.create_repo(git_owner, "hello", PLUGIN)
    (tmp_path / "cache").write_text("not a directory")  # every write under the cache fails
    settings = git_settings(git_server.base_url, tmp_path)
    stager = Stager(settings, GitRunner(settings))
    for _ in range(2):
        with pytest.raises(StagingFailed, match="operator's disk") as info:
            await stager.stage(src(git_owner, "hello#main"), sha)
        assert not info.value.permanent
    (tmp_path / "cache").unlink()
    staged = await stager.stage(src(git_owner, "hello#main"), sha)  # the disk recovered
    assert staged.meta.name == "hello"


async def test_scalars_are_kept_as_written(git_server: GitServer, git_owner: str, stager: Stager) -> None:
    sha = git_server.create_repo(git_owner, "hello", {**PLUGIN, "plugin.yaml": "name: hello\nversion: 1.10\n"})
    staged = await stager.stage(src(git_owner, "hello#main"), sha)
    assert staged.meta.version == "1.10"
