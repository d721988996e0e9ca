"""The Origin and Host parsers and the origin rule: exact scheme, host and port; garbage is
refused, and no value whatever makes them raise (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.origins import Origin, origin_allowed, parse_host, parse_origin, request_origin

# Pieces of values a hostile or broken client sends, combined by the strategies below.
SCHEMES = ["http", "https", "HTTP", "ws", "wss", "", "ftp", "javascript", "h ttp", "http:"]
HOSTS = [
    "example.com",
    "127.0.0.1",
    "[::1]",
    "",
    "[::1",
    "::1]",
    "[::1]]",
    "[zz::1]",
    "[::1%25eth0]",
    "[fe80::1%eth0]",
    "é.example",
    "ex\u00a0ample.com",
    "a..b",
    ".",
    " ",
    "a b",
    "a\tb",
    "user@example.com",
    "u:p@example.com",
    "exa%6dple.com",
    "a" * 64,
    ("a" * 63 + ".") * 5,
    "\uff0e",
    "a\uff03b",
    "a\x00b",
]
PORTS = ["", ":80", ":8080", ":0", ":65535", ":65536", ":99999", ":", ":-1", ":+80", ": 80"]
PORTS += [":8O", ":0x50", ":١٢٣", ":123456", ":80:80", ":80 "]
TAILS = ["", "/", "//", "/path", "?q=1", "#f", " ", "/ "]

pieces = st.tuples(
    st.sampled_from(SCHEMES),
    st.sampled_from(["://", ":/", ":", "//", ""]),
    st.sampled_from(HOSTS),
    st.sampled_from(PORTS),
    st.sampled_from(TAILS),
).map("".join)
any_text = st.text(max_size=400) | st.binary(max_size=400).map(lambda b: b.decode("latin-1"))
values = pieces | any_text | st.sampled_from(["null", "*", "http://", "https://:443"])


@settings(max_examples=2000, deadline=None)
@given(value=values)
def test_no_value_makes_the_parsers_raise(value: str) -> None:
    """Every parser answers a value or None, for every string."""
    parse_host(value)
    parse_origin(value)
    request_origin("ws", value)
    request_origin("https", value)
    for allowed in ([], ["https://chat.example"]):
        assert isinstance(origin_allowed(value, value, "ws", allowed), bool)
        assert isinstance(origin_allowed(value, "127.0.0.1:8000", "wss", allowed), bool)
        assert isinstance(origin_allowed("http://127.0.0.1:8000", value, "ws", allowed), bool)


def _well_formed_host(host: str, port: str) -> bool:
    """The oracle, spelled out by hand for the pieces above: which (host, port) pairs are a
    Host header we accept."""
    return host in {"example.com", "127.0.0.1", "[::1]"} and port in {"", ":80", ":8080", ":65535"}


@settings(max_examples=1000, deadline=None)
@given(scheme=st.sampled_from(SCHEMES), host=st.sampled_from(HOSTS), port=st.sampled_from(PORTS))
def test_garbage_hosts_and_origins_are_refused(scheme: str, host: str, port: str) -> None:
    """A Host is accepted only when it is a name, an IPv4 or a bracketed IPv6 address with an
    optional port in 1..65535; an Origin only as scheme://such-a-host."""
    host_ok = _well_formed_host(host, port)
    assert (parse_host(host + port) is not None) == host_ok, host + port
    origin = parse_origin(f"{scheme}://{host}{port}")
    scheme_ok = scheme.lower() in ("http", "https", "ws", "wss", "ftp", "javascript")
    assert (origin is not None) == (host_ok and scheme_ok), f"{scheme}://{host}{port}"
    # Whatever the pieces, the same-origin rule never lets through what it cannot parse
    # (whitespace around a header's value is the header's: test_header_whitespace).
    if not host_ok and (host + port).strip(" \t") == host + port:
        assert not origin_allowed(f"http://{host}{port}", f"{host}{port}", "ws")
        assert not origin_allowed("http://example.com", f"{host}{port}", "ws")


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("localhost", ("localhost", None)),
        ("LocalHost:8000", ("localhost", 8000)),
        ("chat.example.", ("chat.example.", None)),
        ("[::ffff:192.0.2.1]:443", ("[::ffff:192.0.2.1]", 443)),
        ("[2001:DB8::1]", ("[2001:db8::1]", None)),
        (("a" * 63 + ".") * 3 + "a" * 61, (("a" * 63 + ".") * 3 + "a" * 61, None)),
        (("a" * 63 + ".") * 3 + "a" * 62, None),  # 254 characters: longer than a DNS name
        ("a" * 64, None),  # a label of 64
        ("[::1]:", None),
        ("[1:2:3:4:5:6:7:8:9]", None),
        ("[::1]:8000:1", None),
        ("h\\x", None),
    ],
)
def test_hosts(value: str, parsed: tuple[str, int | None] | None) -> None:
    assert parse_host(value) == parsed


@pytest.mark.parametrize(
    "value",
    [
        "http://h:99999",
        "http://[::1",
        "http://h:abc",
        "http://éx.com",
        "http://",
        "http://h:",
        "http://h:0",
        "http://u@h",
        "http://h/path",
        "http://h?q",
        "http://h#f",
        "http:// h",
        "http://h:80/x",
        "null",
        "",
        "h",
        "//h",
        "http:/h",
        "http://a\uff03b",
        "http://[::1]x",
    ],
)
def test_malformed_origins(value: str) -> None:
    """Values urlsplit raises on, or accepts though no browser sends them: all refused."""
    assert parse_origin(value) is None
    assert not origin_allowed(value, "h", "ws")


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("http://example.com", Origin("http", "example.com", 80)),
        ("HTTPS://Example.COM", Origin("https", "example.com", 443)),
        ("https://example.com:443", Origin("https", "example.com", 443)),
        ("http://example.com:8080/", Origin("http", "example.com", 8080)),
        ("http://[::1]:8000", Origin("http", "[::1]", 8000)),
        ("http://127.0.0.1:1", Origin("http", "127.0.0.1", 1)),
        ("capacitor://localhost", Origin("capacitor", "localhost", None)),
    ],
)
def test_well_formed_origins(value: str, parsed: Origin) -> None:
    assert parse_origin(value) == parsed


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "allowed"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", "ws", True),
        ("http://chat.example", "chat.example", "ws", True),
        ("http://chat.example:80", "chat.example", "ws", True),  # the default port, spelt out
        ("http://chat.example", "chat.example:80", "ws", True),
        ("https://chat.example", "chat.example", "wss", True),
        ("https://chat.example", "chat.example:443", "wss", True),
        ("https://Chat.Example", "CHAT.example", "wss", True),
        # The scheme is compared too: an http page may not use an https socket's cookie, and
        # an explicit port does not stand in for the scheme.
        ("http://chat.example", "chat.example", "wss", False),
        ("https://chat.example", "chat.example", "ws", False),
        ("http://chat.example:443", "chat.example", "wss", False),
        ("https://chat.example:80", "chat.example", "ws", False),
        ("http://chat.example:8000", "chat.example", "ws", False),
        ("http://chat.example", "chat.example:8000", "ws", False),
        ("http://evil.example", "chat.example", "ws", False),
        ("http://chat.example.evil", "chat.example", "ws", False),
        ("http://chat.example", None, "ws", False),
        (None, "chat.example", "ws", False),
    ],
)
def test_same_origin_is_scheme_host_and_port(
    origin: str | None, host: str | None, scheme: str, allowed: bool
) -> None:
    assert origin_allowed(origin, host, scheme) is allowed


def test_allowed_origins_compare_parsed() -> None:
    """CHAT_ALLOWED_ORIGINS entries are compared as origins, not as strings; Host is not
    looked at then."""
    allowed = ["https://chat.example", "http://localhost:5173"]
    assert origin_allowed("https://chat.example:443", "anything", "ws", allowed)
    assert origin_allowed("HTTPS://CHAT.EXAMPLE/", None, "ws", allowed)
    assert origin_allowed("http://localhost:5173", "x", "wss", allowed)
    assert not origin_allowed("http://chat.example", "chat.example", "ws", allowed)
    assert not origin_allowed("https://chat.example:8443", "chat.example", "wss", allowed)
    assert not origin_allowed("http://localhost:5174", "localhost:5174", "ws", allowed)
    assert not origin_allowed("null", "chat.example", "ws", allowed)


def test_header_whitespace_is_the_headers_not_the_values() -> None:
    """RFC 9110, 5.5: a Host or Origin header's surrounding whitespace is not part of its
    value; inside the value it is still refused."""
    assert parse_host("example.com ") is None
    assert request_origin("ws", " example.com:80\t") == request_origin("ws", "example.com:80")
    assert origin_allowed(" http://example.com ", "example.com:80 ", "ws")
    assert parse_origin("http:// example.com") is None
    assert not origin_allowed("http:// example.com", "example.com", "ws")
