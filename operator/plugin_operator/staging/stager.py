"""Staging: turn (source, commit) into a verified, read-only plugin tree on
local disk, cached by content address (design §4, §5 step 3).

A git source is fetched shallowly at exactly the resolved commit into a
throw-away bare repository; the tree is checked from git's own listing
(`ls-tree`: no symlinks, no submodules, safe paths, bounded size) before a
single byte is written, then blobs are written as plain files with
`O_NOFOLLOW | O_EXCL`. A `local://` source is walked with `lstat` and the
same rules (plus: no hardlinks, no special files).

Cache layout under `Settings.cache_dir`:

    trees/<key>/tree/          the read-only plugin tree
    trees/<key>/staged.json    digest, file count, size, plugin.yaml summary
    locks/<key>.lock           flock: one fetch per key across processes
    tmp/                       work dirs, renamed into trees/ when complete

`<key>` is SHA-256 of (repo, commit, sub-directory). Entries are complete or
absent (atomic rename). Concurrent `stage()` calls for one key in a process
share one task; across processes the lock file serialises them. The cache is
bounded (`cache_max_bytes`, least recently used first); an entry used in the
last `eviction_grace` seconds is never evicted, so a tree being delivered is
not removed under its reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from plugin_operator.concurrency import SingleFlight
from plugin_operator.config import Settings
from plugin_operator.domain.errors import (
    IntegrityMismatch,
    InvalidPlugin,
    TreeTooLarge,
    UnsafeTree,
)
from plugin_operator.domain.source import Source, check_plugin_name, is_sha
from plugin_operator.domain.tree import (
    PLUGIN_YAML,
    PluginMeta,
    Skill,
    check_integrity,
    check_relpath,
    parse_plugin_yaml,
    tree_digest,
)
from plugin_operator.git.resolver import Resolver
from plugin_operator.git.runner import GitError, GitRunner, GitTimeout, map_git_error

_REGULAR_MODES = {b"100644": 0o644, b"100755": 0o755, b"100664": 0o644}
_FETCH = ("fetch", "--quiet", "--depth=1", "--no-tags", "--no-recurse-submodules")
_FORMAT = 1  # staged.json layout version; bump to invalidate old entries


@dataclass(frozen=True)
class StagedPlugin:
    path: Path  # read-only directory holding the plugin tree
    digest: str  # tree digest (design §4): the installedDigest
    meta: PluginMeta
    files: int
    size: int  # bytes of file content
    source: str  # normalised source
    sha: str | None  # the commit; None for local://


class Stager:
    def __init__(
        self,
        settings: Settings,
        git: Resolver | GitRunner,
        *,
        cache_max_bytes: int | None = None,
        eviction_grace: float = 600.0,
    ) -> None:
        self.settings = settings
        self.runner = git.runner if isinstance(git, Resolver) else git
        self.cache_max_bytes = cache_max_bytes or max(1 << 30, 4 * settings.max_dir_bytes)
        self.eviction_grace = eviction_grace
        self.fetches = 0  # `git fetch` commands started (a metric)
        self._trees = settings.cache_dir / "trees"
        self._locks = settings.cache_dir / "locks"
        self._tmp = settings.cache_dir / "tmp"
        self._flights: SingleFlight[str, StagedPlugin] = SingleFlight()

    async def stage(self, source: Source, sha: str | None = None) -> StagedPlugin:
        """The verified tree of `source` at commit `sha` (ignored for local://)."""
        if source.kind == "local":
            check_plugin_name(source.name, "local plugin name")
            return await self._flights.run("local\0" + source.name, lambda: self._stage_local(source))
        if sha is None or not is_sha(sha):
            raise ValueError(f"stage() needs the resolved 40-hex commit SHA, got {sha!r}")
        key = _key(f"{source.repo_key}\0{sha}\0{source.subdir or ''}")
        return await self._flights.run(key, lambda: self._stage_git(source, sha, key))

    # --- git sources -----------------------------------------------------------

    async def _stage_git(self, source: Source, sha: str, key: str) -> StagedPlugin:
        hit = self._load(key)
        if hit is not None:
            return hit
        async with self._file_lock(key):
            hit = self._load(key)  # another process may have staged it meanwhile
            if hit is not None:
                return hit
            work = self._workdir(key)
            try:
                files, modes = await self._fetch_tree(source, sha, work / "git")
                staged = await asyncio.to_thread(self._commit_entry, key, work, source, sha, files, modes)
            finally:
                _rmtree(work)
        self._evict(keep=key)
        return staged

    async def _fetch_tree(self, source: Source, sha: str, gitdir: Path) -> tuple[dict[str, bytes], dict[str, int]]:
        assert source.owner is not None and source.repo is not None
        label = f"{source.repo_key}@{sha[:12]}"
        url = self.runner.repo_url(source.owner, source.repo)
        run = self.runner.run
        quick = self.settings.resolve_timeout
        try:
            await run(["init", "--quiet", "--bare", str(gitdir)], timeout=quick)
            self.fetches += 1
            await run(
                [*_FETCH, "--end-of-options", url, sha],
                cwd=gitdir,
                timeout=self.settings.fetch_timeout,
            )
            fetched = await run(
                ["rev-parse", "--verify", "--end-of-options", "FETCH_HEAD^{commit}"], cwd=gitdir, timeout=quick
            )
        except (GitError, GitTimeout) as exc:
            raise map_git_error(exc, label) from None
        if fetched.stdout.decode().strip() != sha:
            raise IntegrityMismatch(f"{label}: the server sent commit {fetched.stdout.decode().strip()}")

        treeish = f"{sha}:{source.subdir}" if source.subdir else f"{sha}^{{tree}}"
        try:
            kind = await run(["cat-file", "-t", "--end-of-options", treeish], cwd=gitdir, timeout=quick)
        except GitError:
            raise InvalidPlugin(
                f"sub-directory {source.subdir!r} does not exist in {source.repo_key} at {sha[:12]}"
            ) from None
        except GitTimeout as exc:
            raise map_git_error(exc, label) from None
        if kind.stdout.strip() != b"tree":
            raise InvalidPlugin(f"{source.subdir!r} in {source.repo_key} at {sha[:12]} is not a directory")

        try:
            listing = await run(
                ["ls-tree", "-r", "-l", "-z", "--full-tree", "--end-of-options", treeish],
                cwd=gitdir,
                timeout=quick,
            )
        except (GitError, GitTimeout) as exc:
            raise map_git_error(exc, label) from None
        wanted: list[tuple[str, str, int]] = []  # (relpath, oid, mode)
        total = 0
        for record in listing.stdout.split(b"\0"):
            if not record:
                continue
            header, _, raw_path = record.partition(b"\t")
            mode, kind_, oid, size = header.split()
            relpath = _decode_path(raw_path)
            if mode == b"120000":
                raise UnsafeTree(f"{relpath} is a symbolic link; plugins may not contain symlinks")
            if mode == b"160000":
                raise UnsafeTree(f"{relpath} is a git submodule; plugins may not contain submodules")
            if kind_ != b"blob" or mode not in _REGULAR_MODES:
                raise UnsafeTree(f"{relpath} has unsupported git mode {mode.decode()}")
            total += int(size)
            if total > self.settings.max_dir_bytes:
                raise TreeTooLarge(
                    f"{label}: the plugin tree is over {self.settings.max_dir_bytes} bytes "
                    "(PLUGIN_INSTALL_MAX_DIR_BYTES)"
                )
            wanted.append((relpath, oid.decode(), _REGULAR_MODES[mode]))

        try:
            blobs = await run(
                ["cat-file", "--batch"],
                cwd=gitdir,
                timeout=self.settings.fetch_timeout,
                stdin=b"".join(oid.encode() + b"\n" for _, oid, _ in wanted),
            )
        except (GitError, GitTimeout) as exc:
            raise map_git_error(exc, label) from None
        contents = _parse_batch(blobs.stdout)
        files = {relpath: contents[oid] for relpath, oid, _ in wanted}
        modes = {relpath: mode for relpath, _, mode in wanted}
        return files, modes

    # --- local sources ---------------------------------------------------------

    async def _stage_local(self, source: Source) -> StagedPlugin:
        root = self.settings.registry_dir / source.name
        files, modes = await asyncio.to_thread(self._read_local, root, source.name)
        digest = tree_digest(files.items())
        key = _key(f"local\0{source.name}\0{digest}")
        hit = self._load(key)
        if hit is not None:
            return hit
        work = self._workdir(key)
        try:
            staged = await asyncio.to_thread(self._commit_entry, key, work, source, None, files, modes)
        finally:
            _rmtree(work)
        self._evict(keep=key)
        return staged

    def _read_local(self, root: Path, name: str) -> tuple[dict[str, bytes], dict[str, int]]:
        try:
            info = os.lstat(root)
        except FileNotFoundError:
            raise InvalidPlugin(
                f"local plugin {name!r} is not in the registry ({self.settings.registry_dir})"
            ) from None
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafeTree(f"local plugin {name!r} is not a plain directory")
        files: dict[str, bytes] = {}
        modes: dict[str, int] = {}
        total = 0
        pending = [""]
        while pending:
            rel_dir = pending.pop()
            with os.scandir(root / rel_dir if rel_dir else root) as entries:
                for entry in entries:
                    relpath = check_relpath(f"{rel_dir}/{entry.name}" if rel_dir else entry.name)
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        raise UnsafeTree(f"{relpath} is a symbolic link; plugins may not contain symlinks")
                    if stat.S_ISDIR(st.st_mode):
                        pending.append(relpath)
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        raise UnsafeTree(f"{relpath} is a device, socket or pipe; only regular files are allowed")
                    if st.st_nlink > 1:
                        raise UnsafeTree(f"{relpath} is a hardlink; plugins may not contain hardlinks")
                    total += st.st_size
                    if total > self.settings.max_dir_bytes:
                        raise TreeTooLarge(
                            f"local plugin {name!r} is over {self.settings.max_dir_bytes} bytes "
                            "(PLUGIN_INSTALL_MAX_DIR_BYTES)"
                        )
                    fd = os.open(root / relpath, os.O_RDONLY | os.O_NOFOLLOW)
                    with os.fdopen(fd, "rb") as handle:
                        files[relpath] = handle.read(self.settings.max_dir_bytes + 1)
                    modes[relpath] = 0o755 if st.st_mode & 0o111 else 0o644
        return files, modes

    # --- the cache -------------------------------------------------------------

    def _commit_entry(
        self,
        key: str,
        work: Path,
        source: Source,
        sha: str | None,
        files: dict[str, bytes],
        modes: dict[str, int],
    ) -> StagedPlugin:
        """Verify the tree, write it under `work`, and rename it into the cache."""
        if PLUGIN_YAML not in files:
            raise InvalidPlugin(f"{source.normalized}: {PLUGIN_YAML} is missing at the plugin's root")
        if sum(len(c) for c in files.values()) > self.settings.max_dir_bytes:
            raise TreeTooLarge(f"{source.normalized}: the plugin tree is over {self.settings.max_dir_bytes} bytes")
        meta = parse_plugin_yaml(files[PLUGIN_YAML], expected_name=source.name)
        digest = tree_digest(files.items())
        check_integrity(files, digest)

        entry = work / "entry"
        tree = entry / "tree"
        tree.mkdir(parents=True)
        for relpath, content in files.items():
            target = tree / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            os.chmod(target, 0o555 if modes[relpath] & 0o111 else 0o444)
        record = {
            "format": _FORMAT,
            "digest": digest,
            "files": len(files),
            "size": sum(len(c) for c in files.values()),
            "source": source.normalized,
            "sha": sha,
            "meta": asdict(meta),
        }
        (entry / "staged.json").write_text(json.dumps(record, sort_keys=True))
        for dirpath, _, _ in os.walk(tree):
            os.chmod(dirpath, 0o555)  # noqa: S103 -- read-only for everyone, on purpose

        final = self._trees / key
        self._trees.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(entry, final)
        except OSError as exc:  # another process won the race: use its entry
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        loaded = self._load(key)
        if loaded is None:
            raise InvalidPlugin(f"{source.normalized}: the staged entry vanished from the cache")
        return loaded

    def _load(self, key: str) -> StagedPlugin | None:
        entry = self._trees / key
        try:
            record = json.loads((entry / "staged.json").read_text())
        except (OSError, ValueError):
            return None
        if record.get("format") != _FORMAT:
            return None
        with contextlib.suppress(OSError):
            os.utime(entry)  # recently used: last to be evicted
        meta = dict(record["meta"])
        meta["skills"] = tuple(Skill(**s) for s in meta.get("skills", ()))
        for field in ("tags", "runtimes"):
            meta[field] = tuple(meta.get(field, ()))
        return StagedPlugin(
            path=entry / "tree",
            digest=record["digest"],
            meta=PluginMeta(**meta),
            files=record["files"],
            size=record["size"],
            source=record["source"],
            sha=record["sha"],
        )

    def _workdir(self, key: str) -> Path:
        self._tmp.mkdir(parents=True, exist_ok=True)
        work = self._tmp / f"{key[:16]}-{uuid.uuid4().hex}"
        (work / "git").mkdir(parents=True)
        return work

    @contextlib.asynccontextmanager
    async def _file_lock(self, key: str) -> AsyncIterator[None]:
        self._locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._locks / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            delay = 0.02
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(delay)  # another process is staging this key
                    delay = min(delay * 2, 0.5)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _evict(self, *, keep: str) -> None:
        """Drop least recently used entries until the cache fits its bound."""
        entries: list[tuple[float, int, Path]] = []
        total = 0
        try:
            children = list(self._trees.iterdir())
        except OSError:
            return
        for entry in children:
            try:
                size = json.loads((entry / "staged.json").read_text())["size"]
                used = entry.stat().st_mtime
            except (OSError, ValueError, KeyError):
                continue
            total += size
            entries.append((used, size, entry))
        if total <= self.cache_max_bytes:
            return
        recent = time.time() - self.eviction_grace
        for used, size, entry in sorted(entries):
            if total <= self.cache_max_bytes:
                break
            if entry.name == keep or used > recent:
                continue
            # Rename first so a reader never sees a half-deleted entry.
            doomed = self._tmp / f"evicted-{uuid.uuid4().hex}"
            try:
                os.rename(entry, doomed)
            except OSError:
                continue
            _rmtree(doomed)
            total -= size


def tar_stream(staged: StagedPlugin, extra: Mapping[str, bytes] | None = None) -> bytes:
    """An uncompressed tar of the staged tree for delivery into a pod:
    relative paths, sorted, directories 0755, files 0644 (0755 when
    executable), owner 0:0, mtime 0, regular files and directories only;
    then the `extra` files (top-level names, e.g. the delivery marker)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        root = staged.path
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root)
            if rel_dir != ".":
                tar.addfile(_tarinfo(rel_dir, tarfile.DIRTYPE, 0o755, 0))
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode):
                    raise UnsafeTree(f"{path} in the staging cache is not a regular file")
                relpath = name if rel_dir == "." else f"{rel_dir}/{name}"
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                with open(path, "rb") as handle:
                    tar.addfile(_tarinfo(relpath, tarfile.REGTYPE, mode, st.st_size), handle)
        for relpath, content in (extra or {}).items():
            tar.addfile(_tarinfo(relpath, tarfile.REGTYPE, 0o644, len(content)), io.BytesIO(content))
    return buffer.getvalue()


def _tarinfo(name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _decode_path(raw: bytes) -> str:
    try:
        return check_relpath(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UnsafeTree(f"path {raw!r} in the plugin tree is not UTF-8") from None


def _parse_batch(output: bytes) -> dict[str, bytes]:
    """Parse `git cat-file --batch` output into {oid: content}."""
    contents: dict[str, bytes] = {}
    pos = 0
    while pos < len(output):
        newline = output.index(b"\n", pos)
        header = output[pos:newline].split()
        if len(header) != 3:  # "<oid> missing": the server left out part of the commit
            raise IntegrityMismatch(f"object {header[0].decode()} is missing from the fetched commit")
        oid, kind, size = header
        if kind != b"blob":
            raise UnsafeTree(f"object {oid.decode()} is a {kind.decode()}, expected a blob")
        start = newline + 1
        end = start + int(size)
        contents[oid.decode()] = output[start:end]
        pos = end + 1
    return contents


def _rmtree(path: Path) -> None:
    """Remove a tree that may have been made read-only."""
    if not path.exists():
        return
    for dirpath, _, _ in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)
    shutil.rmtree(path, ignore_errors=True)
