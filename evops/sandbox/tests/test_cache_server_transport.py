"""The aiohttp-backed httpx transport (cache server, IPFS store), on real sockets.

The client's retry logic only knows httpx's exception family, so every way a
connection can fail must come out of `AiohttpTransport` as the matching httpx error,
and a healthy answer must come back whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
from aiohttp import web

from evops.integrations.http import AiohttpTransport

BIG = bytes(range(256)) * 8192  # 2 MiB, so the body arrives in many reads


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def client(base_url: str, *, timeout: float = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout),
        transport=AiohttpTransport(limit=4),
    )


async def test_request_and_answer_pass_through_whole():
    seen: dict[str, object] = {}

    async def echo(request: web.Request) -> web.StreamResponse:
        seen["headers"] = dict(request.headers)
        seen["body"] = await request.read()
        seen["query"] = dict(request.query)
        response = web.Response(
            status=201,
            body=gzip.compress(BIG),
            headers={"Content-Encoding": "gzip", "X-Thing": "1"},
        )
        response.set_cookie("token", "a")
        response.set_cookie("refreshToken", "b")
        return response

    app = web.Application()
    app.router.add_post("/v1/echo", echo)
    async with serve(app) as url, client(url) as http:
        response = await http.post(
            "/v1/echo",
            params={"q": "1"},
            json={"data": "x"},
            headers={"Authorization": "Bearer t"},
        )
    assert response.status_code == 201
    assert response.content == BIG  # decompressed, every byte read
    assert "content-encoding" not in response.headers
    assert response.headers["x-thing"] == "1"
    assert len(response.headers.get_list("set-cookie")) == 2
    headers = seen["headers"]
    assert isinstance(headers, dict)
    assert headers["Authorization"] == "Bearer t"
    assert "Origin" not in headers
    assert json.loads(seen["body"]) == {"data": "x"}  # type: ignore[arg-type]
    assert seen["query"] == {"q": "1"}


async def test_a_server_that_stops_answering_is_a_read_timeout():
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response()

    app = web.Application()
    app.router.add_get("/hang", hang)
    async with serve(app) as url, client(url, timeout=0.2) as http:
        try:
            with pytest.raises(httpx.ReadTimeout):
                await http.get("/hang")
        finally:
            release.set()  # let the server shut down without waiting


async def test_nothing_listening_is_a_connect_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    async with client(f"http://127.0.0.1:{port}") as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/v1/auth/status")


async def test_a_connection_closed_mid_body_is_a_read_error():
    async def truncate(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly ten b")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(truncate, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with client(f"http://127.0.0.1:{port}") as http:
            with pytest.raises(httpx.ReadError):
                await http.get("/v1/role/x")
    finally:
        server.close()
        await server.wait_closed()


class _FailingSession:
    """Stands in for the aiohttp session to raise what a real one can raise."""

    closed = False

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def request(self, *args: object, **kwargs: object) -> object:
        raise self.exc


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (aiohttp.ConnectionTimeoutError("connect"), httpx.ConnectTimeout),
        (aiohttp.SocketTimeoutError("read"), httpx.ReadTimeout),
        (aiohttp.ServerDisconnectedError(), httpx.ReadError),
        (ConnectionResetError(), httpx.ReadError),
    ],
)
async def test_aiohttp_errors_map_to_httpx_transport_errors(raised, expected):
    transport = AiohttpTransport(limit=1)
    transport._session = _FailingSession(raised)  # type: ignore[assignment]
    request = httpx.Request("GET", "http://cache.test/v1/auth/status")
    with pytest.raises(expected) as info:
        await transport.handle_async_request(request)
    assert info.value.request is request
    assert isinstance(info.value, httpx.TransportError)


async def test_aclose_closes_the_pooled_session():
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ok", ok)
    transport = AiohttpTransport(limit=2)
    async with serve(app) as url:
        http = httpx.AsyncClient(base_url=url, transport=transport)
        assert (await http.get("/ok")).text == "ok"
        session = transport._session
        assert session is not None and not session.closed
        await http.aclose()
        assert session.closed
        assert transport._session is None
