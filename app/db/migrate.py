"""Schema migrations (Alembic), runnable from a source checkout or an installed wheel."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

_PACKAGE = Path(__file__).resolve().parent.parent


def _script_location() -> Path:
    installed = _PACKAGE / "_migrations"
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at our migrations and ``database_url``."""
    location = _script_location()
    ini = location / "alembic.ini"
    if not ini.exists():
        ini = location.parent / "alembic.ini"
    config = Config(str(ini))
    config.set_main_option("script_location", str(location))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str) -> None:
    """Apply every pending migration (blocking; call outside an event loop)."""
    command.upgrade(alembic_config(database_url), "head")


def head_revision() -> str | None:
    """The newest revision the code knows."""
    location = _script_location()
    config = Config()
    config.set_main_option("script_location", str(location))
    return ScriptDirectory.from_config(config).get_current_head()


async def current_revision(conn: AsyncConnection) -> str | None:
    """The revision the database's schema is at (None before the first migration ran)."""
    result = await conn.execute(text("SELECT version_num FROM alembic_version"))
    revision: str | None = result.scalar_one_or_none()
    return revision
