"""Alembic, driven from the app: ``portal db upgrade`` and the tests use the same entry points."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from portal.config import asset_dir


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", asset_dir("migrations"))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    command.downgrade(alembic_config(engine), revision)


def current(engine: Engine) -> None:
    command.current(alembic_config(engine), verbose=False)
