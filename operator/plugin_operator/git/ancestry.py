"""Ancestry checks for the drift sweep (design §6): does a branch's new head
contain the installed commit (a fast-forward), or was history rewritten (a
force-push)?

The new head's history is fetched into a scratch bare repository with
`--filter=tree:0` (commits only: no trees, no blobs), then
`git merge-base --is-ancestor installed new`. Any failure (the fetch, a
timeout, an unknown commit) answers None: "cannot prove it is not a
rewrite", which the caller treats as a rewrite. Answers are facts about two
immutable commits, so they are cached for the process's lifetime (bounded).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

from plugin_operator.domain.source import Source, is_sha
from plugin_operator.git.runner import GitError, GitRunner, GitTimeout

log = logging.getLogger(__name__)
_CACHE_SIZE = 4096
# Commits only (no trees, no blobs): enough for `merge-base`, cheap for big repositories.
_FETCH = ("fetch", "--quiet", "--filter=tree:0", "--no-tags", "--no-recurse-submodules")


class Ancestry:
    def __init__(self, runner: GitRunner, *, workdir: Path, timeout: float) -> None:
        self.runner = runner
        self.workdir = workdir
        self.timeout = timeout
        self._known: OrderedDict[tuple[str, str, str], bool] = OrderedDict()
        self.checks = 0  # fetches started (tests and metrics)

    async def contains(self, source: Source, new: str, installed: str) -> bool | None:
        """True: `new` descends from (or is) `installed`; False: it does not;
        None: the check failed (treat as a rewrite)."""
        if source.owner is None or source.repo is None or not (is_sha(new) and is_sha(installed)):
            return None
        if new == installed:
            return True
        url = self.runner.repo_url(source.owner, source.repo)
        key = (url, installed, new)
        if key in self._known:
            self._known.move_to_end(key)
            return self._known[key]
        answer = await self._check(url, new, installed, label=f"{source.repo_key}")
        if answer is not None:
            self._known[key] = answer
            while len(self._known) > _CACHE_SIZE:
                self._known.popitem(last=False)
        return answer

    async def _check(self, url: str, new: str, installed: str, *, label: str) -> bool | None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="ancestry-", dir=self.workdir))
        try:
            run = self.runner.run
            await run(["init", "--quiet", "--bare", str(scratch)], timeout=self.timeout)
            self.checks += 1
            await run(
                [*_FETCH, "--end-of-options", url, new],
                cwd=scratch,
                timeout=self.timeout,
            )
            # Every commit reachable from `new` is here now: one that is not is no ancestor.
            try:
                await run(["cat-file", "-e", f"{installed}^{{commit}}"], cwd=scratch, timeout=self.timeout)
            except GitError:
                return False
            try:
                await run(["merge-base", "--is-ancestor", installed, new], cwd=scratch, timeout=self.timeout)
            except GitError as exc:
                if exc.returncode == 1:
                    return False  # the documented "not an ancestor" answer
                raise
            return True
        except (GitError, GitTimeout) as exc:
            log.warning("ancestry check %s..%s in %s failed: %s", installed[:12], new[:12], label, exc)
            return None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
