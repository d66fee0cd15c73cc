"""The git host's redirects are refused, never followed (design §8): a
resolve against a host answering 301/302 fails with a clear error, and the
redirect target is never contacted."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugin_operator.domain.errors import PluginError
from plugin_operator.domain.source import parse_source
from plugin_operator.git import Resolver
from tests.fixtures.gitserver import git_settings


class _Server:
    def __init__(self, status: int, location: str | None) -> None:
        self.paths: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.paths.append(self.path)
                self.send_response(status)
                if location is not None:
                    self.send_header("Location", location + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def target() -> Iterator[_Server]:
    server = _Server(404, None)
    yield server
    server.close()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_not_followed(tmp_path: Path, target: _Server, status: int) -> None:
    redirecting = _Server(status, target.url + "/elsewhere")
    try:
        resolver = Resolver(git_settings(redirecting.url, tmp_path))
        with pytest.raises(PluginError) as failure:
            await resolver.resolve(parse_source("github://acme/hello#main", allow_unpinned=False))
    finally:
        redirecting.close()
    assert redirecting.paths and redirecting.paths[0].startswith("/acme/hello.git/info/refs")
    assert target.paths == []  # the redirect target was never contacted
    assert failure.value.reason == "RedirectRefused" and failure.value.permanent
    assert f"returned error: {status}" in failure.value.message
    assert "acme/hello" in failure.value.message
