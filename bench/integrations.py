"""Benchmark: the integrations against the local peers, each next to its limit.

Run: .venv/bin/python bench/integrations.py [figure ...]
Figures (default: all): chain, cache-server.

- chain: relayed DID-document publications per second on anvil with 1 s blocks, next
  to the limit that chain sets, block gas limit / gas per write (per block time).
  The measurement lives in `bench/chain.py` (`relayed_publications`), which also
  runs alone with its own options.

- cache-server: calls per second through `CacheServerClient` against the stand-in
  with 20 ms added latency per call and a concurrency limit. The limit for that setup
  is `latency x calls / concurrency` seconds, i.e. `concurrency / latency` calls/s:
  what a perfect client achieves when every call costs exactly the added latency.

Each figure is one function taking no arguments and returning its printed lines.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from chain import relayed_publications  # noqa: E402

from evops.integrations.cache_server import CacheServerClient  # noqa: E402
from evops.protocol.dids import DID  # noqa: E402
from evops.protocol.jwt import identity_token  # noqa: E402
from evops.protocol.keys import LocalKeySigner  # noqa: E402
from evops.sandbox.cache_server import (  # noqa: E402
    eth_block_number,
    stand_in_process,
)
from evops.sandbox.peers import Anvil  # noqa: E402

ROLE = "prequalified.roles.tso.apps.elia.iam.ewc"

CACHE_LATENCY = 0.020
CACHE_CONCURRENCY = 50
CACHE_ASSETS = 100
CACHE_CALLS = 5000


async def _cache_server_run(url: str, rpc_url: str) -> tuple[float, int, int]:
    """Time CACHE_CALLS reads spread over CACHE_ASSETS logged-in assets."""

    async def block_number() -> int:
        return await eth_block_number(rpc_url)

    signers = [LocalKeySigner.generate() for _ in range(CACHE_ASSETS)]
    dids = [DID.for_address(s.address).canonical for s in signers]
    async with CacheServerClient(
        url, block_number=block_number, max_concurrency=CACHE_CONCURRENCY
    ) as client:
        # Log every asset in first: the figure is about steady-state calls.
        await asyncio.gather(
            *(client.auth_status(s, d) for s, d in zip(signers, dids, strict=True))
        )
        logins = client.logins

        async def one(i: int) -> None:
            index = i % CACHE_ASSETS
            await client.role(signers[index], dids[index], ROLE)

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(CACHE_CALLS)))
        elapsed = time.perf_counter() - start
        return elapsed, logins, client.logins - logins


async def _cache_server_bare(url: str, rpc_url: str) -> float:
    """The same calls from a bare aiohttp session: what the server itself sustains."""
    signer = LocalKeySigner.generate()
    did = DID.for_address(signer.address).canonical
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CACHE_CONCURRENCY),
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:
        login = identity_token(
            signer, did=did, block_number=await eth_block_number(rpc_url)
        )
        async with session.post(
            f"{url}/v1/login", json={"identityToken": login}
        ) as response:
            token = (await response.json())["token"]
        headers = {"Authorization": f"Bearer {token}"}
        semaphore = asyncio.Semaphore(CACHE_CONCURRENCY)

        async def one() -> None:
            async with (
                semaphore,
                session.get(f"{url}/v1/role/{ROLE}", headers=headers) as response,
            ):
                await response.read()

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(CACHE_CALLS)))
        return time.perf_counter() - start


def cache_server_calls() -> list[str]:
    """Cache-server calls/s through the client vs concurrency / latency."""
    with (
        Anvil() as anvil,
        # In its own process, so that it does not share this one's GIL.
        stand_in_process(
            anvil.rpc_url, "--latency", str(CACHE_LATENCY), "--role", f"{ROLE}="
        ) as (url, _, _),
    ):
        elapsed, logins, extra_logins = asyncio.run(
            _cache_server_run(url, anvil.rpc_url)
        )
        bare = asyncio.run(_cache_server_bare(url, anvil.rpc_url))
    limit_seconds = CACHE_LATENCY * CACHE_CALLS / CACHE_CONCURRENCY
    return [
        f"cache server: {CACHE_CALLS} calls (GET /v1/role) over {CACHE_ASSETS} "
        f"assets, concurrency {CACHE_CONCURRENCY}, added latency "
        f"{CACHE_LATENCY * 1000:.0f} ms",
        f"  measured: {CACHE_CALLS / elapsed:8.0f} calls/s  ({elapsed:.2f} s)",
        f"  limit:    {CACHE_CALLS / limit_seconds:8.0f} calls/s  "
        f"(latency x calls / concurrency = {limit_seconds:.2f} s)",
        f"  server alone (bare aiohttp, same calls): {CACHE_CALLS / bare:8.0f} calls/s",
        f"  efficiency vs limit {limit_seconds / elapsed:.0%}, vs server alone "
        f"{bare / elapsed:.0%}; logins {logins} up front, {extra_logins} during "
        "the run",
    ]


FIGURES: dict[str, Callable[[], list[str]]] = {
    "chain": relayed_publications,
    "cache-server": cache_server_calls,
}


def main(argv: list[str]) -> None:
    names = argv or list(FIGURES)
    for name in names:
        if name not in FIGURES:
            raise SystemExit(f"unknown figure {name!r}; choose from {list(FIGURES)}")
    for name in names:
        for line in FIGURES[name]():
            print(line, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
