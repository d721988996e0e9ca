"""Malformed Origin and Host headers, fuzzed by hypothesis, on real WebSocket handshakes (with
a valid session cookie, so that only the origin rule stands in the way) and on plain HTTP
requests: each is refused with 403 (a handshake) or 400 (HTTP), or with the HTTP parser's
own 400 for bytes HTTP forbids; never a 5xx, never a socket. The right values still pass,
and the instance logs no traceback."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.origins import parse_host
from tests.abuse.wire import exchange, handshake, request
from tests.support import Instance, new_user
from tests.test_origins import values as textual_values

# Header bytes HTTP allows in a value (RFC 9110 field-vchar, SP, HTAB, obs-text). CR and LF
# are never generated: they would end the header and start another, a different test.
LEGAL = {0x09} | set(range(0x20, 0x7F)) | set(range(0x80, 0x100))
header_values = (
    textual_values.map(lambda s: s.encode("utf-8", "surrogatepass"))
    | st.binary(max_size=200)
    | st.sampled_from([b"", b" ", b"\t", b"\x00", b"\x7f", b"\xff\xfe", b"http://\xe9:1"])
).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _legal(value: bytes) -> bool:
    return all(byte in LEGAL for byte in value)


async def test_fuzzed_origin_and_host_are_refused_never_5xx(
    hostile_instances: Callable[..., Awaitable[list[Instance]]],
) -> None:
    (instance,) = await hostile_instances(1)
    async with httpx.AsyncClient(base_url=instance.url, timeout=10) as http:
        user = await new_user(http)
    cookie = [("Cookie", f"session={user.token}".encode())]
    own_host = f"127.0.0.1:{instance.port}".encode()
    own_origin = b"http://" + own_host
    seen: Counter[str] = Counter()

    def check(kind: str, value: bytes, data: bytes, passes: bool, refusal: int) -> None:
        answer = exchange(instance.port, data)
        seen[f"{kind} {answer.status}"] += 1
        assert answer.status < 500, f"{kind} {value!r}: {answer}"
        if passes:
            assert answer.status in (101, 200), f"{kind} {value!r}: {answer}"
        elif _legal(value):
            assert answer.status == refusal, f"{kind} {value!r}: {answer}"
        else:
            assert answer.status in (400, refusal), f"{kind} {value!r}: {answer}"

    @FUZZ
    @given(origin=header_values)
    def fuzz_origin(origin: bytes) -> None:
        passes = origin.strip(b" \t") == own_origin
        check("origin", origin, handshake(own_host, origin, cookie), passes, 403)

    @FUZZ
    @given(host=header_values)
    def fuzz_host(host: bytes) -> None:
        stripped = host.strip(b" \t")
        check("host", host, handshake(host, own_origin, cookie), stripped == own_host, 403)
        plain = request("GET", "/api/config", [("Host", host)])
        well_formed = _legal(host) and parse_host(stripped.decode("latin-1")) is not None
        check("http-host", host, plain, well_formed, 400)

    fuzz_origin()
    fuzz_host()
    # The right values pass, and each refusal was an answer, not a dropped connection.
    assert exchange(instance.port, handshake(own_host, own_origin, cookie)).status == 101
    assert seen["origin 403"] >= 150 and seen["host 403"] >= 150, seen
    assert not [k for k in seen if k.endswith(" 0")], seen
    print(f"\nhandshakes and requests by status: {dict(sorted(seen.items()))}")
