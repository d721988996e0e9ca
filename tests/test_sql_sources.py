"""SQL that lives in the package (service/sql/) and the migrations that install it: the
newest migration embedding each source file carries a copy identical to it, so a change to
the source cannot ship without the migration that applies it."""

from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory

from service import migrate
from service.settings import Settings

SQL = Path(migrate.__file__).resolve().parent / "sql"


def _frozen_copies() -> dict[str, list[tuple[str, str]]]:
    """For each source file name, (revision, frozen text) from oldest to newest."""
    config = migrate.alembic_config(Settings(database_url="postgresql://u@h/d"))
    script = ScriptDirectory.from_config(config)
    copies: dict[str, list[tuple[str, str]]] = {}
    for revision in reversed(list(script.walk_revisions())):
        frozen = getattr(revision.module, "FROZEN_SQL", {})
        for name, text in frozen.items():
            copies.setdefault(name, []).append((revision.revision, text))
    return copies


def test_every_sql_source_is_installed_by_a_migration() -> None:
    sources = {p.name for p in SQL.glob("*.sql")}
    assert sources, f"no SQL sources in {SQL}"
    assert sources == set(_frozen_copies())


def test_the_newest_frozen_copy_is_the_source() -> None:
    for name, copies in _frozen_copies().items():
        revision, text = copies[-1]
        source = (SQL / name).read_text()
        assert text == source, (
            f"service/sql/{name} differs from the copy in migration {revision}: "
            "add a migration that embeds the new version"
        )
