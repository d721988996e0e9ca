"""Applying the Alembic migrations from code (`chat migrate`, `chat serve`, the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from .settings import Settings


def migrations_dir() -> Path:
    """The Alembic revisions: inside the package where it is installed from a wheel (which
    carries them as service/migrations), else beside the package in a checkout (an editable
    install). Never the working directory: what is applied does not depend on where the
    command runs."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError(f"no migrations in {package} nor beside it")


def alembic_config(settings: Settings) -> Config:
    # Not alembic.ini: an installed package has none, and everything it sets is set here or
    # unused (env.py skips its logging setup when called from code).
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # ConfigParser would read "%" as interpolation.
    config.set_main_option("sqlalchemy.url", settings.sqlalchemy_url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the database to `revision`; safe to run from several processes at once.

    Runs its own event loop, so call it outside one (or through `asyncio.to_thread`).
    """
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str = "base") -> None:
    command.downgrade(alembic_config(settings), revision)
