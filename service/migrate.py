"""Applying the Alembic migrations from code (`chat migrate`, `chat serve`, the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from .settings import Settings


def project_root() -> Path:
    """Where migrations/ and alembic.ini are: beside this package in a checkout (editable
    install), else the working directory (the container image puts them in /app)."""
    for root in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (root / "migrations" / "env.py").is_file():
            return root
    raise FileNotFoundError("migrations/ not found beside the package nor in the working directory")


def alembic_config(settings: Settings) -> Config:
    root = project_root()
    ini = root / "alembic.ini"
    config = Config(str(ini)) if ini.exists() else Config()
    config.set_main_option("script_location", str(root / "migrations"))
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
