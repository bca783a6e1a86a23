"""Hostile peers: a huge answer or a slow drip is cut off, with the peer named.

Every HTTP peer (the cache server, the IPFS store, the chain's JSON-RPC) is played
by a real HTTP server on loopback that floods (300 MB, with and without a declared
length, and as a gzip bomb) or drips one byte at a time, each byte well inside the
per-read timeout. Each client must give up at its size limit or its overall
deadline with a transient error naming the peer, and memory must stay bounded:
the body is streamed and abandoned, never buffered whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web

from evops.integrations import cache_server, chain, credential_store
from evops.integrations.cache_server import CacheServerClient, CacheServerError
from evops.integrations.chain import Chain, ChainError
from evops.integrations.credential_store import (
    CredentialStoreError,
    IpfsStore,
    confirm_stored,
)
from evops.integrations.retry import CACHE_SERVER_RETRY, RetryPolicy
from evops.protocol.dids import DID
from evops.protocol.keys import LocalKeySigner

FLOOD_BYTES = 300 * 1024 * 1024
LIMIT = 1024 * 1024
CHUNK = b"x" * 65536
CID = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
REGISTRY = "0xC15D5A57A8Eb0e1dCBE5D88B8f9a82017e5Cc4AF"


@functools.cache
def gzip_bomb() -> bytes:
    """300 MB of zeros as one gzip member of ~300 KB (built once, in pieces)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1024 * 1024)
    parts = [packer.compress(zeros) for _ in range(FLOOD_BYTES // len(zeros))]
    return b"".join(parts) + packer.flush()


class Hostile:
    """What the server does, per request; `sent` counts the bytes it got out."""

    def __init__(self) -> None:
        self.mode = "flood"
        self.sent = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        if self.mode == "declared":
            # Claims 300 MB up front: refused before a byte of body is read.
            response = web.StreamResponse(headers={"Content-Length": str(FLOOD_BYTES)})
        elif self.mode == "gzip":
            response = web.StreamResponse(headers={"Content-Encoding": "gzip"})
        else:
            response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):
            if self.mode == "drip":
                # One byte every 50 ms: every read is quick, the answer never ends.
                for _ in range(10_000):
                    await response.write(b" ")
                    self.sent += 1
                    await asyncio.sleep(0.05)
            elif self.mode == "gzip":
                # 300 MB of zeros compress to ~300 KB: the limit must count what
                # decompresses, not what travels.
                bomb = gzip_bomb()
                for start in range(0, len(bomb), len(CHUNK)):
                    await response.write(bomb[start : start + len(CHUNK)])
                    self.sent += len(CHUNK)
            else:
                while self.sent < FLOOD_BYTES:
                    await response.write(CHUNK)
                    self.sent += len(CHUNK)
        return response


@pytest.fixture
async def hostile() -> AsyncIterator[tuple[str, Hostile]]:
    behaviour = Hostile()
    gzip_bomb()  # built before any test measures memory
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", behaviour.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", behaviour
    finally:
        await runner.cleanup()


async def bounded(
    call: Callable[[], Awaitable[Any]],
) -> tuple[BaseException, int, float]:
    """Run `call` (expected to fail); its error, peak traced memory and duration."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    started = time.monotonic()
    try:
        await call()
    except Exception as exc:
        error: BaseException = exc
    else:
        raise AssertionError("the hostile peer's answer was accepted")
    finally:
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return error, peak, elapsed


def retries(count: int) -> RetryPolicy:
    """The default policy with `count` in-call retries of the cache server."""
    return RetryPolicy(cache_server=replace(CACHE_SERVER_RETRY, retries=count))


def cache_client(url: str, **kw: Any) -> CacheServerClient:
    async def block() -> int:
        return 1

    options: dict[str, Any] = {
        "block_number": block,
        "timeout": 5.0,
        "retry": retries(0),
        "max_response_bytes": LIMIT,
    }
    options.update(kw)
    return CacheServerClient(url, **options)


def rpc(url: str, **kw: Any) -> Chain:
    options: dict[str, Any] = {
        "chain_id": 73799,
        "registry_address": REGISTRY,
        "max_fee_gwei": 1,
        "request_timeout": 5.0,
        "max_response_bytes": LIMIT,
    }
    options.update(kw)
    return Chain(url, **options)


# --- floods ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["flood", "declared", "gzip"])
async def test_cache_server_flood_is_cut_at_the_limit(hostile, mode):
    url, behaviour = hostile
    behaviour.mode = mode
    signer = LocalKeySigner.generate()
    async with cache_client(url) as client:
        error, peak, _ = await bounded(
            lambda: client.role(signer, DID.for_address(signer.address), "x")
        )
    assert isinstance(error, CacheServerError), error
    assert error.permanent is False
    assert str(error).startswith(cache_server.ERR_TOO_LARGE)
    assert "cache server" in str(error)
    if mode == "flood":
        assert behaviour.sent < FLOOD_BYTES  # we stopped reading; it gave up
    assert peak < 16 * LIMIT, f"{peak / 1e6:.1f} MB held for a {LIMIT} byte limit"


@pytest.mark.parametrize("mode", ["flood", "declared", "gzip"])
@pytest.mark.parametrize("call", ["add", "cat"])
async def test_ipfs_flood_is_cut_at_the_limit(hostile, mode, call):
    url, behaviour = hostile
    behaviour.mode = mode
    async with IpfsStore(url, timeout=5, max_response_bytes=LIMIT) as store:
        error, peak, _ = await bounded(
            lambda: store.put("the token") if call == "add" else store.get(CID)
        )
    assert isinstance(error, CredentialStoreError), error
    assert error.permanent is False
    assert str(error).startswith(credential_store.ERR_TOO_LARGE)
    assert peak < 16 * LIMIT


@pytest.mark.parametrize("mode", ["flood", "declared", "gzip"])
async def test_chain_rpc_flood_is_cut_at_the_limit(hostile, mode):
    url, behaviour = hostile
    behaviour.mode = mode
    node = rpc(url)
    try:
        error, peak, _ = await bounded(node.block_number)
    finally:
        await node.aclose()
    assert isinstance(error, ChainError), error
    assert error.permanent is False
    assert error.reason.startswith(chain.RPC_TOO_LARGE)
    assert peak < 16 * LIMIT


# --- drips -----------------------------------------------------------------------


async def test_cache_server_drip_ends_at_the_deadline(hostile):
    url, behaviour = hostile
    behaviour.mode = "drip"
    signer = LocalKeySigner.generate()
    # Each read arrives within 50 ms, far inside the 5 s read timeout; retries would
    # run for minutes. The call's deadline ends it.
    async with cache_client(
        url, timeout=5.0, retry=retries(10), deadline=1.5
    ) as client:
        error, _, elapsed = await bounded(
            lambda: client.role(signer, DID.for_address(signer.address), "x")
        )
    assert isinstance(error, CacheServerError), error
    assert error.permanent is False
    assert str(error).startswith(cache_server.ERR_DEADLINE)
    assert elapsed < 4.0
    assert behaviour.sent > 5  # it really dripped


async def test_cache_server_attempt_ends_at_its_timeout_even_when_dripping(hostile):
    url, behaviour = hostile
    behaviour.mode = "drip"
    signer = LocalKeySigner.generate()
    async with cache_client(url, timeout=1.0, retry=retries(0), deadline=30) as client:
        error, _, elapsed = await bounded(
            lambda: client.role(signer, DID.for_address(signer.address), "x")
        )
    assert isinstance(error, CacheServerError), error
    assert error.permanent is False
    assert str(error).startswith(cache_server.ERR_TRANSIENT)
    assert "DeadlineExceeded" in str(error)
    assert elapsed < 4.0


@pytest.mark.parametrize("call", ["add", "cat"])
async def test_ipfs_drip_ends_at_the_deadline(hostile, call):
    url, behaviour = hostile
    behaviour.mode = "drip"
    async with IpfsStore(url, timeout=1.0) as store:
        error, _, elapsed = await bounded(
            lambda: store.put("the token") if call == "add" else store.get(CID)
        )
    assert isinstance(error, CredentialStoreError), error
    assert error.permanent is False
    assert str(error).startswith(credential_store.ERR_TIMEOUT)
    assert elapsed < 4.0


async def test_chain_rpc_drip_ends_at_the_deadline(hostile):
    url, behaviour = hostile
    behaviour.mode = "drip"
    node = rpc(url, request_timeout=1.0)
    try:
        error, _, elapsed = await bounded(node.block_number)
    finally:
        await node.aclose()
    assert isinstance(error, ChainError), error
    assert error.permanent is False
    assert error.reason.startswith(chain.RPC_TIMEOUT)
    assert elapsed < 4.0


# --- a store that lies -----------------------------------------------------------


class LyingStore:
    def __init__(self, content: str) -> None:
        self.content = content

    async def put(self, token: str) -> str:
        return CID

    async def get(self, cid: str) -> str:
        return self.content


async def test_confirm_stored_refuses_other_content():
    with pytest.raises(CredentialStoreError) as caught:
        await confirm_stored(LyingStore("something else"), CID, "the token")
    assert caught.value.permanent is False
    assert str(caught.value).startswith(credential_store.ERR_CONTENT_MISMATCH)
    await confirm_stored(LyingStore("the token"), CID, "the token")


@pytest.mark.parametrize("cid", ["", "not a cid", CID + "\n", "../x", "Qm", "0x12"])
async def test_confirm_stored_refuses_a_bogus_cid(cid):
    with pytest.raises(CredentialStoreError) as caught:
        await confirm_stored(LyingStore("the token"), cid, "the token")
    assert caught.value.permanent is False
    assert str(caught.value).startswith(credential_store.ERR_BAD_CID)
