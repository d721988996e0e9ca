"""Alembic environment: async engine, and every upgrade under one advisory lock.

The lock lets several instances start at once against an empty database: the first applies
the migrations, the others wait and then find nothing left to do.
"""

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from service.db import connect_args
from service.models import Base
from service.settings import Settings

# Any constant works, as long as nothing else in the database uses it.
MIGRATION_LOCK_KEY = 7_356_228_001

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    return url if url else Settings().sqlalchemy_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        # Transaction-scoped: released at commit, and on rollback if a migration fails.
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        context.run_migrations()


async def run_async_migrations() -> None:
    # In UTC, as every session of the service: a migration that writes a timestamp as text
    # gets the same offset whatever the database's default TimeZone.
    engine = create_async_engine(_url(), poolclass=pool.NullPool, connect_args=connect_args())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_async_migrations())
