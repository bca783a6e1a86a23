"""`AiohttpTransport`: httpx's API over aiohttp's connection pool.

Used by the cache-server client and the IPFS credential store (see the class for why).
"""

from __future__ import annotations

import aiohttp
import httpx

# Hop-by-hop and encoding headers the aiohttp session sets (or has undone) itself.
_DROP_REQUEST_HEADERS = frozenset(
    {"host", "content-length", "connection", "transfer-encoding", "accept-encoding"}
)
_DROP_RESPONSE_HEADERS = frozenset(
    {b"content-encoding", b"content-length", b"transfer-encoding"}
)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx transport doing its I/O through one pooled aiohttp session.

    httpcore's pool rescans every connection on each request (encode/httpx#3215):
    at 50 concurrent requests it caps a client at ~100 calls/s on this hardware,
    where aiohttp's connector reaches the server's limit. The client keeps httpx's
    request/response API (and `MockTransport` in tests); only the socket work moves.
    Errors are mapped to httpx's exception types so retry logic sees one family.
    Of httpx's timeouts, `connect` bounds pool acquisition plus connecting and
    `read` each socket read; `write` is not applied (request bodies are small).
    The session is created on first use and belongs to that event loop.
    """

    def __init__(self, *, limit: int) -> None:
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily: an aiohttp session belongs to the loop it is used on.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._limit, limit_per_host=self._limit
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        connect = timeouts.get("connect")
        read = timeouts.get("read")
        headers = [
            (name, value)
            for name, value in request.headers.multi_items()
            if name.lower() not in _DROP_REQUEST_HEADERS
        ]
        body = await request.aread()
        try:
            async with self._client().request(
                request.method,
                str(request.url),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=connect, sock_connect=connect, sock_read=read
                ),
            ) as response:
                content = await response.read()
                status = response.status
                raw_headers = [
                    (name, value)
                    for name, value in response.raw_headers
                    if name.lower() not in _DROP_RESPONSE_HEADERS
                ]
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(
                str(exc) or "connect timeout", request=request
            ) from exc
        except TimeoutError as exc:
            raise httpx.ReadTimeout(
                str(exc) or "read timeout", request=request
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise httpx.ReadError(
                str(exc) or type(exc).__name__, request=request
            ) from exc
        return httpx.Response(
            status, headers=raw_headers, content=content, request=request
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
