"""Settings read once from environment variables and validated at start-up."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from plugin_operator.domain.redact import redact


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable
    (and never shows a credential: it goes through domain.redact)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(name: str, raw: str) -> float:
    """`90`, `90s`, `5m`, `1h`, `250ms` -> seconds."""
    match = _DURATION.fullmatch(raw.strip())
    if not match:
        raise ConfigError(f"{name}={raw!r}: expected a duration such as 30s, 5m or 1h")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ConfigError(f"{name}={raw!r}: must be positive")
    return seconds


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={raw!r}: expected true or false")


def _parse_int(name: str, raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected an integer") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r}: must be positive")
    return value


def _parse_port(name: str, raw: str) -> int:
    """A TCP port; 0 turns the endpoint off."""
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a port number (0 turns it off)") from None
    if not 0 <= value <= 65535:
        raise ConfigError(f"{name}={raw!r}: expected a port number between 0 and 65535")
    return value


def _parse_choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    if raw not in choices:
        raise ConfigError(f"{name}={raw!r}: expected {' or '.join(choices)}")
    return raw


_DB_SCHEMES = ("postgres", "postgresql", "postgresql+psycopg")


def parse_database_url(raw: str) -> str:
    """DATABASE_URL: a PostgreSQL URL (`postgresql://user:pass@host:5432/db`),
    checked at start-up so a typo stops the process naming the variable, not
    the first mirror write an hour later. Messages never show the password."""
    from sqlalchemy.engine import make_url  # not needed by every import of the settings

    shown = _shown_url(raw)
    name = "DATABASE_URL"
    hint = "expected postgresql://host:5432/database (user and password in the URL)"
    if "://" not in raw:
        raise ConfigError(f"{name}={shown!r}: not a URL; {hint}")
    scheme = raw.split("://", 1)[0].lower()
    if scheme not in _DB_SCHEMES:
        raise ConfigError(
            f"{name}={shown!r}: unsupported scheme {scheme!r}; expected postgresql:// (or postgresql+psycopg://)"
        )
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises on a port that is not a number
        url = make_url(raw)
    except ValueError:
        raise ConfigError(f"{name}={shown!r}: not a valid URL (a bad port or stray characters?)") from None
    except Exception:  # SQLAlchemy's ArgumentError: its message would hold the password
        raise ConfigError(f"{name}={shown!r}: not a valid database URL") from None
    host_in_query = "host" in url.query or "hostaddr" in url.query
    if not url.host and not host_in_query:
        raise ConfigError(f"{name}={shown!r}: no host; {hint}")
    if not url.database:
        raise ConfigError(f"{name}={shown!r}: no database name; {hint}")
    return raw


def _shown_url(raw: str) -> str:
    """The URL for a message: the password (and anything secret-looking) masked,
    even for a string that does not parse (no scheme, a libpq DSN …)."""
    shown = raw
    if "@" in raw:
        scheme, sep, rest = raw.partition("://") if "://" in raw else ("", "", raw)
        userinfo, _, tail = rest.rpartition("@")
        user = userinfo.split(":", 1)[0]
        shown = f"{scheme}{sep}{user}:***@{tail}" if ":" in userinfo else f"{scheme}{sep}{user}@{tail}"
    return redact(shown)


@dataclass(frozen=True)
class Settings:
    github_base_url: str = "https://github.com"
    registry_dir: Path = Path("/var/lib/plugin-operator/registry")
    cache_dir: Path = Path("/var/cache/plugin-operator")
    allow_unpinned: bool = False
    max_dir_bytes: int = 100 * 1024 * 1024
    max_files: int = 10_000  # files in one plugin tree
    max_depth: int = 32  # path segments of a file in the tree (`a/b/c` is 3)
    max_name_bytes: int = 255  # one path segment, in UTF-8 bytes
    max_path_bytes: int = 1024  # a whole relative path, in UTF-8 bytes
    fetch_timeout: float = 300.0
    resolve_timeout: float = 30.0
    resolve_cache_ttl: float = 10.0
    per_host_concurrency: int = 4
    drift_sweep_interval: float = 3600.0
    reconcile_interval: float = 600.0
    pod_concurrency: int = 8
    exec_timeout: float = 120.0
    database_url: str | None = None
    database_connect_timeout: float = 3.0  # per connection attempt of the mirror
    database_statement_timeout: float = 10.0  # per statement of the mirror (server side)
    pull_endpoint: str = ""
    metrics_port: int = 9090
    log_format: str = "json"  # or "text"
    log_debug: bool = False

    def redacted(self) -> str:
        """The settings for a log line: never a password, token or signature
        (every value goes through domain.redact)."""
        return ", ".join(
            f"{k}={_shown_url(v) if k == 'database_url' and v else redact(str(v))}" for k, v in vars(self).items()
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else None

        base = get("GITHUB_BASE_URL") or defaults.github_base_url
        try:
            parts = urlsplit(base)
        except ValueError:
            raise ConfigError(f"GITHUB_BASE_URL={base!r}: not a URL") from None
        if parts.username or parts.password or "@" in parts.netloc:
            raise ConfigError("GITHUB_BASE_URL must not carry credentials; use a git credential helper")
        if parts.scheme not in ("https", "http", "file") or (parts.scheme != "file" and not parts.hostname):
            raise ConfigError(f"GITHUB_BASE_URL={redact(base)!r}: expected an http(s) URL such as https://github.com")
        if parts.query or parts.fragment or "?" in base or "#" in base:
            raise ConfigError(
                "GITHUB_BASE_URL must not carry a query string or fragment (tokens in URLs end up in logs); "
                "use a git credential helper"
            )

        def dur(name: str, default: float) -> float:
            raw = get(name)
            return default if raw is None else parse_duration(name, raw)

        def num(name: str, default: int) -> int:
            raw = get(name)
            return default if raw is None else _parse_int(name, raw)

        return cls(
            github_base_url=base.rstrip("/"),
            registry_dir=Path(get("PLUGIN_REGISTRY_DIR") or defaults.registry_dir),
            cache_dir=Path(get("PLUGIN_CACHE_DIR") or defaults.cache_dir),
            allow_unpinned=_parse_bool("PLUGIN_ALLOW_UNPINNED", get("PLUGIN_ALLOW_UNPINNED") or "false"),
            max_dir_bytes=num("PLUGIN_INSTALL_MAX_DIR_BYTES", defaults.max_dir_bytes),
            max_files=num("PLUGIN_INSTALL_MAX_FILES", defaults.max_files),
            max_depth=num("PLUGIN_INSTALL_MAX_DEPTH", defaults.max_depth),
            max_name_bytes=num("PLUGIN_INSTALL_MAX_NAME_BYTES", defaults.max_name_bytes),
            max_path_bytes=num("PLUGIN_INSTALL_MAX_PATH_BYTES", defaults.max_path_bytes),
            fetch_timeout=dur("PLUGIN_INSTALL_FETCH_TIMEOUT", defaults.fetch_timeout),
            resolve_timeout=dur("PLUGIN_RESOLVE_TIMEOUT", defaults.resolve_timeout),
            resolve_cache_ttl=dur("PLUGIN_RESOLVE_CACHE_TTL", defaults.resolve_cache_ttl),
            per_host_concurrency=num("PLUGIN_GIT_HOST_CONCURRENCY", defaults.per_host_concurrency),
            drift_sweep_interval=dur("DRIFT_SWEEP_INTERVAL", defaults.drift_sweep_interval),
            reconcile_interval=dur("PLUGIN_RECONCILE_INTERVAL", defaults.reconcile_interval),
            pod_concurrency=num("PLUGIN_POD_CONCURRENCY", defaults.pod_concurrency),
            exec_timeout=dur("PLUGIN_EXEC_TIMEOUT", defaults.exec_timeout),
            database_url=parse_database_url(raw_db) if (raw_db := get("DATABASE_URL")) else None,
            database_connect_timeout=dur("DATABASE_CONNECT_TIMEOUT", defaults.database_connect_timeout),
            database_statement_timeout=dur("DATABASE_STATEMENT_TIMEOUT", defaults.database_statement_timeout),
            pull_endpoint=get("PLUGIN_PULL_ENDPOINT") or "",
            metrics_port=_parse_port("PLUGIN_METRICS_PORT", get("PLUGIN_METRICS_PORT") or "9090"),
            log_format=_parse_choice("PLUGIN_LOG_FORMAT", get("PLUGIN_LOG_FORMAT") or "json", ("json", "text")),
            log_debug=_parse_bool("PLUGIN_LOG_DEBUG", get("PLUGIN_LOG_DEBUG") or "false"),
        )
