"""The production topology without containers: nginx, run from deploy/nginx.conf itself, in
front of two `chat serve` instances on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    PROJECT,
    Instance,
    assert_exactly_once_in_order,
    free_port,
    new_user,
    unique,
    ws_connect,
)

NGINX_CONF = PROJECT / "deploy" / "nginx.conf"
_TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail("nginx is not installed: apt-get install nginx (scripts/install-system-deps)")
    return found


def nginx_command(root: Path, config: Path) -> list[str]:
    """nginx with its prefix, configuration and startup error log all under `root`."""
    return [nginx_binary(), "-p", str(root), "-c", str(config), "-e", str(root / "error.log")]


def _substitute(text: str, pattern: str, replacement: str) -> str:
    new, count = re.subn(pattern, replacement, text, flags=re.MULTILINE | re.DOTALL)
    assert count == 1, f"deploy/nginx.conf: expected exactly one match of {pattern!r}"
    return new


def loopback_config(template: str, root: Path, port: int, upstreams: list[int]) -> str:
    """deploy/nginx.conf with loopback instances, a loopback port, and every path under
    `root`; everything else (balancing, WebSocket upgrade, headers, timeouts) as deployed."""
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=2 fail_timeout=5s;\n" for p in upstreams)
    text = _substitute(
        template,
        r"(?<=# upstream servers: begin\n).*?(?=^[ \t]*# upstream servers: end)",
        servers,
    )
    text = _substitute(text, r"^error_log \S+", f"error_log {root}/error.log")
    text = _substitute(text, r"^pid \S+;", f"pid {root}/nginx.pid;")
    text = _substitute(text, r"^([ \t]*)access_log /\S+", rf"\g<1>access_log {root}/access.log")
    text = _substitute(text, r"^([ \t]*)listen 8080;", rf"\g<1>listen 127.0.0.1:{port};")
    temp = "".join(f"  {name}_temp_path {root}/tmp/{name};\n" for name in _TEMP_PATHS)
    return _substitute(text, r"^http \{\n", "http {\n" + temp)


def nginx_root() -> Path:
    # nginx's workers run as an unprivileged user when the tests run as root: they must
    # reach the directory, and write their temporary files.
    root = Path(tempfile.mkdtemp(prefix="chat-nginx-"))
    root.chmod(0o755)
    (root / "tmp").mkdir(mode=0o777)
    (root / "tmp").chmod(0o777)
    return root


@dataclass
class Balanced:
    url: str
    instances: tuple[Instance, Instance]
    root: Path


async def connections(instance: Instance) -> int:
    """The instance's own count of open sockets (its /metrics, not the balancer's)."""
    async with httpx.AsyncClient(base_url=instance.url, timeout=10) as http:
        text = (await http.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        if family.name == "chat_connections":
            return int(family.samples[0].value)
    raise AssertionError("chat_connections not exposed")


@pytest.fixture(scope="module")
async def balanced(spawn: Callable[..., Instance]) -> AsyncIterator[Balanced]:
    """nginx on a free loopback port in front of two instances of this module's own."""
    a, b = spawn(CHAT_RATE_LIMIT_PER_SECOND=0), spawn(CHAT_RATE_LIMIT_PER_SECOND=0)
    await a.wait_ready()
    await b.wait_ready()
    root = nginx_root()
    port = free_port()
    config = root / "nginx.conf"
    config.write_text(loopback_config(NGINX_CONF.read_text(), root, port, [a.port, b.port]))
    output = (root / "nginx.out").open("wb")
    proc = subprocess.Popen(
        [*nginx_command(root, config), "-g", "daemon off;"],
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        async with httpx.AsyncClient(base_url=url, timeout=2) as http:
            while True:
                assert proc.poll() is None, (root / "nginx.out").read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/nginx-health")).status_code == 200:
                        break
                assert time.monotonic() < deadline, "nginx did not answer in 15 s"
                await asyncio.sleep(0.1)
        yield Balanced(url, (a, b), root)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        output.close()
        a.stop()
        b.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_nginx_accepts_the_deployed_config() -> None:
    """deploy/nginx.conf, with loopback servers and paths, passes `nginx -t`."""
    root = nginx_root()
    try:
        config = root / "nginx.conf"
        config.write_text(loopback_config(NGINX_CONF.read_text(), root, free_port(), [1, 2]))
        result = subprocess.run(
            [*nginx_command(root, config), "-t"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_rest_and_sockets_through_the_balancer(balanced: Balanced) -> None:
    """Through nginx: REST registers, logs in and posts; six sockets spread over both
    instances; every socket gets every message once, in order, whichever way it was sent."""
    a, b = balanced.instances
    room = unique("lb-")
    async with httpx.AsyncClient(base_url=balanced.url, timeout=10) as http:
        users = [await new_user(http) for _ in range(3)]
        async with contextlib.AsyncExitStack() as stack:
            sockets = []
            for i in range(6):
                ws = await stack.enter_async_context(ws_connect(balanced.url, users[i % 3].token))
                await ws.join(room)  # answered: the instance counts the socket by now
                sockets.append(ws)
            on_a, on_b = await connections(a), await connections(b)
            assert (on_a + on_b, min(on_a, on_b)) == (6, 3), (on_a, on_b)

            receivers = [asyncio.create_task(ws.messages_until(room, 140, 60)) for ws in sockets]
            for n in range(40):
                for i in range(3):
                    await sockets[i].send(type="send", room=room, body=f"ws{i}-{n}")
                if n % 2 == 0:
                    r = await http.post(
                        f"/api/rooms/{room}/messages",
                        json={"body": f"rest-{n // 2}"},
                        headers=users[0].headers,
                    )
                    assert r.status_code == 201, r.text
            for got in await asyncio.gather(*receivers):
                assert_exactly_once_in_order([m["seq"] for m in got], 1, 140)
                bodies = [m["body"] for m in got]
                for prefix, count in (("ws0-", 40), ("ws1-", 40), ("ws2-", 40), ("rest-", 20)):
                    mine = [x for x in bodies if x.startswith(prefix)]
                    assert mine == [f"{prefix}{n}" for n in range(count)]

        page = await http.get(
            f"/api/rooms/{room}/messages", params={"limit": 200}, headers=users[1].headers
        )
        assert [m["seq"] for m in page.json()["messages"]] == list(range(1, 141))

    # nginx's JSON access log names both instances as the upstreams of the six upgrades.
    upstreams: set[str] = set()
    async with asyncio.timeout(10):
        while len(upstreams) < 2:
            await asyncio.sleep(0.1)
            entries = [
                orjson.loads(line)
                for line in (balanced.root / "access.log").read_text().splitlines()
            ]
            upstreams = {e["upstream"] for e in entries if e["status"] == 101}
    assert upstreams == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}
    assert all(re.fullmatch(r"[0-9a-f]{32}", e["request_id"]) for e in entries)


async def test_a_client_whose_instance_stops_resumes_through_the_balancer(
    balanced: Balanced,
) -> None:
    """An instance stops (1012); its client reconnects through nginx, which sends it to the
    other instance, and resumes with `since`, missing nothing and getting nothing twice."""
    a, b = balanced.instances
    room = unique("lb-")
    async with httpx.AsyncClient(base_url=balanced.url, timeout=10) as http:
        poster, reader = await new_user(http), await new_user(http)

        async def post(n: int) -> None:
            r = await http.post(
                f"/api/rooms/{room}/messages", json={"body": f"m{n}"}, headers=poster.headers
            )
            assert r.status_code == 201, r.text

        async with ws_connect(b.url, reader.token) as on_b:
            await on_b.join(room)
            for n in range(1, 11):
                await post(n)
            got = await on_b.messages_until(room, 10)
            assert_exactly_once_in_order([m["seq"] for m in got], 1, 10)
            await asyncio.to_thread(b.stop)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await on_b.recv(timeout=10)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1012

        for n in range(11, 21):  # nginx now finds b refusing and passes the posts to a
            await post(n)
        async with ws_connect(balanced.url, reader.token) as again:
            joined, replay = await again.join(room, since=10)
            assert_exactly_once_in_order([m["seq"] for m in replay], 11, 20)
            assert (joined["last_seq"], joined["truncated"]) == (20, False)
            await post(21)
            live = await again.messages_until(room, 21)
            assert [m["seq"] for m in live] == [21]
    async with asyncio.timeout(10):
        while await connections(a) != 0:  # the instance counts the close a moment later
            await asyncio.sleep(0.05)
