"""Settings from the environment: a bad value names its variable and what was expected."""

from __future__ import annotations

import pytest

from plugin_operator.config import ConfigError, Settings


def test_defaults_when_nothing_is_set() -> None:
    settings = Settings.from_env({})
    assert settings.drift_sweep_interval == 3600
    assert settings.log_format == "json" and not settings.log_debug
    assert settings.database_url is None


def test_durations_and_flags_parse() -> None:
    settings = Settings.from_env(
        {"DRIFT_SWEEP_INTERVAL": "5m", "PLUGIN_LOG_FORMAT": "text", "PLUGIN_LOG_DEBUG": "true"}
    )
    assert settings.drift_sweep_interval == 300
    assert settings.log_format == "text" and settings.log_debug


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DRIFT_SWEEP_INTERVAL", "soon", "expected a duration"),
        ("PLUGIN_ALLOW_UNPINNED", "maybe", "expected true or false"),
        ("PLUGIN_INSTALL_MAX_DIR_BYTES", "big", "expected an integer"),
        ("PLUGIN_LOG_FORMAT", "xml", "expected json or text"),
        ("PLUGIN_LOG_DEBUG", "loud", "expected true or false"),
    ],
)
def test_a_bad_value_names_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as failure:
        Settings.from_env({name: value})
    assert name in str(failure.value) and expected in str(failure.value)


def test_the_database_password_never_reaches_the_log_line() -> None:
    settings = Settings.from_env({"DATABASE_URL": "postgresql+psycopg://app:s3cret@db:5432/platform"})
    shown = settings.redacted()
    assert "s3cret" not in shown and "db:5432/platform" in shown


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://x:tok3n@github.com", "must not carry credentials"),
        ("https://tok3n@github.com", "must not carry credentials"),
        ("https://github.com/?access_token=tok3n", "must not carry a query string"),
        ("https://github.com/#tok3n", "must not carry a query string"),
        ("ftp://user:tok3n@host", "must not carry credentials"),
    ],
)
def test_a_base_url_carrying_a_secret_is_refused_without_echoing_it(value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as failure:
        Settings.from_env({"GITHUB_BASE_URL": value})
    assert expected in str(failure.value) and "tok3n" not in str(failure.value)


def test_no_setting_is_shown_with_its_secret() -> None:
    settings = Settings.from_env(
        {"DATABASE_URL": "postgresql://app:s3cret@db/p?sslpassword=s3cretq&application_name=x"}
    )
    assert "s3cret" not in settings.redacted()
    with pytest.raises(ConfigError) as refused:  # a libpq DSN is not a URL the mirror can use
        Settings.from_env({"DATABASE_URL": "host=db password=s3cret"})
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("mysql://app:s3cret@db/p", "unsupported scheme 'mysql'"),
        ("postgresql://app:s3cret@db:54x2/p", "not a valid URL"),
        ("postgresql://app:s3cret@/p", "no host"),
        ("postgresql://app:s3cret@db:5432/", "no database name"),
        ("db.internal:5432/p", "not a URL"),
        ("postgresql://app:s3cret@db:99999/p", "not a valid URL"),
        ("host=db password=s3cret", "not a URL"),
    ],
)
def test_a_bad_database_url_is_refused_naming_the_variable_never_the_password(url: str, said: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"DATABASE_URL": url})
    message = str(refused.value)
    assert message.startswith("DATABASE_URL=")
    assert said in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:s3cret@db:5432/platform",
        "postgres://app@db/platform",
        "postgresql+psycopg://app:s3cret@127.0.0.1:6543/platform?sslmode=require",
        "postgresql:///platform?host=/var/run/postgresql",
    ],
)
def test_good_database_urls_are_kept_as_given(url: str) -> None:
    assert Settings.from_env({"DATABASE_URL": url}).database_url == url


def test_mirror_timeouts_are_durations() -> None:
    settings = Settings.from_env({"DATABASE_CONNECT_TIMEOUT": "2s", "DATABASE_STATEMENT_TIMEOUT": "500ms"})
    assert (settings.database_connect_timeout, settings.database_statement_timeout) == (2.0, 0.5)
    with pytest.raises(ConfigError, match="DATABASE_STATEMENT_TIMEOUT"):
        Settings.from_env({"DATABASE_STATEMENT_TIMEOUT": "soon"})


def test_a_duration_is_matched_whole() -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({"DRIFT_SWEEP_INTERVAL": "5m\n1h"})
