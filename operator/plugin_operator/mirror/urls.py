"""DATABASE_URL as the platform writes it -> a SQLAlchemy URL on psycopg 3."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url

from plugin_operator.domain.redact import redact


def normalize_url(url: str | URL) -> URL:
    """`postgres://` and `postgresql://` use psycopg 3; explicit drivers stay."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def safe_url(url: str | URL) -> str:
    """For logs and messages: never the password (nor a token in the query
    string, nor a libpq `password=`), also for a string that is not a URL."""
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: its error message would hold the password
        shown = url.render_as_string(hide_password=True) if isinstance(url, URL) else str(url)
    return redact(shown)
