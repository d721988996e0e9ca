"""The `Origin` and `Host` headers, parsed strictly into (scheme, host, port), and the origin
rule of PROTOCOL.md (Authentication).

Whatever a client sends, these functions return a value or None and never raise: a malformed
header is refused like a foreign origin, never answered with a 5xx. (`urllib.parse` is not
used for this: `urlsplit(...).port` raises on `http://h:99999`, `urlsplit` itself on
`http://[::1` and on some non-ASCII netlocs, and it accepts userinfo, paths and empty
hosts that no browser sends in an Origin.)
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

DEFAULT_PORTS = {"http": 80, "https": 443}
# No well-formed Origin or Host is longer: a 253-character name, a scheme, a port.
_MAX_LENGTH = 300
_LABEL = r"[a-z0-9_-]{1,63}"
# A DNS name or an IPv4 address (a trailing dot allowed), or an IPv6 address in brackets;
# then an optional port of 1 to 5 digits. ASCII only, and lower-cased before matching.
_HOST = re.compile(
    rf"(?P<host>(?:{_LABEL}\.)*{_LABEL}\.?|\[(?P<ipv6>[0-9a-f:.]+)\])(?::(?P<port>[0-9]{{1,5}}))?",
    re.ASCII,
)
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,31}", re.ASCII)


class Origin(NamedTuple):
    """A web origin. `host` is lower-case (an IPv6 address keeps its brackets); `port` is
    the explicit port, else the scheme's default, else None (a scheme without a known
    default, such as an app's `capacitor://localhost`)."""

    scheme: str
    host: str
    port: int | None


def header_value(value: str) -> str:
    """A header's value without the whitespace around it, which is the header's, not the
    value's (RFC 9110, 5.5)."""
    return value.strip(" \t")


def parse_host(value: str) -> tuple[str, int | None] | None:
    """`host[:port]` of a Host header (or of an origin), or None when malformed: empty,
    non-ASCII, a port out of 1..65535 or empty, userinfo, a path, an unclosed bracket."""
    if not value or len(value) > _MAX_LENGTH or not value.isascii():
        return None
    match = _HOST.fullmatch(value.lower())
    if match is None:
        return None
    host = match["host"]
    if match["ipv6"] is None and len(host.removesuffix(".")) > 253:  # a DNS name's limit
        return None
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            return None
    port = match["port"]
    if port is None:
        return host, None
    number = int(port)
    if not 1 <= number <= 65535:
        return None
    return host, number


def parse_origin(value: str) -> Origin | None:
    """An Origin header's `scheme://host[:port]` (RFC 6454; one trailing `/` tolerated), or
    None when malformed or opaque (`null`)."""
    if not value or len(value) > _MAX_LENGTH or not value.isascii():
        return None
    scheme, separator, rest = value.partition("://")
    scheme = scheme.lower()
    if not separator or _SCHEME.fullmatch(scheme) is None:
        return None
    if rest.endswith("/"):
        rest = rest[:-1]
    parsed = parse_host(rest)
    if parsed is None:
        return None
    host, port = parsed
    return Origin(scheme, host, port if port is not None else DEFAULT_PORTS.get(scheme))


def request_origin(scheme: str, host_header: str | None) -> Origin | None:
    """The origin a request was addressed to: its scheme (`ws`/`wss` count as `http`/
    `https`; behind a trusted proxy, the forwarded one) and its Host header; None when the
    Host header is missing or malformed."""
    if host_header is None:
        return None
    parsed = parse_host(header_value(host_header))
    if parsed is None:
        return None
    web_scheme = "https" if scheme in ("https", "wss") else "http"
    host, port = parsed
    return Origin(web_scheme, host, port if port is not None else DEFAULT_PORTS[web_scheme])


def origin_allowed(
    origin: str | None, host: str | None, scheme: str, allowed: list[str] | None = None
) -> bool:
    """The cross-site WebSocket hijacking guard, for sockets authenticated by cookie: the
    Origin must be one of `allowed` (CHAT_ALLOWED_ORIGINS) or, when that is empty, the
    request's own origin; scheme, host and port compared exactly (a default port and an
    explicit one are the same port)."""
    if origin is None:
        return False
    parsed = parse_origin(header_value(origin))
    if parsed is None:
        return False
    if allowed:
        return any(parsed == parse_origin(entry) for entry in allowed)
    return parsed == request_origin(scheme, host)
