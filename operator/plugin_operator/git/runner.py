"""A hardened runner for the `git` CLI (design §8).

- argv lists only, never a shell; callers put `--end-of-options` before any
  user-derived value;
- a scrubbed environment: no system or global config, an empty HOME, no
  prompts, no askpass, `GIT_ALLOW_PROTOCOL` limited to the scheme of the
  configured base URL, hooks and fsmonitor disabled;
- each command runs in its own process group; on timeout or cancellation the
  whole group is killed, so no `git-remote-https` helper is left behind;
- a partial clone never fetches missing objects behind the caller's back
  (`GIT_NO_LAZY_FETCH=1`, honoured by git >= 2.39.4); a call may bound the
  size of every file git writes (`RLIMIT_FSIZE`) and the output it returns;
- anything that reaches an error message has credentials scrubbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import resource
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from plugin_operator.config import Settings
from plugin_operator.domain.errors import RedirectRefused, RefNotFound, RepositoryNotFound, SourceUnreachable
from plugin_operator.domain.redact import redact

# Passed through from the operator's environment: proxies and CA bundles.
_PASSTHROUGH = (
    "PATH",
    "LANG",
    "TZ",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
)
_MAX_MESSAGE = 2000


def scrub(text: str) -> str:
    """Remove credentials (domain.redact: URL userinfo, query values, auth
    headers, password=...), and bound the length."""
    text = redact(text)
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + " …"


class GitError(Exception):
    """git exited non-zero. `stderr` is already scrubbed."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        self.returncode = returncode
        self.stderr = scrub(stderr.strip())
        super().__init__(f"git {args[0] if args else ''} exited {returncode}: {self.stderr}")


class GitTimeout(Exception):
    def __init__(self, args: Sequence[str], timeout: float) -> None:
        self.timeout = timeout
        super().__init__(f"git {args[0] if args else ''} timed out after {timeout:g}s")


class GitOutputTooLarge(Exception):
    """git wrote more than the caller's `stdout_limit`; it was killed."""

    def __init__(self, args: Sequence[str], limit: int) -> None:
        self.limit = limit
        super().__init__(f"git {args[0] if args else ''} wrote more than {limit} bytes of output")


_MAX_STDERR = 64 * 1024
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class GitResult:
    stdout: bytes
    stderr: str


class GitRunner:
    """Runs git with a hardened environment; counts the commands it ran."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base_url = settings.github_base_url.rstrip("/")
        self.scheme = urlsplit(self.base_url).scheme or "https"
        self.calls = 0  # every git command started (a metric)
        self._home = _empty_home()
        self._env = self._build_env()

    def _build_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in _PASSTHROUGH}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update(
            HOME=str(self._home),
            XDG_CONFIG_HOME=str(self._home),
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_TERMINAL_PROMPT="0",
            GIT_ALLOW_PROTOCOL=self.scheme,
            GIT_PROTOCOL_FROM_USER="0",
            GIT_NO_LAZY_FETCH="1",  # a missing object is an error, never a network fetch
            LC_ALL="C",
        )
        return env

    def _config_args(self) -> list[str]:
        args = [
            "-c",
            "core.hooksPath=" + os.devnull,
            "-c",
            "core.fsmonitor=false",
            "-c",
            "credential.interactive=false",
            "-c",
            "protocol.version=2",
            # A redirect from the git host is refused, never followed (design §8).
            "-c",
            "http.followRedirects=false",
        ]
        if self.scheme != "file":
            args += ["-c", "protocol.file.allow=never"]
        return args

    def repo_url(self, owner: str, repo: str) -> str:
        """The clone URL of `owner/repo` on the configured base (validated names only)."""
        return f"{self.base_url}/{owner}/{repo}.git"

    async def run(
        self,
        args: Sequence[str],
        *,
        timeout: float,  # noqa: ASYNC109 -- on expiry the process group is killed, not just awaited
        cwd: Path | None = None,
        stdin: bytes | None = None,
        file_size_limit: int | None = None,
        stdout_limit: int | None = None,
    ) -> GitResult:
        """Run `git <args>`; raise GitError on a non-zero exit, GitTimeout
        after `timeout` seconds (the process group is killed first).

        `file_size_limit`: RLIMIT_FSIZE of git and its children (bytes); a
        write beyond it fails with EFBIG ("File too large"; SIGXFSZ is
        ignored), so no single file git writes can exceed it.
        `stdout_limit`: kill git and raise GitOutputTooLarge once it has
        written more than this many bytes to stdout."""
        argv = ["git", *self._config_args(), *args]
        self.calls += 1
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=self._env,
            start_new_session=True,
            preexec_fn=None if file_size_limit is None else functools.partial(_limit_file_size, file_size_limit),
        )
        try:
            stdout, stderr = await asyncio.wait_for(_communicate(proc, stdin, stdout_limit), timeout)
        except TimeoutError:
            await _kill_group(proc)
            raise GitTimeout(args, timeout) from None
        except _OutputLimit:
            await _kill_group(proc)
            raise GitOutputTooLarge(args, stdout_limit or 0) from None
        except BaseException:  # cancelled: never leave git running
            await _kill_group(proc)
            raise
        text = stderr.decode("utf-8", "replace")
        if proc.returncode != 0:
            raise GitError(args, proc.returncode or -1, text)
        return GitResult(stdout, text)


class _OutputLimit(Exception):
    pass


async def _communicate(
    proc: asyncio.subprocess.Process, stdin: bytes | None, stdout_limit: int | None
) -> tuple[bytes, bytes]:
    """proc.communicate(), but stdout is bounded by `stdout_limit` and
    stderr keeps only its first _MAX_STDERR bytes (the rest is drained)."""

    async def feed() -> None:
        if proc.stdin is None:
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if stdin:
                proc.stdin.write(stdin)
                await proc.stdin.drain()
            proc.stdin.close()

    async def read(stream: asyncio.StreamReader | None, limit: int | None, keep: int | None) -> bytes:
        if stream is None:
            return b""
        chunks: list[bytes] = []
        total = kept = 0
        while chunk := await stream.read(_CHUNK):
            total += len(chunk)
            if limit is not None and total > limit:
                raise _OutputLimit
            if keep is None or kept < keep:
                chunks.append(chunk)
                kept += len(chunk)
        return b"".join(chunks)

    tasks = [
        asyncio.ensure_future(feed()),
        asyncio.ensure_future(read(proc.stdout, stdout_limit, None)),
        asyncio.ensure_future(read(proc.stderr, None, _MAX_STDERR)),
    ]
    try:
        _, out, err = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    await proc.wait()
    return out, err  # type: ignore[return-value]


def _limit_file_size(limit: int) -> None:
    """In the child, before exec: bound every file it (and its children) writes."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a silent kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@functools.cache
def _empty_home() -> Path:
    """One empty HOME per process: git finds no ~/.gitconfig, no credentials."""
    return Path(tempfile.mkdtemp(prefix="plugin-operator-git-home-"))


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.wait(), 5)


_NOT_FOUND = re.compile(
    r"repository .* not found|not found|does not appear to be a git repository|"
    r"could not read from remote repository|HTTP 404|returned error: 404|authentication failed|"
    r"could not read Username|terminal prompts disabled",
    re.IGNORECASE,
)
_NO_COMMIT = re.compile(
    r"not our ref|couldn't find remote ref|no such remote ref|unadvertised object|"
    r"remote error: .*(?:want|object)|invalid object|bad object",
    re.IGNORECASE,
)
_REDIRECT = re.compile(r"returned error: 30[0-8]\b|HTTP 30[0-8]\b", re.IGNORECASE)
_NETWORK = re.compile(
    r"could not resolve host|connection refused|connection timed out|timed out|"
    r"failed to connect|operation too slow|empty reply|gnutls|\bssl\b|\btls\b|"
    r"returned error: 5\d\d|HTTP 5\d\d|early EOF|the remote end hung up|RPC failed|reset by peer",
    re.IGNORECASE,
)


def map_git_error(exc: GitError | GitTimeout, what: str) -> Exception:
    """Translate a git failure about `what` (e.g. 'owner/repo') into a domain error."""
    if isinstance(exc, GitTimeout):
        return SourceUnreachable(f"{what}: {exc}")
    message = exc.stderr or f"exit status {exc.returncode}"
    if _REDIRECT.search(message):
        return RedirectRefused(
            f"{what}: the git host answered with a redirect, which is never followed; "
            f"point GITHUB_BASE_URL (or the source) at the final location: {message}"
        )
    if _NETWORK.search(message):
        return SourceUnreachable(f"{what} is unreachable: {message}")
    if _NO_COMMIT.search(message):
        return RefNotFound(f"{what}: the commit is not available upstream: {message}")
    if _NOT_FOUND.search(message):
        return RepositoryNotFound(
            f"repository {what} was not found (or is private and no credentials are configured): {message}"
        )
    return SourceUnreachable(f"{what}: git failed: {message}")
