"""How git's failures map to domain errors, and that credentials never leak."""

from __future__ import annotations

import pytest

from plugin_operator.domain.errors import RefNotFound, RepositoryNotFound, SourceUnreachable
from plugin_operator.git.runner import GitError, GitTimeout, map_git_error, scrub


def test_scrub_removes_credentials_from_urls_and_headers() -> None:
    text = scrub("fatal: unable to access 'https://user:ghp_secret@github.com/a/b.git/': Authorization: Bearer xyz")
    assert "ghp_secret" not in text and "user" not in text and "xyz" not in text
    assert "https://***@github.com/a/b.git/" in text


@pytest.mark.parametrize(
    ("stderr", "error"),
    [
        ("fatal: repository 'https://github.com/a/b.git/' not found", RepositoryNotFound),
        ("fatal: could not read Username for 'https://github.com': terminal prompts disabled", RepositoryNotFound),
        ("fatal: unable to access '...': Could not resolve host: github.com", SourceUnreachable),
        ("fatal: unable to access '...': Failed to connect to 127.0.0.1 port 1: Connection refused", SourceUnreachable),
        ("error: RPC failed; HTTP 502 curl 22 The requested URL returned error: 502", SourceUnreachable),
        ("fatal: remote error: upload-pack: not our ref 0123", RefNotFound),
        ("something nobody expected", SourceUnreachable),
    ],
)
def test_git_failures_map_to_domain_errors(stderr: str, error: type[Exception]) -> None:
    mapped = map_git_error(GitError(["ls-remote"], 128, stderr), "acme/hello")
    assert type(mapped) is error
    assert "acme/hello" in str(mapped)


def test_a_timeout_is_unreachable_and_says_so() -> None:
    mapped = map_git_error(GitTimeout(["fetch"], 2.0), "acme/hello")
    assert isinstance(mapped, SourceUnreachable) and "timed out after 2s" in str(mapped)
