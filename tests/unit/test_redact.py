"""domain.redact: one function masks credentials in any text (design §8),
the log filter applies it to every record, and the operator's start-up output
never shows a secret from its settings."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugin_operator.config import ConfigError, Settings
from plugin_operator.domain import redact as redact_module
from plugin_operator.domain.redact import RedactingFilter, install_log_redaction, redact
from plugin_operator.git.runner import GitError, scrub
from plugin_operator.mirror.urls import safe_url

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://user:pw@host/x", "https://***@host/x"),
        ("http://user:pw@host:8080/x", "http://***@host:8080/x"),
        ("https://tok@host/x", "https://***@host/x"),
        ("https://user:@host/x", "https://***@host/x"),
        ("git+ssh://git:pw@host/x.git", "git+ssh://***@host/x.git"),
        ("postgresql+psycopg://app:s3cret@db:5432/platform", "postgresql+psycopg://***@db:5432/platform"),
        ("postgres://app:p@ss@db/platform", "postgres://***@db/platform"),
        ("postgres://app:p/ss@db/platform", "postgres://***@db/platform"),
        ("postgres://app:p%40ss@db/platform", "postgres://***@db/platform"),
        ("HTTPS://U:PW@HOST/", "HTTPS://***@HOST/"),
        ("https://[::1]:8443/x?token=abc", "https://[::1]:8443/x?token=***"),
        ("https://h/x?a=1&access_token=abc#frag", "https://h/x?a=***&access_token=***#frag"),
        ("https://h/x?sig=abc;se=2030", "https://h/x?sig=***;se=***"),
        ("https://h/x?flag", "https://h/x?flag"),
        ("see 'https://u:pw@h/x' now", "see 'https://***@h/x' now"),
        ('"https://u:pw@h/x"', '"https://***@h/x"'),
        ("<https://u:pw@h/x>", "<https://***@h/x>"),
        ("host=db user=app password=s3cret dbname=p", "host=db user=app password=*** dbname=p"),
        ("host=db password='s3 cret' dbname=p", "host=db password='***' dbname=p"),
        ("Authorization: Bearer abc.def.ghi", "Authorization: Bearer ***"),
        ("authorization: token ghp_abc", "authorization: token ***"),
        ("Authorization: abc", "Authorization: ***"),
        ("Proxy-Authorization: Basic Zm9v", "Proxy-Authorization: Basic ***"),
        ("Cookie: session=abc; other=def", "Cookie: ***"),
        ("GITHUB_TOKEN=ghp_abc", "GITHUB_TOKEN=***"),
        ("client_secret: xyz", "client_secret: ***"),
        ('{"password": "x", "user": "app"}', '{"password": "***", "user": "app"}'),
        ("no secrets here: github://acme/plugins/sub@x#main", "no secrets here: github://acme/plugins/sub@x#main"),
        ("plain text", "plain text"),
        ("", ""),
    ],
)
def test_redact_masks_credentials(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert redact(shown) == shown


def test_the_git_runners_scrub_uses_it_and_bounds_the_length() -> None:
    assert scrub("fatal: https://x:ghp_abc@github.com/a/b?token=t") == "fatal: https://***@github.com/a/b?token=***"
    assert len(scrub("x" * 10_000)) < 2100
    error = GitError(["ls-remote"], 128, "fatal: unable to access 'https://me:hunter2@h/a.git/'")
    assert "hunter2" not in str(error)


def test_settings_and_database_urls_are_shown_redacted() -> None:
    settings = Settings.from_env(
        {"DATABASE_URL": "postgresql://app:s3cret@db/p?sslpassword=s3cretq", "GITHUB_BASE_URL": "https://git.acme.io"}
    )
    shown = settings.redacted()
    assert "s3cret" not in shown and "db/p" in shown and "https://git.acme.io" in shown
    with pytest.raises(ConfigError) as libpq:  # not a URL: refused at start-up, the password never shown
        Settings.from_env({"DATABASE_URL": "host=db user=app password=s3cret"})
    assert "s3cret" not in str(libpq.value) and "host=db" in str(libpq.value)
    for url in ("postgresql://app:s3cret@db/p", "host=db password=s3cret", "postgresql://app:s3cret@db:notaport/p"):
        assert "s3cret" not in safe_url(url)


@pytest.fixture
def redaction_installed() -> Iterator[None]:
    factory = logging.getLogRecordFactory()
    root = logging.getLogger()
    filters, handler_filters = list(root.filters), {h: list(h.filters) for h in root.handlers}
    install_log_redaction()
    try:
        yield
    finally:
        logging.setLogRecordFactory(factory)
        root.filters[:] = filters
        for handler, kept in handler_filters.items():
            handler.filters[:] = kept
        redact_module._installed = False


def test_every_log_record_is_redacted_also_a_libraries(redaction_installed: None) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(handler)
    try:
        lib = logging.getLogger("urllib3.connectionpool")
        lib.setLevel(logging.INFO)
        lib.warning("Retrying %s", "https://me:hunter2@h/x?token=t0k")
        try:
            raise RuntimeError("postgresql://app:hunter2@db/p")
        except RuntimeError:
            logging.getLogger("sqlalchemy.pool").exception("connection failed: password=%s", "hunter2")
    finally:
        logging.getLogger().removeHandler(handler)
    out = stream.getvalue()
    assert "hunter2" not in out and "t0k" not in out
    assert "https://***@h/x?token=***" in out and "RuntimeError" in out


def test_the_filter_handles_a_broken_format_string() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "bad %d https://u:pw@h", ("notanumber",), None)
    assert RedactingFilter().filter(record)
    assert "pw@" not in record.getMessage()


# -- the operator's own output ---------------------------------------------------------

SECRETS = ("DBPASSW0RD", "QUERYT0KEN", "BASEURLT0KEN")


def _run_operator(env_extra: dict[str, str], seconds: float = 20) -> str:
    env = {
        **os.environ,
        "KUBECONFIG": "/nonexistent",
        "PLUGIN_METRICS_PORT": "0",
        "PYTHONPATH": str(REPO_ROOT / "operator"),
        **env_extra,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "plugin_operator", "run", "--liveness="],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return out.decode("utf-8", "replace")


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_operator_start_up_output_shows_no_secret(log_format: str) -> None:
    out = _run_operator(
        {
            "DATABASE_URL": f"postgresql://app:{SECRETS[0]}@127.0.0.1:1/platform?sslpassword={SECRETS[1]}",
            "GITHUB_BASE_URL": "https://git.example.com",
            "PLUGIN_LOG_FORMAT": log_format,
        },
        seconds=8,
    )
    assert "starting with" in out and "127.0.0.1:1/platform" in out, out
    for secret in SECRETS:
        assert secret not in out


@pytest.mark.parametrize(
    "base_url",
    [f"https://x:{SECRETS[2]}@git.example.com", f"https://{SECRETS[2]}@git.example.com", f"https://h/?t={SECRETS[2]}"],
    ids=["userinfo", "token-user", "query"],
)
def test_a_refused_base_url_is_not_echoed(base_url: str) -> None:
    out = _run_operator({"GITHUB_BASE_URL": base_url, "DATABASE_URL": f"postgresql://a:{SECRETS[0]}@h/p"})
    assert "configuration error: GITHUB_BASE_URL must not carry" in out
    for secret in SECRETS:
        assert secret not in out


def test_db_cli_errors_show_no_password() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator"), "KUBECONFIG": "/nonexistent"}
    for url in (f"host=db password={SECRETS[0]}", f"postgresql://app:{SECRETS[0]}@127.0.0.1:1/p"):
        done = subprocess.run(
            [sys.executable, "-m", "plugin_operator", "db", "upgrade"],
            env={**env, "DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0
        assert SECRETS[0] not in done.stdout + done.stderr
