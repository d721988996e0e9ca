"""The `chat` command: serve, migrate, dev (PROTOCOL.md, Command line)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import click
import uvicorn

from . import logs, migrate
from .settings import ConfigError, Settings, new_secret


class _DrainingServer(uvicorn.Server):
    """uvicorn, but on SIGTERM the app drains (in-flight sends acked, sockets closed with
    1012) before uvicorn closes the connections itself."""

    async def shutdown(self, sockets: Any = None) -> None:
        for server in self.servers:
            server.close()
        chat = getattr(self.config.loaded_app and _app_state(self.config), "chat", None)
        if chat is not None:
            await chat.drain()
        await super().shutdown(sockets)


def _app_state(config: uvicorn.Config) -> Any:
    app = config.loaded_app
    # uvicorn wraps the app in middleware proxies; the FastAPI app is at the bottom.
    while app is not None and not hasattr(app, "state"):
        app = getattr(app, "app", None)
    return app.state if app is not None else None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_server(settings: Settings, host: str, port: int) -> None:
    from .app import create_app

    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=settings.max_frame_bytes,
        ws_ping_interval=20,
        ws_ping_timeout=20,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
        proxy_headers=True,
    )
    # uvicorn drains on SIGINT or SIGTERM, then raises the signal again once its own handlers
    # are gone; as KeyboardInterrupt (SIGTERM too, by this handler) that is a clean exit 0.
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        _DrainingServer(config).run()


def _fail(error: Exception) -> None:
    click.echo(f"error: {error}", err=True)
    sys.exit(2)


@click.group()
def main() -> None:
    """A chat service whose messages live in PostgreSQL."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--no-migrate", is_flag=True, help="Do not apply pending migrations at start.")
def serve(host: str, port: int, no_migrate: bool) -> None:
    """Serve; needs CHAT_DATABASE_URL and CHAT_SECRET_KEY."""
    try:
        settings = Settings()
        settings.require_database_url()
        settings.require_secret()
    except (ConfigError, ValueError) as error:
        _fail(error)
    logs.configure(settings.log_format, settings.log_level)
    if not no_migrate:
        migrate.upgrade(settings)
    run_server(settings, host, port)


@main.command(name="migrate")
def migrate_command() -> None:
    """Apply pending migrations (same as `alembic upgrade head`)."""
    try:
        settings = Settings()
        settings.require_database_url()
    except (ConfigError, ValueError) as error:
        _fail(error)
    logs.configure("text", settings.log_level)
    migrate.upgrade(settings)
    click.echo("migrations applied")


def dev_database(data: Path) -> tuple[str, Any]:
    """CHAT_DATABASE_URL if set, else a private cluster under `data/pg` (started or reused)."""
    url = os.environ.get("CHAT_DATABASE_URL")
    if url:
        return url, None
    from . import pgcluster

    cluster = pgcluster.start_cluster(data / "pg")
    pgcluster.ensure_database(cluster.admin_url, "chat")
    return cluster.url("chat"), cluster


def dev_secret(data: Path) -> str:
    """CHAT_SECRET_KEY if set, else one made once and kept under `data/`."""
    if os.environ.get("CHAT_SECRET_KEY"):
        return os.environ["CHAT_SECRET_KEY"]
    path = data / "secret_key"
    try:
        # Created 0600 from the start: data/ itself is world-readable (see `dev`).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as file:
            file.write(new_secret())
    return path.read_text().strip()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--data", default=".data", show_default=True, type=click.Path(path_type=Path))
def dev(host: str, port: int, data: Path) -> None:
    """Zero-configuration start: a private PostgreSQL under .data/ unless
    CHAT_DATABASE_URL is set, a kept secret key, text logs."""
    data = data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o755)  # the PostgreSQL server runs as another user and must reach pg/
    # uvicorn shuts down gracefully on SIGINT or SIGTERM, then raises the signal again. As
    # KeyboardInterrupt (SIGTERM too, by this handler) it unwinds through the `finally` that
    # stops our cluster; SIGTERM's default action would kill us and leave PostgreSQL running.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        database_url, cluster = dev_database(data)
    except RuntimeError as error:  # PostgresNotFound, or a cluster that cannot start
        _fail(error)
    try:
        settings = Settings(
            database_url=database_url,
            secret_key=dev_secret(data),
            log_format="text",
        )
        logs.configure(settings.log_format, settings.log_level)
        migrate.upgrade(settings)
        click.echo(f"chat is running at http://{host}:{port}  (Ctrl+C to stop)")
        run_server(settings, host, port)
    except KeyboardInterrupt:
        pass  # Ctrl+C or SIGTERM: the normal way to stop `chat dev`
    finally:
        if cluster is not None and cluster.started_here:
            cluster.stop()


if __name__ == "__main__":
    main()
