"""A real git server on the loopback interface, for tests, the demo and the
benchmark: `git http-backend` (CGI, smart HTTP, protocol v2) behind a
`ThreadingHTTPServer` on 127.0.0.1, serving bare repositories kept in a
temporary directory as `<root>/<owner>/<repo>.git`.

Repositories are built with plumbing (`hash-object`, `mktree`, `commit-tree`,
`update-ref`), never a work tree, so a test can write exactly the tree it
needs: executables, symlinks pointing anywhere, rewritten history.

Served repositories set `uploadpack.allowAnySHA1InWant` (and the reachable
variant) so clients can fetch a commit by SHA, as GitHub allows, and
`uploadpack.allowFilter` so partial clones (`--filter=blob:none`) work, as on
GitHub; `create_repo(..., allow_filter=False)` serves a repository the way a
server without filter support does. `bytes_sent` counts the response bytes
served, so a test can measure what a client downloaded.

    with GitServer() as server:
        sha = server.create_repo("acme", "hello", {"plugin.yaml": "name: hello\\n"})
        server.tag("acme", "hello", "v1.0.0", sha, annotated=True)
        url = server.base_url            # GITHUB_BASE_URL for the operator

`Blackhole` is a server that accepts connections and never answers: point a
client at it to test timeouts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

_HTTP_BACKEND_TIMEOUT = 120


@dataclass(frozen=True)
class File:
    """A regular file; `executable` gives it mode 100755."""

    content: bytes | str
    executable: bool = False


@dataclass(frozen=True)
class Symlink:
    """A symbolic link (mode 120000) to `target`, which may point anywhere."""

    target: str


@dataclass(frozen=True)
class Submodule:
    """A gitlink (mode 160000) to a commit of another repository."""

    sha: str


Entry = bytes | str | File | Symlink | Submodule
Files = Mapping[str, Entry]


def _git_env(home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "LC_ALL": "C",
        "GIT_AUTHOR_NAME": "Loopback",
        "GIT_AUTHOR_EMAIL": "loopback@example.invalid",
        "GIT_COMMITTER_NAME": "Loopback",
        "GIT_COMMITTER_EMAIL": "loopback@example.invalid",
    }


class _Service:
    """start()/stop() plus the context-manager protocol."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class GitServer(_Service):
    """Bare repositories served over smart HTTP on 127.0.0.1:<free port>."""

    def __init__(self, root: Path | None = None) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="gitserver-")) if root is None else root
        self.repos = self.root / "repos"
        self._home = self.root / "home"
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._clock = 1_700_000_000  # commit dates: distinct and reproducible
        self.requests = 0  # HTTP requests served (a test can assert on traffic)
        self.bytes_sent = 0  # response body bytes served
        self._count_lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> Self:
        self.repos.mkdir(parents=True, exist_ok=True)
        self._home.mkdir(parents=True, exist_ok=True)
        handler = type("_BoundHandler", (_Handler,), {"server_ref": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="gitserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`: what GITHUB_BASE_URL should be."""
        if self._httpd is None:
            raise RuntimeError("GitServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, owner: str, repo: str) -> str:
        return f"{self.base_url}/{owner}/{repo}.git"

    # --- repositories -----------------------------------------------------------

    def path(self, owner: str, repo: str) -> Path:
        return self.repos / owner / f"{repo}.git"

    def git(self, owner: str, repo: str, *args: str, stdin: bytes | None = None) -> str:
        """Run a git command in a served repository; return its stdout."""
        return self._run(["git", *args], cwd=self.path(owner, repo), stdin=stdin).decode().strip()

    def _run(self, argv: list[str], *, cwd: Path, stdin: bytes | None = None, **env: str) -> bytes:
        full_env = _git_env(self._home) | env
        done = subprocess.run(argv, cwd=cwd, input=stdin, capture_output=True, env=full_env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[:3]} failed: {done.stderr.decode(errors='replace').strip()}")
        return done.stdout

    def create_repo(
        self,
        owner: str,
        repo: str,
        files: Files | None = None,
        *,
        branch: str = "main",
        allow_filter: bool = True,
    ) -> str:
        """Create a bare repository; with `files`, commit them on `branch` and
        make it the default branch. Returns the commit SHA ('' when empty).
        `allow_filter=False` refuses partial-clone filters (an old server)."""
        path = self.path(owner, repo)
        path.mkdir(parents=True, exist_ok=False)
        self._run(["git", "init", "--quiet", "--bare", f"--initial-branch={branch}"], cwd=path)
        for key, value in (
            ("uploadpack.allowAnySHA1InWant", "true"),
            ("uploadpack.allowReachableSHA1InWant", "true"),
            ("uploadpack.allowTipSHA1InWant", "true"),
            ("uploadpack.allowFilter", "true" if allow_filter else "false"),
            ("http.receivepack", "false"),
        ):
            self._run(["git", "config", key, value], cwd=path)
        return self.commit(owner, repo, files, branch=branch) if files is not None else ""

    def commit(
        self,
        owner: str,
        repo: str,
        files: Files,
        *,
        branch: str = "main",
        message: str = "commit",
        parent: str | None = None,
        orphan: bool = False,
    ) -> str:
        """Commit `files` (the whole tree) on top of `branch` (or `parent`,
        or nothing when `orphan`) and move `branch` to it. Returns the SHA."""
        return self.commit_tree(
            owner, repo, self._tree(owner, repo, files), branch=branch, message=message, parent=parent, orphan=orphan
        )

    def commit_tree(
        self,
        owner: str,
        repo: str,
        tree: str,
        *,
        branch: str = "main",
        message: str = "commit",
        parent: str | None = None,
        orphan: bool = False,
    ) -> str:
        """Commit the tree object `tree` (see `raw_tree`) as `commit` does."""
        if parent is None and not orphan:
            with contextlib.suppress(RuntimeError):
                parent = self.git(owner, repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}")
        argv = ["git", "commit-tree", tree, "-m", message]
        if parent and not orphan:
            argv += ["-p", parent]
        self._clock += 60
        date = f"{self._clock} +0000"
        sha = (
            self._run(argv, cwd=self.path(owner, repo), GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date).decode().strip()
        )
        self.git(owner, repo, "update-ref", f"refs/heads/{branch}", sha)
        return sha

    def force_push(self, owner: str, repo: str, files: Files, *, branch: str = "main") -> str:
        """Rewrite `branch` to a new commit unrelated to its history (what a
        force-push of rewritten history does). Returns the new SHA."""
        return self.commit(owner, repo, files, branch=branch, message="rewritten", orphan=True)

    def branch(self, owner: str, repo: str, name: str, sha: str) -> None:
        self.git(owner, repo, "update-ref", f"refs/heads/{name}", sha)

    def tag(self, owner: str, repo: str, name: str, sha: str, *, annotated: bool = False, force: bool = False) -> None:
        """Create (or with `force`, move) a lightweight or annotated tag."""
        argv = ["tag"]
        if force:
            argv.append("--force")
        if annotated:
            argv += ["--annotate", "--message", f"release {name}"]
        self._clock += 60
        date = f"{self._clock} +0000"
        self._run(
            ["git", *argv, "--end-of-options", name, sha],
            cwd=self.path(owner, repo),
            GIT_COMMITTER_DATE=date,
        )

    def move_tag(self, owner: str, repo: str, name: str, sha: str, *, annotated: bool = False) -> None:
        self.tag(owner, repo, name, sha, annotated=annotated, force=True)

    def blob(self, owner: str, repo: str, content: bytes | str) -> str:
        """Write a blob; return its SHA."""
        return self._blob(owner, repo, _bytes(content))

    def tree(self, owner: str, repo: str, files: Files) -> str:
        """Write the tree of `files` (as `commit` would); return its SHA."""
        return self._tree(owner, repo, files)

    def raw_tree(self, owner: str, repo: str, entries: Sequence[tuple[str, bytes | str, str]]) -> str:
        """Write a tree object holding exactly `entries` (mode, name, SHA), in
        that order and unchecked (`hash-object --literally`): duplicate
        names, any bytes in a name, a `/` in a name, unsorted entries: what
        `git mktree` and `fsck` refuse and a hostile server may still serve.
        Modes are raw (`100644`, `40000` for a tree, `120000`, `160000`)."""
        body = b"".join(mode.encode() + b" " + _bytes(name) + b"\0" + bytes.fromhex(sha) for mode, name, sha in entries)
        return self.git(owner, repo, "hash-object", "-t", "tree", "-w", "--literally", "--stdin", stdin=body)

    def _tree(self, owner: str, repo: str, files: Files) -> str:
        nested: dict[str, object] = {}
        for relpath, entry in files.items():
            *dirs, leaf = relpath.strip("/").split("/")
            node = nested
            for part in dirs:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise ValueError(f"{relpath}: {part} is both a file and a directory")
                node = child
            node[leaf] = entry
        return self._mktree(owner, repo, nested)

    def _mktree(self, owner: str, repo: str, node: dict[str, object]) -> str:
        lines: list[bytes] = []
        for name, entry in sorted(node.items()):
            if isinstance(entry, dict):
                mode, kind, sha = "040000", "tree", self._mktree(owner, repo, entry)
            elif isinstance(entry, Symlink):
                mode, kind, sha = "120000", "blob", self._blob(owner, repo, entry.target.encode())
            elif isinstance(entry, Submodule):
                mode, kind, sha = "160000", "commit", entry.sha
            elif isinstance(entry, File):
                mode, kind = ("100755" if entry.executable else "100644"), "blob"
                sha = self._blob(owner, repo, _bytes(entry.content))
            elif isinstance(entry, bytes | str):
                mode, kind, sha = "100644", "blob", self._blob(owner, repo, _bytes(entry))
            else:
                raise TypeError(f"{name}: unsupported entry {entry!r}")
            lines.append(f"{mode} {kind} {sha}\t".encode() + name.encode() + b"\0")
        return self.git(owner, repo, "mktree", "-z", "--missing", stdin=b"".join(lines))

    def _blob(self, owner: str, repo: str, content: bytes) -> str:
        return self.git(owner, repo, "hash-object", "-w", "--stdin", stdin=content)


def _bytes(content: bytes | str) -> bytes:
    return content.encode() if isinstance(content, str) else content


class _Handler(BaseHTTPRequestHandler):
    """Runs `git http-backend` for each request (CGI/1.1)."""

    server_ref: GitServer
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- the base class's name
        pass  # quiet: tests and the demo have their own logs

    def do_GET(self) -> None:
        self._backend()

    def do_POST(self) -> None:
        self._backend()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _backend(self) -> None:
        server = self.server_ref
        with server._count_lock:
            server.requests += 1
        parts = urlsplit(self.path)
        body = self._body()
        env = _git_env(server._home) | {
            "GIT_PROJECT_ROOT": str(server.repos),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": parts.path,
            "QUERY_STRING": parts.query,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        try:
            done = subprocess.run(
                ["git", "http-backend"],
                input=body,
                capture_output=True,
                env=env,
                timeout=_HTTP_BACKEND_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self.send_error(HTTPStatus.GATEWAY_TIMEOUT)
            return
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = done.stdout.partition(b"\n\n")
        status = HTTPStatus.OK.value
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers.append((key.strip(), value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        with server._count_lock:
            server.bytes_sent += len(payload)


class Blackhole(_Service):
    """Accepts TCP connections on 127.0.0.1 and never answers."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> Self:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, name="blackhole", daemon=True)
        self._thread.start()
        return self

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self._conns.append(conn)  # held open, never read, never answered

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for conn in self._conns:
            conn.close()
        if self._sock is not None:
            self._sock.close()

    @property
    def base_url(self) -> str:
        if self._sock is None:
            raise RuntimeError("Blackhole is not started")
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"
