"""Settings: the URLs derived from the one database URL, the secret check, env parsing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.fanout import via_postgres
from service.settings import MIN_SECRET_LENGTH, ConfigError, Settings

STRONG_SECRET = "k" * MIN_SECRET_LENGTH


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CHAT_* variable and no .env file of the developer's leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("CHAT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    "given",
    [
        "postgresql://chat:pw@db.example:5433/chat?sslmode=require",
        "postgres://chat:pw@db.example:5433/chat?sslmode=require",
        "postgresql+asyncpg://chat:pw@db.example:5433/chat?sslmode=require",
        "postgresql+psycopg://chat:pw@db.example:5433/chat?sslmode=require",
    ],
)
def test_urls_are_derived_from_any_postgres_spelling(given: str) -> None:
    """SQLAlchemy gets postgresql+asyncpg://, the fan-out plain postgresql://, rest kept."""
    settings = Settings(database_url=given)
    rest = "//chat:pw@db.example:5433/chat?sslmode=require"
    assert settings.sqlalchemy_url == "postgresql+asyncpg:" + rest
    assert settings.asyncpg_url == "postgresql:" + rest
    assert settings.fanout_url == "postgresql:" + rest
    assert via_postgres(settings.fanout_url)


def test_database_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """CHAT_DATABASE_URL is read from the environment."""
    monkeypatch.setenv("CHAT_DATABASE_URL", "postgres://u@h/d")
    assert Settings().sqlalchemy_url == "postgresql+asyncpg://u@h/d"


def test_percent_encoded_password_is_kept() -> None:
    """An escaped character in the password reaches both URLs unchanged."""
    settings = Settings(database_url="postgresql://u:p%40ss%2Fw@h:5432/d")
    assert settings.sqlalchemy_url == "postgresql+asyncpg://u:p%40ss%2Fw@h:5432/d"
    assert settings.fanout_url == "postgresql://u:p%40ss%2Fw@h:5432/d"


@pytest.mark.parametrize("given", ["mysql://u@h/d", "sqlite:///chat.db", "redis://h:6379/0"])
def test_non_postgres_database_url_is_refused(given: str) -> None:
    """A database URL of another kind is refused, naming the variable."""
    with pytest.raises(ValidationError, match="CHAT_DATABASE_URL"):
        Settings(database_url=given)


def test_missing_database_url_is_a_config_error() -> None:
    """Without CHAT_DATABASE_URL the derived URLs raise ConfigError naming it."""
    settings = Settings()
    assert settings.database_url is None
    with pytest.raises(ConfigError, match="CHAT_DATABASE_URL"):
        settings.require_database_url()
    with pytest.raises(ConfigError, match="CHAT_DATABASE_URL"):
        _ = settings.sqlalchemy_url


def test_broadcast_url_redis_is_used_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """CHAT_BROADCAST_URL=redis://... is the fan-out URL, unchanged; the database stays."""
    monkeypatch.setenv("CHAT_DATABASE_URL", "postgresql://u@h/d")
    monkeypatch.setenv("CHAT_BROADCAST_URL", "redis://cache.example:6380/2")
    settings = Settings()
    assert settings.fanout_url == "redis://cache.example:6380/2"
    assert not via_postgres(settings.fanout_url)
    assert settings.sqlalchemy_url == "postgresql+asyncpg://u@h/d"


def test_broadcast_url_postgres_is_normalised() -> None:
    """A PostgreSQL fan-out URL given with a driver is handed on as plain postgresql://."""
    settings = Settings(
        database_url="postgresql://u@h/d", broadcast_url="postgresql+asyncpg://v@other/e"
    )
    assert settings.fanout_url == "postgresql://v@other/e"
    assert via_postgres(settings.fanout_url)


def test_missing_secret_names_the_variable() -> None:
    """require_secret raises ConfigError naming CHAT_SECRET_KEY when none is set."""
    with pytest.raises(ConfigError, match="CHAT_SECRET_KEY"):
        Settings().require_secret()


@pytest.mark.parametrize(
    "weak",
    [
        "",
        "short",
        "k" * (MIN_SECRET_LENGTH - 1),
        "changeme",
        "CHANGEME",
        "changethis",
        "secret",
        "password",
    ],
)
def test_weak_secret_is_refused(weak: str) -> None:
    """Short and placeholder secrets are refused, naming CHAT_SECRET_KEY."""
    with pytest.raises(ConfigError, match="CHAT_SECRET_KEY"):
        Settings(secret_key=weak).require_secret()


def test_strong_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long enough CHAT_SECRET_KEY is returned as given, and not shown in repr."""
    monkeypatch.setenv("CHAT_SECRET_KEY", STRONG_SECRET)
    settings = Settings()
    assert settings.require_secret() == STRONG_SECRET
    assert STRONG_SECRET not in repr(settings)


def test_allowed_origins_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """CHAT_ALLOWED_ORIGINS is a comma list; blanks and trailing slashes are dropped."""
    monkeypatch.setenv(
        "CHAT_ALLOWED_ORIGINS", " https://chat.example.com/ ,http://localhost:8000,, "
    )
    assert Settings().allowed_origins == ["https://chat.example.com", "http://localhost:8000"]


def test_allowed_origins_default_empty() -> None:
    """Unset CHAT_ALLOWED_ORIGINS means no list (same-host rule applies)."""
    assert Settings().allowed_origins == []


def test_limits_read_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every limit of PROTOCOL.md is read from its CHAT_ variable."""
    values = {
        "CHAT_MAX_MESSAGE_CHARS": "123",
        "CHAT_REPLAY_LIMIT": "7",
        "CHAT_RESUME_LIMIT": "77",
        "CHAT_MAX_ROOMS_PER_CONNECTION": "5",
        "CHAT_RATE_LIMIT_PER_SECOND": "0",
        "CHAT_RATE_LIMIT_BURST": "9",
        "CHAT_MAX_FRAME_BYTES": "4096",
        "CHAT_SEND_QUEUE_LIMIT": "11",
        "CHAT_LOGIN_ATTEMPTS_PER_MINUTE": "3",
        "CHAT_LOGINS_PER_MINUTE": "4",
        "CHAT_ROOMS_CREATED_PER_HOUR": "5",
        "CHAT_PASSWORD_THREADS": "2",
        "CHAT_PASSWORD_QUEUE_LIMIT": "0",
        "CHAT_TOKEN_TTL_SECONDS": "600",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.max_message_chars == 123
    assert settings.replay_limit == 7
    assert settings.resume_limit == 77
    assert settings.max_rooms_per_connection == 5
    assert settings.rate_limit_per_second == 0
    assert settings.rate_limit_burst == 9
    assert settings.max_frame_bytes == 4096
    assert settings.send_queue_limit == 11
    assert settings.login_attempts_per_minute == 3
    assert settings.logins_per_minute == 4
    assert settings.rooms_created_per_hour == 5
    assert settings.password_threads == 2
    assert settings.password_queue_limit == 0
    assert settings.token_ttl_seconds == 600


def test_limit_defaults_match_the_protocol() -> None:
    """Without configuration the limits are PROTOCOL.md's defaults."""
    settings = Settings()
    assert settings.max_message_chars == 4000
    assert settings.replay_limit == 50
    assert settings.resume_limit == 1000
    assert settings.max_rooms_per_connection == 100
    assert settings.rate_limit_per_second == 20
    assert settings.rate_limit_burst == 40
    assert settings.max_frame_bytes == 65536
    assert settings.send_queue_limit == 1000
    assert settings.login_attempts_per_minute == 10


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CHAT_MAX_MESSAGE_CHARS", "0"),
        ("CHAT_MAX_MESSAGE_CHARS", "lots"),
        ("CHAT_RESUME_LIMIT", "0"),
        ("CHAT_RATE_LIMIT_PER_SECOND", "-1"),
        ("CHAT_PASSWORD_THREADS", "0"),
        ("CHAT_PASSWORD_QUEUE_LIMIT", "-1"),
        ("CHAT_ROOMS_CREATED_PER_HOUR", "0"),
        # an implementation or loop uvicorn does not offer
        ("CHAT_WS_IMPLEMENTATION", "tornado"),
        ("CHAT_EVENT_LOOP", "tornado"),
        # an origin that no Origin header can equal
        ("CHAT_ALLOWED_ORIGINS", "chat.example.com"),
        ("CHAT_ALLOWED_ORIGINS", "https://chat.example.com,http://h:99999"),
        ("CHAT_ALLOWED_ORIGINS", "https://chat.example.com/app"),
        # a proxy named instead of addressed (uvicorn would silently trust nobody), a typo
        ("CHAT_FORWARDED_ALLOW_IPS", "nginx"),
        ("CHAT_FORWARDED_ALLOW_IPS", "10.0.0.0/33"),
        ("CHAT_FORWARDED_ALLOW_IPS", "10.0.0.1/8"),  # uvicorn would match nothing with it
        # a body cap that no longer carries the largest message
        ("CHAT_MAX_REQUEST_BYTES", "20000"),
        ("CHAT_HEADER_TIMEOUT_SECONDS", "0"),
        ("CHAT_MAX_HEADER_BYTES", "100"),
    ],
)
def test_nonsense_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """A limit that cannot work, or a transport uvicorn lacks, is refused at start rather
    than misbehaving later."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_edge_defaults() -> None:
    """Forwarded headers are believed from loopback only, as uvicorn's own default;
    /metrics is open; a REST body may carry the largest message, escaped, with room left."""
    settings = Settings()
    assert settings.forwarded_allow_ips == "127.0.0.1,::1"
    assert settings.metrics_token is None
    assert settings.max_request_bytes == 65536 > 12 * settings.max_message_chars + 1024
    assert (settings.header_timeout_seconds, settings.body_timeout_seconds) == (10, 30)
    assert settings.max_header_bytes == 65536


def test_edge_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_FORWARDED_ALLOW_IPS", " 10.0.0.0/8 , 192.0.2.7,, ::1 ")
    monkeypatch.setenv("CHAT_METRICS_TOKEN", "scrape-" + "t" * 30)
    monkeypatch.setenv("CHAT_MAX_MESSAGE_CHARS", "10000")
    monkeypatch.setenv("CHAT_MAX_REQUEST_BYTES", "130000")
    settings = Settings()
    assert settings.forwarded_allow_ips == "10.0.0.0/8,192.0.2.7,::1"
    assert settings.metrics_token is not None
    assert settings.metrics_token.get_secret_value() == "scrape-" + "t" * 30
    assert "scrape-" not in repr(settings)
    assert settings.max_request_bytes == 130000
    monkeypatch.setenv("CHAT_FORWARDED_ALLOW_IPS", "*")
    monkeypatch.setenv("CHAT_METRICS_TOKEN", "")
    settings = Settings()
    assert (settings.forwarded_allow_ips, settings.metrics_token) == ("*", None)
    monkeypatch.setenv("CHAT_FORWARDED_ALLOW_IPS", "")  # nobody is trusted
    assert Settings().forwarded_allow_ips == ""


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    """A .env file in the working directory configures the service too."""
    (tmp_path / ".env").write_text(
        "CHAT_DATABASE_URL=postgres://u@h/d\nCHAT_MAX_MESSAGE_CHARS=321\n"
    )
    settings = Settings()
    assert settings.sqlalchemy_url == "postgresql+asyncpg://u@h/d"
    assert settings.max_message_chars == 321


def test_environment_overrides_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A variable set in the environment wins over the same one in .env."""
    (tmp_path / ".env").write_text("CHAT_MAX_MESSAGE_CHARS=321\n")
    monkeypatch.setenv("CHAT_MAX_MESSAGE_CHARS", "999")
    assert Settings().max_message_chars == 999


def test_transport_defaults() -> None:
    """Without configuration `chat serve` runs websockets-sansio on uvloop."""
    settings = Settings()
    assert settings.ws_implementation == "websockets-sansio"
    assert settings.event_loop == "uvloop"


def test_transport_read_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """CHAT_WS_IMPLEMENTATION and CHAT_EVENT_LOOP choose uvicorn's alternatives."""
    monkeypatch.setenv("CHAT_WS_IMPLEMENTATION", "wsproto")
    monkeypatch.setenv("CHAT_EVENT_LOOP", "asyncio")
    settings = Settings()
    assert settings.ws_implementation == "wsproto"
    assert settings.event_loop == "asyncio"


@pytest.mark.parametrize("url", ["memory://", "kafka://k:9092", "redis-stream://r", "http://x"])
def test_broadcast_url_without_a_backend_is_refused_at_start(url: str) -> None:
    """Only PostgreSQL and Redis have fan-out backends (service/backends.py): any other
    scheme is a configuration error, not a listener that fails forever."""
    with pytest.raises(ValidationError, match="CHAT_BROADCAST_URL"):
        Settings(database_url="postgresql://u@h/d", broadcast_url=url)
