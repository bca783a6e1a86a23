"""`AiohttpTransport`: httpx's API over aiohttp's connection pool, with limits.

Used by the cache-server client and the IPFS credential store (see the class for why).
Every answer is read as a stream with a size limit and within an overall deadline
(`read_limited`, also used by the chain's JSON-RPC): a peer that sends a huge body
is cut off at the limit, one that drips a byte a second at the deadline, and memory
stays bounded either way.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx

# Ample for every answer evops expects (tokens are at most 64 KiB, claim lists of an
# asset a few hundred KiB); the settings set each peer's own limit.
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
_CHUNK = 64 * 1024

ERR_TOO_LARGE = "answer larger than {limit} bytes"
ERR_DEADLINE = "no complete answer within {deadline:g} s"


class BodyTooLarge(Exception):
    """An answer exceeded the size limit; reading stopped at the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(ERR_TOO_LARGE.format(limit=limit))
        self.limit = limit


class ResponseTooLarge(httpx.ReadError):
    """httpx-family form of `BodyTooLarge`, raised by `AiohttpTransport`."""


class DeadlineExceeded(httpx.ReadTimeout):
    """The whole exchange (connect, send, every read) outlived its deadline."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A peer's whole answer, read within the limits (`AiohttpTransport.exchange`).

    The part of `httpx.Response` the clients read (`status_code`, `content`,
    case-insensitive `headers`, `text`, `json()`), without httpx's per-request
    model building: a hot client calls `exchange` directly.
    """

    status_code: int
    content: bytes
    headers: Mapping[str, str]

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)

    def to_httpx(self, request: httpx.Request | None = None) -> httpx.Response:
        """As an `httpx.Response` (the body is already decoded: encoding and
        length headers are dropped so httpx does not decode it again)."""
        headers = [
            (name, value)
            for name, value in self.headers.items()
            if name.lower() not in _DROP_RESPONSE_HEADERS
        ]
        return httpx.Response(
            self.status_code, headers=headers, content=self.content, request=request
        )


@functools.lru_cache(maxsize=16)
def _timeouts(connect: float | None, read: float | None) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None, connect=connect, sock_connect=connect, sock_read=read
    )


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body of `response`, refusing more than `limit` bytes (after decoding).

    A declared Content-Length above the limit is refused before reading; otherwise
    the body is read in chunks and the read stops as soon as the total passes the
    limit, so at most `limit` plus one chunk is ever held.
    """
    declared = response.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


# Hop-by-hop and encoding headers the aiohttp session sets (or has undone) itself.
_DROP_REQUEST_HEADERS = frozenset(
    {"host", "content-length", "connection", "transfer-encoding", "accept-encoding"}
)
_DROP_RESPONSE_HEADERS = frozenset(
    {"content-encoding", "content-length", "transfer-encoding"}
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
    `deadline` (seconds, None for none) bounds the whole exchange, so a peer that
    answers one byte per read timeout cannot hold the call; `max_response_bytes`
    bounds the body (`ResponseTooLarge`). The session is created on first use and
    belongs to that event loop.
    """

    def __init__(
        self,
        *,
        limit: int,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        deadline: float | None = None,
    ) -> None:
        if max_response_bytes < 1 or (deadline is not None and deadline <= 0):
            raise ValueError("max_response_bytes and deadline must be positive")
        self._limit = limit
        self.max_response_bytes = max_response_bytes
        self.deadline = deadline
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
        headers = [
            (name, value)
            for name, value in request.headers.multi_items()
            if name.lower() not in _DROP_REQUEST_HEADERS
        ]
        body = await request.aread()
        reply = await self.exchange(
            request.method,
            str(request.url),
            headers=headers,
            body=body or None,
            connect=timeouts.get("connect"),
            read=timeouts.get("read"),
            request=request,
        )
        return reply.to_httpx(request)

    async def exchange(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | list[tuple[str, str]],
        body: bytes | None,
        connect: float | None,
        read: float | None,
        request: httpx.Request | None = None,
    ) -> Reply:
        """One exchange within the limits; errors in httpx's exception family.

        `connect` bounds pool acquisition plus connecting, `read` each socket read,
        the transport's `deadline` the whole exchange. `request` is only attached to
        the errors (httpx's transports have one; a direct caller need not).
        """
        deadline = asyncio.timeout(self.deadline)
        try:
            async with (
                deadline,
                self._client().request(
                    method,
                    url,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    timeout=_timeouts(connect, read),
                ) as response,
            ):
                content = await read_limited(response, self.max_response_bytes)
                return Reply(response.status, content, response.headers)
        except BodyTooLarge as exc:
            raise ResponseTooLarge(str(exc), request=request) from exc
        except TimeoutError as exc:
            if deadline.expired():
                assert self.deadline is not None
                raise DeadlineExceeded(
                    ERR_DEADLINE.format(deadline=self.deadline), request=request
                ) from exc
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                raise httpx.ConnectTimeout(
                    str(exc) or "connect timeout", request=request
                ) from exc
            raise httpx.ReadTimeout(
                str(exc) or "read timeout", request=request
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise httpx.ReadError(
                str(exc) or type(exc).__name__, request=request
            ) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
