"""Relayed DID-document publications per second on anvil with real block intervals.

Starts a private anvil with `--block-time` (1 s by default), deploys the real 0.0.3
registry, and publishes one service attribute for each of `--count` fresh, unfunded
assets through `evops.integrations.chain.Chain` in relay mode (one operator account pays
for all), at most `--concurrency` at a time. Prints the measured rate next to the limit
the chain itself sets for this setup:

    limit = block gas limit / gas per write / block time

Run from the repository root: `.venv/bin/python bench/chain.py [--count N ...]`.
`bench/integrations.py` prints this figure too (`relayed_publications`), next to the
cache-server one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evops.integrations.chain import Chain, PublishResult
from evops.protocol import erc1056
from evops.protocol.keys import LocalKeySigner
from evops.sandbox.peers import Anvil, deploy_registry

# anvil's well-known account 0 for its development mnemonic (public test key).
OPERATOR_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


def _value(index: int) -> bytes:
    token_sha256 = f"{index:064x}"
    return erc1056.service_value(
        service_id=str(uuid.uuid4()), cid=f"Qm{index:044d}", token_sha256=token_sha256
    )


DEFAULT_COUNT = 300
DEFAULT_CONCURRENCY = 100
DEFAULT_BLOCK_TIME = 1.0


def relayed_publications(
    count: int = DEFAULT_COUNT,
    concurrency: int = DEFAULT_CONCURRENCY,
    block_time: float = DEFAULT_BLOCK_TIME,
) -> list[str]:
    """Relayed publications/s vs block gas limit / gas per write; printed lines."""
    return asyncio.run(_run(count, concurrency, block_time))


async def _run(count: int, concurrency: int, block_time: float) -> list[str]:
    anvil = Anvil(block_time=block_time, balance_ether=1_000_000)
    await asyncio.to_thread(anvil.start)
    chain: Chain | None = None
    try:
        registry = await asyncio.to_thread(deploy_registry, anvil.rpc_url)
        operator = LocalKeySigner(OPERATOR_KEY)
        chain = Chain(
            anvil.rpc_url,
            chain_id=anvil.chain_id,
            registry_address=registry,
            mode="relay",
            operator=operator,
            max_fee_gwei=1000,
            receipt_timeout=300,
            poll_interval=0.1,
        )
        assets = [LocalKeySigner.generate() for _ in range(count)]
        values = [_value(i) for i in range(count)]
        gate = asyncio.Semaphore(concurrency)

        async def publish(asset: LocalKeySigner, value: bytes) -> PublishResult:
            async with gate:
                assert chain is not None
                return await chain.publish_attribute(
                    asset, name=erc1056.attribute_name(), value=value, validity=100
                )

        first_block = await chain.block_number()
        started = time.perf_counter()
        results = await asyncio.gather(
            *(publish(a, v) for a, v in zip(assets, values, strict=True))
        )
        elapsed = time.perf_counter() - started

        gas_per_write = statistics.mean(r.gas_used for r in results)
        latest = await chain.w3.eth.get_block("latest")
        gas_limit = int(latest["gasLimit"])
        per_block: dict[int, int] = {}
        for result in results:
            per_block[result.block_number] = per_block.get(result.block_number, 0) + 1
        limit = gas_limit / gas_per_write / block_time
        rate = count / elapsed

        return [
            f"chain: anvil --block-time {block_time:g}, registry 0.0.3, relay mode",
            f"  publications:         {count} (concurrency {concurrency})",
            f"  elapsed:              {elapsed:.2f} s",
            f"  blocks used:          {len(per_block)} (from block {first_block + 1})",
            f"  max per block:        {max(per_block.values())}",
            f"  gas per write (mean): {gas_per_write:,.0f}",
            f"  block gas limit:      {gas_limit:,}",
            f"  measured rate:        {rate:.1f} publications/s",
            f"  chain limit:          {limit:.1f} publications/s "
            "(block gas limit / gas per write / block time)",
            f"  share of limit:       {100 * rate / limit:.1f} %",
        ]
    finally:
        if chain is not None:
            await chain.aclose()
        await asyncio.to_thread(anvil.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--block-time", type=float, default=DEFAULT_BLOCK_TIME)
    args = parser.parse_args()
    for line in relayed_publications(args.count, args.concurrency, args.block_time):
        print(line, flush=True)


if __name__ == "__main__":
    main()
