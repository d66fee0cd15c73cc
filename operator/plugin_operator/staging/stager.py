"""Staging: turn (source, commit) into a verified, read-only plugin tree on
local disk, cached by content address (design §4, §5 step 3).

A git source is fetched into a throw-away bare repository set up as a
partial clone, in two bounded steps:

1. `fetch --depth=1 --filter=blob:none` of exactly the resolved commit: the
   commit and its trees, no file content;
2. the tree is checked from git's own listing (`ls-tree -r`, without sizes,
   which would fetch blobs): paths, modes, duplicates, `.git`, the caps on
   files, depth and name/path lengths (design §4); only then
3. `fetch --stdin` of exactly the blobs of the plugin's (sub-)tree, as one
   pack; their real sizes are checked (`cat-file --batch-check`) against
   PLUGIN_INSTALL_MAX_DIR_BYTES before any content is read.

Every fetch runs with RLIMIT_FSIZE, so whatever a server sends (a server
without filter support sends the whole commit), git writes at most
`max_dir_bytes + fetch_overhead` bytes in all; lazy fetching of missing
objects is off (`GIT_NO_LAZY_FETCH`). Blobs are then written as plain files
with `O_NOFOLLOW | O_EXCL`. A `local://` source is walked with `lstat` and the
same rules (plus: no hardlinks, no special files), the caps checked while
walking.

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

A negative cache remembers, per key, the permanent error staging it raised
(bounded, least recently used first): a commit's content never changes, so a
retry loop re-raises the same error without fetching again. Errors about
the upstream (RepositoryNotFound, RefNotFound) are remembered for
`upstream_retry` seconds only; temporary errors are never remembered.
`local://` sources are not negatively cached: reading them is cheap, and a
fixed registry directory takes effect at the next retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tarfile
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from plugin_operator.concurrency import SingleFlight
from plugin_operator.config import Settings
from plugin_operator.domain.errors import (
    IntegrityMismatch,
    InvalidPlugin,
    PluginError,
    RefNotFound,
    RepositoryNotFound,
    StagingFailed,
    TreeLimitExceeded,
    TreeTooLarge,
    UnsafeTree,
)
from plugin_operator.domain.source import Source, check_plugin_name, is_sha
from plugin_operator.domain.tree import (
    PLUGIN_YAML,
    PluginMeta,
    Skill,
    TreeLimits,
    check_file_count,
    check_integrity,
    check_no_markers,
    check_path,
    check_tree_paths,
    is_dotgit,
    parse_plugin_yaml,
    show_path,
    tree_digest,
)
from plugin_operator.git.resolver import Resolver
from plugin_operator.git.runner import GitError, GitOutputTooLarge, GitRunner, GitTimeout, map_git_error

log = logging.getLogger(__name__)

_REGULAR_MODES = {b"100644": 0o644, b"100755": 0o755, b"100664": 0o644}
_FETCH_COMMIT = (
    "fetch",
    "--quiet",
    "--depth=1",
    "--filter=blob:none",
    "--no-tags",
    "--no-recurse-submodules",
)
_FETCH_BLOBS = (
    "fetch",
    "--quiet",
    "--filter=blob:none",
    "--no-tags",
    "--no-recurse-submodules",
    "--no-write-fetch-head",
    "--stdin",
)
_FORMAT = 2  # staged.json layout version; bump to invalidate old entries (2: strict checks, scalars as written)
FETCH_OVERHEAD = 8 * 1024 * 1024  # bytes git may write beyond max_dir_bytes: commit, trees, pack headers
NEGATIVE_CACHE_SIZE = 4096  # keys whose permanent failure is remembered
_MIN_FETCH_LIMIT = 64 * 1024
_LISTING_RECORD = 64  # bytes of an `ls-tree -z` record besides the path: mode, type, oid, tab, NUL


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
        fetch_overhead: int = FETCH_OVERHEAD,
        upstream_retry: float = 300.0,
    ) -> None:
        self.settings = settings
        self.runner = git.runner if isinstance(git, Resolver) else git
        self.cache_max_bytes = cache_max_bytes or max(1 << 30, 4 * settings.max_dir_bytes)
        self.eviction_grace = eviction_grace
        self.fetch_overhead = fetch_overhead
        self.upstream_retry = upstream_retry
        self.limits = TreeLimits(
            max_files=settings.max_files,
            max_depth=settings.max_depth,
            max_name_bytes=settings.max_name_bytes,
            max_path_bytes=settings.max_path_bytes,
        )
        self.fetches = 0  # stagings that went to the network (a metric)
        self.git_fetches = 0  # `git fetch` commands started (two per staging at most)
        self._trees = settings.cache_dir / "trees"
        self._locks = settings.cache_dir / "locks"
        self._tmp = settings.cache_dir / "tmp"
        self._flights: SingleFlight[str, StagedPlugin] = SingleFlight()
        # key -> (error class, message, monotonic expiry or None)
        self._failures: OrderedDict[str, tuple[type[PluginError], str, float | None]] = OrderedDict()

    async def stage(self, source: Source, sha: str | None = None) -> StagedPlugin:
        """The verified tree of `source` at commit `sha` (ignored for local://).
        Raises a PluginError (never a bare OSError) when it cannot."""
        if source.kind == "local":
            check_plugin_name(source.name, "local plugin name")
            return await self._flights.run("local\0" + source.name, lambda: self._stage_local(source))
        if sha is None or not is_sha(sha):
            raise ValueError(f"stage() needs the resolved 40-hex commit SHA, got {sha!r}")
        key = _key(f"{source.repo_key}\0{sha}\0{source.subdir or ''}")
        failed = self._recall(key)
        if failed is not None:
            raise failed
        return await self._flights.run(key, lambda: self._stage_git_remembered(source, sha, key))

    # --- the negative cache ------------------------------------------------------

    def _recall(self, key: str) -> PluginError | None:
        entry = self._failures.get(key)
        if entry is None:
            return None
        cls, message, expires = entry
        if expires is not None and time.monotonic() >= expires:
            del self._failures[key]
            return None
        self._failures.move_to_end(key)
        return cls(message)

    def _remember(self, key: str, exc: PluginError) -> None:
        if not exc.permanent:
            return
        upstream = isinstance(exc, RepositoryNotFound | RefNotFound)
        expires = time.monotonic() + self.upstream_retry if upstream else None
        self._failures[key] = (type(exc), exc.message, expires)
        self._failures.move_to_end(key)
        while len(self._failures) > NEGATIVE_CACHE_SIZE:
            self._failures.popitem(last=False)

    # --- git sources -----------------------------------------------------------

    async def _stage_git_remembered(self, source: Source, sha: str, key: str) -> StagedPlugin:
        try:
            return await self._stage_git(source, sha, key)
        except PluginError as exc:
            self._remember(key, exc)
            raise

    async def _stage_git(self, source: Source, sha: str, key: str) -> StagedPlugin:
        label = f"{source.repo_key}@{sha[:12]}"
        if source.subdir and any(is_dotgit(part) for part in source.subdir.split("/")):
            raise UnsafeTree(f"{label}: the sub-directory {source.subdir!r} is inside git metadata (.git)")
        try:
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
                    _rmtree(work / "git")  # free its disk before the tree is written
                    staged = await asyncio.to_thread(self._commit_entry, key, work, source, sha, files, modes)
                finally:
                    _rmtree(work)
        except OSError as exc:
            raise _disk_error(exc, label) from None
        self._evict(keep=key)
        return staged

    async def _fetch_tree(self, source: Source, sha: str, gitdir: Path) -> tuple[dict[str, bytes], dict[str, int]]:
        assert source.owner is not None and source.repo is not None
        label = f"{source.repo_key}@{sha[:12]}"
        url = self.runner.repo_url(source.owner, source.repo)
        run = self.runner.run
        quick = self.settings.resolve_timeout
        budget = self.settings.max_dir_bytes + self.fetch_overhead
        try:
            await run(["init", "--quiet", "--bare", str(gitdir)], timeout=quick)
        except (GitError, GitTimeout) as exc:
            raise StagingFailed(f"{label}: could not create a work repository: {exc}") from None
        _write_partial_clone_config(gitdir, url)

        # 1. The commit and its trees, no blobs (a server without filter
        #    support sends everything: the file size limit bounds it).
        self.fetches += 1
        await self._fetch([*_FETCH_COMMIT, "--end-of-options", "origin", sha], gitdir, label, budget, stdin=None)
        try:
            fetched = await run(
                ["rev-parse", "--verify", "--end-of-options", "FETCH_HEAD^{commit}"], cwd=gitdir, timeout=quick
            )
        except (GitError, GitTimeout) as exc:
            raise map_git_error(exc, label) from None
        if fetched.stdout.decode().strip() != sha:
            raise IntegrityMismatch(f"{label}: the server sent commit {fetched.stdout.decode().strip()[:64]}")

        treeish = f"{sha}:{source.subdir}" if source.subdir else f"{sha}^{{tree}}"
        # Every tree is here, no blob yet: a path that resolves but whose
        # object is not a (present) tree is a file.
        try:
            await run(["rev-parse", "--verify", "--quiet", "--end-of-options", treeish], cwd=gitdir, timeout=quick)
        except GitError:
            raise InvalidPlugin(
                f"sub-directory {source.subdir!r} does not exist in {source.repo_key} at {sha[:12]}"
            ) from None
        except GitTimeout as exc:
            raise map_git_error(exc, label) from None
        try:
            kind = await run(["cat-file", "-t", "--end-of-options", treeish], cwd=gitdir, timeout=quick)
        except GitError:
            kind = None
        except GitTimeout as exc:
            raise map_git_error(exc, label) from None
        if kind is None or kind.stdout.strip() != b"tree":
            raise InvalidPlugin(f"{source.subdir!r} in {source.repo_key} at {sha[:12]} is not a directory")

        # 2. The listing: every check before a single blob is fetched.
        wanted = await self._listing(gitdir, treeish, label)

        # 3. Exactly the plugin's blobs, as one pack, within what is left of the budget.
        oids = sorted({oid for _, oid, _ in wanted})
        if oids:
            remaining = budget - _disk_usage(gitdir)
            if remaining <= 0:
                raise TreeTooLarge(f"{label}: the server sent more than {budget} bytes {_budget_hint(self)}")
            await self._fetch(
                [*_FETCH_BLOBS, "--end-of-options", "origin"],
                gitdir,
                label,
                max(remaining, _MIN_FETCH_LIMIT),
                stdin=b"".join(oid.encode() + b"\n" for oid in oids),
            )
            if _disk_usage(gitdir) > budget + _MIN_FETCH_LIMIT:
                raise TreeTooLarge(f"{label}: the server sent more than {budget} bytes {_budget_hint(self)}")
        sizes = await self._blob_sizes(gitdir, oids, label)
        total = sum(sizes[oid] for _, oid, _ in wanted)
        if total > self.settings.max_dir_bytes:
            raise TreeTooLarge(
                f"{label}: the plugin tree is {total} bytes, over {self.settings.max_dir_bytes} bytes "
                "(PLUGIN_INSTALL_MAX_DIR_BYTES)"
            )
        try:
            blobs = await run(
                ["cat-file", "--batch"],
                cwd=gitdir,
                timeout=self.settings.fetch_timeout,
                stdin=b"".join(oid.encode() + b"\n" for oid in oids),
                stdout_limit=sum(sizes.values()) + 128 * (len(oids) + 1),
            )
        except GitError as exc:
            raise IntegrityMismatch(f"{label}: the fetched objects cannot be read: {exc.stderr[:300]}") from None
        except GitOutputTooLarge:
            raise IntegrityMismatch(f"{label}: the fetched blobs are larger than git reported") from None
        except GitTimeout as exc:
            raise map_git_error(exc, label) from None
        contents = _parse_batch(blobs.stdout)
        files = {relpath: contents[oid] for relpath, oid, _ in wanted}
        modes = {relpath: mode for relpath, _, mode in wanted}
        return files, modes

    async def _fetch(self, args: list[str], gitdir: Path, label: str, limit: int, *, stdin: bytes | None) -> None:
        self.git_fetches += 1
        try:
            await self.runner.run(
                args, cwd=gitdir, timeout=self.settings.fetch_timeout, stdin=stdin, file_size_limit=limit
            )
        except GitError as exc:
            text = exc.stderr.lower()
            if "file too large" in text or "signal 25" in text or "xfsz" in text:
                raise TreeTooLarge(f"{label}: the server sent more than {limit} bytes {_budget_hint(self)}") from None
            raise map_git_error(exc, label) from None
        except GitTimeout as exc:
            raise map_git_error(exc, label) from None

    async def _listing(self, gitdir: Path, treeish: str, label: str) -> list[tuple[str, str, int]]:
        """(relpath, blob oid, mode) of every file of `treeish`, checked."""
        limits = self.limits
        try:
            listing = await self.runner.run(
                ["ls-tree", "-r", "-z", "--full-tree", "--end-of-options", treeish],
                cwd=gitdir,
                timeout=self.settings.resolve_timeout,
                stdout_limit=(limits.max_files + 1) * (limits.max_path_bytes + _LISTING_RECORD),
            )
        except GitOutputTooLarge:
            raise TreeLimitExceeded(
                f"{label}: the plugin tree has more than {limits.max_files} files (PLUGIN_INSTALL_MAX_FILES) "
                f"or paths over {limits.max_path_bytes} bytes (PLUGIN_INSTALL_MAX_PATH_BYTES)"
            ) from None
        except GitError as exc:  # a tree the server left out (no lazy fetch)
            raise IntegrityMismatch(f"{label}: the fetched commit is incomplete: {exc.stderr[:300]}") from None
        except GitTimeout as exc:
            raise map_git_error(exc, label) from None
        records = [r for r in listing.stdout.split(b"\0") if r]
        check_file_count(len(records), limits)
        wanted: list[tuple[str, str, int]] = []
        for record in records:
            header, tab, raw_path = record.partition(b"\t")
            fields = header.split()
            if not tab or len(fields) != 3:
                raise UnsafeTree(f"{label}: git listed a malformed tree entry {record[:100]!r}")
            mode, kind, oid = fields
            relpath = _decode_path(raw_path, limits)
            if mode == b"120000":
                raise UnsafeTree(f"{show_path(relpath)} is a symbolic link; plugins may not contain symlinks")
            if mode == b"160000":
                raise UnsafeTree(f"{show_path(relpath)} is a git submodule; plugins may not contain submodules")
            if kind != b"blob" or mode not in _REGULAR_MODES:
                raise UnsafeTree(f"{show_path(relpath)} has unsupported git mode {mode.decode(errors='replace')}")
            wanted.append((relpath, oid.decode(), _REGULAR_MODES[mode]))
        check_tree_paths([relpath for relpath, _, _ in wanted], limits)
        return wanted

    async def _blob_sizes(self, gitdir: Path, oids: list[str], label: str) -> dict[str, int]:
        """The real size of each blob, from the local object store only."""
        if not oids:
            return {}
        try:
            checked = await self.runner.run(
                ["cat-file", "--batch-check"],
                cwd=gitdir,
                timeout=self.settings.resolve_timeout,
                stdin=b"".join(oid.encode() + b"\n" for oid in oids),
                stdout_limit=128 * (len(oids) + 1),
            )
        except (GitError, GitOutputTooLarge) as exc:  # `fatal: could not fetch … from promisor remote`
            raise IntegrityMismatch(f"{label}: the server did not send every file of the commit: {exc}") from None
        except GitTimeout as exc:
            raise map_git_error(exc, label) from None
        sizes: dict[str, int] = {}
        for line in checked.stdout.splitlines():
            fields = line.split()
            if len(fields) != 3 or fields[1] != b"blob" or not fields[2].isdigit():
                raise IntegrityMismatch(f"{label}: object {line[:80]!r} is missing or not a file")
            sizes[fields[0].decode()] = int(fields[2])
        if set(sizes) != set(oids):
            raise IntegrityMismatch(f"{label}: the server did not send every file of the commit")
        return sizes

    # --- local sources ---------------------------------------------------------

    async def _stage_local(self, source: Source) -> StagedPlugin:
        label = f"local plugin {source.name!r}"
        try:
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
        except OSError as exc:
            raise _disk_error(exc, label) from None
        self._evict(keep=key)
        return staged

    def _read_local(self, root: Path, name: str) -> tuple[dict[str, bytes], dict[str, int]]:
        limits = self.limits
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
        dirs = 0
        pending = [""]
        while pending:
            rel_dir = pending.pop()
            with os.scandir(root / rel_dir if rel_dir else root) as entries:
                for entry in entries:
                    # A name that is not UTF-8 arrives with surrogate escapes: check_path refuses it.
                    relpath = check_path(f"{rel_dir}/{entry.name}" if rel_dir else entry.name, limits)
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        raise UnsafeTree(f"{show_path(relpath)} is a symbolic link; plugins may not contain symlinks")
                    if stat.S_ISDIR(st.st_mode):
                        dirs += 1
                        if dirs > limits.max_files:
                            raise TreeLimitExceeded(
                                f"local plugin {name!r} has more than {limits.max_files} directories "
                                "(PLUGIN_INSTALL_MAX_FILES)"
                            )
                        pending.append(relpath)
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        raise UnsafeTree(
                            f"{show_path(relpath)} is a device, socket or pipe; only regular files are allowed"
                        )
                    if st.st_nlink > 1:
                        raise UnsafeTree(f"{show_path(relpath)} is a hardlink; plugins may not contain hardlinks")
                    check_file_count(len(files) + 1, limits)
                    total += st.st_size
                    if total > self.settings.max_dir_bytes:
                        raise TreeTooLarge(
                            f"local plugin {name!r} is over {self.settings.max_dir_bytes} bytes "
                            "(PLUGIN_INSTALL_MAX_DIR_BYTES)"
                        )
                    files[relpath] = _read_regular(root / relpath, st, self.settings.max_dir_bytes - total + st.st_size)
                    modes[relpath] = 0o755 if st.st_mode & 0o111 else 0o644
        check_tree_paths(list(files), limits)  # letter-case collisions
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
        check_tree_paths(list(files), self.limits)
        check_no_markers(files)
        meta = parse_plugin_yaml(files[PLUGIN_YAML], expected_name=source.name)
        digest = tree_digest(files.items())
        check_integrity(files, digest)

        entry = work / "entry"
        tree = entry / "tree"
        tree.mkdir(parents=True)
        for relpath, content in files.items():
            target = tree / relpath
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except OSError as exc:  # the checks above make these unreachable; never a bare OSError
                if exc.errno == errno.ENAMETOOLONG:
                    raise TreeLimitExceeded(
                        f"{source.normalized}: {show_path(relpath)} is too long for the operator's file system"
                    ) from None
                if exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ELOOP):
                    raise UnsafeTree(
                        f"{source.normalized}: {show_path(relpath)} collides with another path of the tree"
                    ) from None
                raise
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
            raise StagingFailed(f"{source.normalized}: the staged entry vanished from the cache")
        return loaded

    def _load(self, key: str) -> StagedPlugin | None:
        entry = self._trees / key
        try:
            record = json.loads((entry / "staged.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("format") != _FORMAT:
            return None
        with contextlib.suppress(OSError):
            os.utime(entry)  # recently used: last to be evicted
        try:
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
        except (KeyError, TypeError, ValueError):  # a damaged record: stage again
            return None

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


def _decode_path(raw: bytes, limits: TreeLimits) -> str:
    try:
        relpath = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeTree(f"path {raw[:200]!r} in the plugin tree is not valid UTF-8") from None
    return check_path(relpath, limits)


def _write_partial_clone_config(gitdir: Path, url: str) -> None:
    """Make `gitdir` a partial clone of `url` (remote `origin`, filter
    blob:none) whose fetches land as one pack each (no loose objects, so the
    file size limit bounds what a fetch writes)."""
    if any(c in url for c in '\n\r\0"\\'):
        raise ValueError(f"unexpected character in repository URL {url!r}")
    (gitdir / "config").write_text(
        "[core]\n"
        "\trepositoryformatversion = 1\n"
        "\tfilemode = true\n"
        "\tbare = true\n"
        "[extensions]\n"
        "\tpartialClone = origin\n"
        '[remote "origin"]\n'
        f'\turl = "{url}"\n'
        "\tpromisor = true\n"
        "\tpartialclonefilter = blob:none\n"
        "[fetch]\n"
        "\tunpackLimit = 1\n"
        "[transfer]\n"
        "\tunpackLimit = 1\n"
        "[gc]\n"
        "\tauto = 0\n"
    )


def _disk_usage(path: Path) -> int:
    """Bytes of the files under `path` (what a fetch has written so far)."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _budget_hint(stager: Stager) -> str:
    return (
        f"(PLUGIN_INSTALL_MAX_DIR_BYTES={stager.settings.max_dir_bytes} plus {stager.fetch_overhead} bytes "
        "for git's own data; a server without partial-clone filter support sends the whole commit)"
    )


def _disk_error(exc: OSError, what: str) -> PluginError:
    """An OSError of the operator's own disk while staging (ENOSPC, EIO,
    EACCES …) as a PluginError that is retried: the disk may recover."""
    name = errno.errorcode.get(exc.errno or 0, "OSError")
    log.warning("staging %s failed on the operator's disk: %s", what, exc)
    return StagingFailed(f"{what}: staging failed on the operator's disk ({name}: {exc.strerror}); will retry")


def _read_regular(path: Path, expected: os.stat_result, limit: int) -> bytes:
    """Read a file seen by lstat as regular; refuse it if it was swapped
    (for a FIFO, a device or another file) in between."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (expected.st_dev, expected.st_ino):
            raise UnsafeTree(f"{path.name!r} changed while it was read; only regular files are allowed")
        content = handle.read(max(limit, 0) + 1)
    if len(content) > limit:
        raise TreeTooLarge(f"{path.name!r} grew while it was read; the tree is over PLUGIN_INSTALL_MAX_DIR_BYTES")
    return content


def _parse_batch(output: bytes) -> dict[str, bytes]:
    """Parse `git cat-file --batch` output into {oid: content}."""
    contents: dict[str, bytes] = {}
    pos = 0
    while pos < len(output):
        newline = output.index(b"\n", pos)
        header = output[pos:newline].split()
        if len(header) != 3:  # "<oid> missing": the server left out part of the commit
            raise IntegrityMismatch(f"object {output[pos:newline][:80]!r} is missing from the fetched commit")
        oid, kind, size = header
        if kind != b"blob":
            raise UnsafeTree(
                f"object {oid.decode(errors='replace')} is a {kind.decode(errors='replace')}, expected a blob"
            )
        start = newline + 1
        end = start + int(size)
        if end > len(output):
            raise IntegrityMismatch(f"object {oid.decode(errors='replace')} is truncated")
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
