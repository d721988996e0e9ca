"""Configuration: one `Settings` object per app, read from `CHAT_*` variables and `.env`."""

from __future__ import annotations

import ipaddress
import secrets
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .origins import parse_origin

# Secrets that look like configuration but protect nothing.
_PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "changethis", "dev", "test", "password"}
MIN_SECRET_LENGTH = 32


class ConfigError(RuntimeError):
    """The configuration cannot work; the message names the variable to set."""


def _strip_driver(url: str) -> tuple[str, str]:
    """Split `postgresql+driver://rest` into (`postgresql`, `rest` with the scheme removed)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    return scheme, urlunsplit(("", parts.netloc, parts.path, parts.query, parts.fragment))


class Settings(BaseSettings):
    """Every knob of the service. Limits are named as in PROTOCOL.md."""

    model_config = SettingsConfigDict(env_prefix="CHAT_", env_file=".env", extra="ignore")

    database_url: str | None = None
    broadcast_url: str | None = None
    # The fan-out channel; NOTIFY is per database, but a shared Redis needs distinct names.
    broadcast_channel: str = Field(default="chat", pattern=r"^[a-z][a-z0-9_]{0,40}$")
    secret_key: SecretStr | None = None
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    token_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    # Each instance asks this often which sessions have ended (sessions.py); an ending takes
    # three of these to answer, and reaches every socket within about one.
    session_poll_seconds: float = Field(default=0.5, gt=0, le=0.6)
    # Live sessions per user; a login beyond ends the oldest (GET /api/sessions lists 200).
    max_sessions_per_user: int = Field(default=100, ge=1, le=200)
    cookie_secure: bool = False
    # Addresses whose X-Forwarded-For and X-Forwarded-Proto are believed (uvicorn's
    # forwarded_allow_ips): comma-separated IPs or networks, "*" for any, empty for none. From
    # anyone else they are ignored: the client address and the scheme (the cookie's Secure
    # flag, the origin check) are those of the connection itself.
    forwarded_allow_ips: str = "127.0.0.1,::1"
    # When set, GET /metrics needs `Authorization: Bearer <it>`; unset, /metrics is open.
    metrics_token: SecretStr | None = None

    max_message_chars: int = Field(default=4000, ge=1, le=100_000)
    replay_limit: int = Field(default=50, ge=0, le=1000)
    resume_limit: int = Field(default=1000, ge=1, le=100_000)
    max_rooms_per_connection: int = Field(default=100, ge=1)
    rate_limit_per_second: float = Field(default=20, ge=0)
    rate_limit_burst: int = Field(default=40, ge=1)
    # GET /api/search: each user's bucket of searches (429 past it; 0 turns it off), and how
    # many run at once on an instance (the rest wait up to search_wait_seconds, then 503), so
    # that searches never hold more than that many of the pool's connections.
    search_rate_per_second: float = Field(default=5, ge=0)
    search_rate_burst: int = Field(default=20, ge=1)
    max_concurrent_searches: int = Field(default=4, ge=1)
    search_wait_seconds: float = Field(default=5.0, gt=0)
    # Distinct emoji reacting to one message (v2 reactions); GET /api/config announces it.
    max_emoji_per_message: int = Field(default=20, ge=1)
    max_frame_bytes: int = Field(default=65536, ge=1024)
    # A REST request body (413 past it). The largest legal one is a message of
    # max_message_chars characters each escaped as a surrogate pair (12 bytes of JSON).
    max_request_bytes: int = Field(default=65536, ge=1024)
    # Request headers: their size, and the time from the connection's first byte (or from a
    # kept-alive connection's next request) until they are complete; then the body's time.
    max_header_bytes: int = Field(default=65536, ge=4096)
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    body_timeout_seconds: float = Field(default=30.0, gt=0)
    send_queue_limit: int = Field(default=1000, ge=1)
    # Everything waiting for one socket, answers included (service/outbox.py).
    send_queue_max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024 * 1024)
    max_connections: int = Field(default=10_000, ge=1)
    max_connections_per_user: int = Field(default=20, ge=1)
    # Failed logins per name (per client address: five times this), and successful ones per
    # client address: each costs an argon2 verification.
    login_attempts_per_minute: int = Field(default=10, ge=1)
    logins_per_minute: int = Field(default=60, ge=1)
    # Each registration costs an argon2 hash: per client address, so one client cannot burn
    # the CPU or fill the users table.
    registrations_per_minute: int = Field(default=20, ge=1)
    # Rooms a user may create (by joining or posting to a new name), per instance.
    rooms_created_per_hour: int = Field(default=100, ge=1)
    # New dms a user may open, per instance (POST /api/dms; one that exists costs nothing).
    max_dms_per_hour: int = Field(default=60, ge=1)
    # Members of one room: past it, adding or joining answers 409.
    max_members_per_room: int = Field(default=10_000, ge=2)
    # argon2 runs on threads of its own (unset: half the CPUs, at least one); past the
    # threads, at most this many hashes wait, and the next is refused with 503.
    password_threads: int | None = Field(default=None, ge=1, le=64)
    password_queue_limit: int = Field(default=8, ge=0)

    db_pool_size: int = Field(default=10, ge=1)
    write_batch_max: int = Field(default=500, ge=1)
    # How often each joined room's last seq is compared with the database, to catch a lost
    # final notification; and how often the listener proves it still hears (canary).
    resync_interval_seconds: float = Field(default=5.0, gt=0)
    listener_check_interval_seconds: float = Field(default=1.0, gt=0)
    listener_timeout_seconds: float = Field(default=3.0, gt=0)
    presence_heartbeat_seconds: float = Field(default=10.0, gt=0)
    presence_ttl_seconds: float = Field(default=30.0, gt=0)
    # A (room, user)'s presence changes at most once per this many seconds on one instance,
    # and a leave waits as long (a join meanwhile cancels it): flapping tabs make no storm.
    presence_debounce_seconds: float = Field(default=1.0, ge=0)
    shutdown_grace_seconds: float = Field(default=10.0, gt=0)
    # uvicorn's WebSocket implementation and event loop (`chat serve`); the alternatives are
    # measured against the defaults by `python -m bench --only transports`.
    ws_implementation: Literal["websockets-sansio", "websockets", "wsproto"] = "websockets-sansio"
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if parse_origin(origin) is None:
                raise ValueError(
                    f"CHAT_ALLOWED_ORIGINS: {origin!r} is not an origin (scheme://host[:port])"
                )
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _check_forwarded(cls, value: str) -> str:
        entries = [e.strip() for e in value.split(",") if e.strip()]
        for entry in entries:
            if entry == "*":
                continue
            try:
                # Strict, as uvicorn reads it: a network with host bits set would silently
                # match nothing there.
                ipaddress.ip_network(entry)
            except ValueError:
                raise ValueError(
                    f"CHAT_FORWARDED_ALLOW_IPS: {entry!r} is not an IP address or network "
                    "(names are not resolved)"
                ) from None
        return ",".join(entries)

    @field_validator("metrics_token")
    @classmethod
    def _empty_token(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @model_validator(mode="after")
    def _body_fits_a_message(self) -> Settings:
        needed = 12 * self.max_message_chars + 1024
        if self.max_request_bytes < needed:
            raise ValueError(
                f"CHAT_MAX_REQUEST_BYTES must be at least {needed} to carry a message of "
                f"CHAT_MAX_MESSAGE_CHARS={self.max_message_chars} characters"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme, _ = _strip_driver(value)
        if scheme != "postgresql":
            raise ValueError("CHAT_DATABASE_URL must be a postgresql:// URL")
        return value

    @field_validator("broadcast_url")
    @classmethod
    def _check_broadcast_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme, _ = _strip_driver(value)
        if scheme not in ("postgresql", "redis", "rediss"):
            raise ValueError("CHAT_BROADCAST_URL must be a postgresql:// or redis:// URL")
        return value

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError("CHAT_DATABASE_URL is not set (e.g. postgresql://user@host/db)")
        return self.database_url

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the asyncpg driver, for SQLAlchemy."""
        _, rest = _strip_driver(self.require_database_url())
        return "postgresql+asyncpg:" + rest

    @property
    def asyncpg_url(self) -> str:
        """The plain `postgresql://` URL, as asyncpg and broadcaster want it."""
        _, rest = _strip_driver(self.require_database_url())
        return "postgresql:" + rest

    @property
    def fanout_url(self) -> str:
        """Where broadcaster listens: the database itself unless CHAT_BROADCAST_URL says."""
        if self.broadcast_url:
            scheme, _ = _strip_driver(self.broadcast_url)
            if scheme == "postgresql":
                _, rest = _strip_driver(self.broadcast_url)
                return "postgresql:" + rest
            return self.broadcast_url
        return self.asyncpg_url

    def require_secret(self) -> str:
        """The signing key; refuses a missing, short or placeholder one."""
        if self.secret_key is None:
            raise ConfigError(
                "CHAT_SECRET_KEY is not set; generate one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        value = self.secret_key.get_secret_value()
        if value.lower() in _PLACEHOLDER_SECRETS or len(value) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"CHAT_SECRET_KEY is too weak: use at least {MIN_SECRET_LENGTH} random characters"
            )
        return value


def new_secret() -> str:
    return secrets.token_urlsafe(48)
