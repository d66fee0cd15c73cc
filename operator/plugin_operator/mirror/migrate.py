"""Run the mirror's Alembic migrations (shipped inside the package)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine

from plugin_operator.mirror.urls import normalize_url

_HERE = Path(__file__).resolve().parent
VERSION_TABLE = "plugin_operator_alembic_version"


def alembic_config() -> Config:
    config = Config(str(_HERE / "alembic.ini"))
    config.set_main_option("script_location", str(_HERE / "migrations"))
    config.set_main_option("version_table", VERSION_TABLE)
    return config


def upgrade(target: str | Engine, revision: str = "head") -> None:
    """Create or complete the mirror tables; idempotent, safe to run concurrently."""
    engine = target if isinstance(target, Engine) else create_engine(normalize_url(target))
    try:
        config = alembic_config()
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    finally:
        if engine is not target:
            engine.dispose()
