"""Benchmark 2: issued credentials -> published and confirmed on anvil.

Run: .venv/bin/python bench/pipeline_publish.py [--small] [--count N]

N assets (keys sealed in the database, asset chain mode) have pending claim requests.
A separate TSO process issues all N credentials through the stand-in (which verifies
them and publishes the NATS `issue-credential` notices, as the real server does);
a running `Listener` fetches each claim, checks it, stores the token on js-ipfs,
writes the service entry on anvil (instant mining) and confirms it by resolving the
DID document from chain. Latency per credential: from the TSO's issue call returning
to the record's `published_at`. evops' own share: the part of those latencies not
spent inside cache-server, store and chain calls (from the listener's histograms),
and the CPU the evops process used per credential.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_common import (
    ENV,
    ROLE,
    ROOT,
    BenchFailure,
    Stopwatch,
    Yardstick,
    cpu_seconds,
    describe,
    histogram_sum,
    machine_line,
    mine,
    setup_django,
    stand_in_process,
    start_listener,
    wait_done,
)

TSO_CONCURRENCY = 20

# The TSO side, in its own process so its signing does not count as evops' CPU.
_TSO = """
import asyncio, json, sys, time
from evops.protocol.keys import LocalKeySigner
from evops.sandbox.cache_server import eth_block_number, issue_claim
job = json.load(sys.stdin)
issuer = LocalKeySigner(job["issuer_key"])
async def main():
    semaphore = asyncio.Semaphore(job["concurrency"])
    async def one(item):
        async with semaphore:
            # Instant mining: evops' own writes move the chain on quickly, so the
            # login's block can age past the server's window; sign afresh then.
            for _ in range(5):
                block = await eth_block_number(job["rpc_url"])
                status = await issue_claim(job["url"], issuer,
                    issuer_did=job["issuer_did"], claim_id=item["claim_id"],
                    requester=item["did"], issued_token=item["token"],
                    block_number=block)
                if status != 401:
                    break
            print(json.dumps([item["claim_id"], status, time.time()]), flush=True)
    await asyncio.gather(*(one(item) for item in job["items"]))
asyncio.run(main())
"""


async def _prepare(count: int, rpc_url: str) -> list[Any]:
    from asgiref.sync import sync_to_async

    from assets.services import asset_generate
    from claims import pipeline
    from claims.integrations import integrations_from_settings
    from claims.models import LISTENER, ClaimRecord
    from evops.sandbox.peers import fund

    assets = await sync_to_async(asset_generate)(count=count)
    for asset in assets:
        fund(rpc_url, asset.address, 10**19)
    integrations = integrations_from_settings()
    semaphore = asyncio.Semaphore(20)

    async def request(asset: Any) -> None:
        async with semaphore:
            await pipeline.claim_request_prequalification(
                asset=asset, integrations=integrations, actor=LISTENER
            )

    await asyncio.gather(*(request(asset) for asset in assets))
    await integrations.aclose()
    return [r async for r in ClaimRecord.objects.select_related("asset")]


async def _run(
    records: list[Any], tso_job: dict[str, Any], limit: float
) -> tuple[float, list[float], int, float, float]:
    from claims import metrics
    from claims.integrations import integrations_from_settings
    from claims.listener import Listener
    from claims.listener_config import ListenerConfig
    from claims.models import ClaimRecord, ClaimStatus

    config = ListenerConfig.from_settings(name="bench", reconcile_on_start=False)
    config.reconcile_interval = 0
    integrations = integrations_from_settings()
    listener = Listener(config, integrations)
    task = await start_listener(listener)
    external_before = sum(
        histogram_sum(h)
        for h in (
            metrics.CACHE_SERVER_LATENCY,
            metrics.STORE_LATENCY,
            metrics.CHAIN_LATENCY,
        )
    )
    cpu_before = cpu_seconds()
    clock = Stopwatch()
    tso = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _TSO,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        out, _ = await asyncio.wait_for(
            tso.communicate(json.dumps(tso_job).encode()), timeout=limit
        )
    except TimeoutError:
        tso.kill()
        raise BenchFailure(f"the TSO did not issue within {limit:.0f} s") from None
    issued = {}
    refused = []
    for line in out.decode().splitlines():
        claim_id, status, at = json.loads(line)
        if status == 201:
            issued[claim_id] = at
        else:
            refused.append(status)
    if refused or tso.returncode:
        raise BenchFailure(
            f"the stand-in refused {len(refused)} issue call(s) (HTTP "
            f"{sorted(set(refused))}), TSO exit {tso.returncode}"
        )

    async def all_published() -> bool:
        done = await ClaimRecord.objects.filter(status=ClaimStatus.PUBLISHED).acount()
        return done >= len(issued)

    # Every 0.2 s: the bench's own COUNT every 50 ms (the default) ran in this
    # process and was charged to evops, about a tenth of the CPU per credential
    # once the pipeline got cheaper. The wall time is 0.2 s coarser.
    await wait_done(
        all_published,
        max(1.0, limit - clock()),
        f"{len(issued)} publications",
        interval=0.2,
    )
    elapsed = clock()
    cpu = cpu_seconds() - cpu_before
    external = (
        sum(
            histogram_sum(h)
            for h in (
                metrics.CACHE_SERVER_LATENCY,
                metrics.STORE_LATENCY,
                metrics.CHAIN_LATENCY,
            )
        )
        - external_before
    )
    listener.stop.set()
    await task
    await integrations.aclose()
    latencies = [
        published_at.timestamp() - issued[claim_id]
        async for claim_id, published_at in ClaimRecord.objects.filter(
            status=ClaimStatus.PUBLISHED
        ).values_list("claim_id", "published_at")
        if claim_id in issued and published_at is not None
    ]
    return elapsed, latencies, len(issued), cpu, external


# Blocks a login may lag behind with instant mining: about 50 s of a burst's blocks.
INSTANT_BLOCKS_BACK = 10_000


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="100 credentials")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument(
        "--block-time",
        type=float,
        default=0,
        help="seconds per block on anvil (0: instant mining; 5: as a real chain, "
        "with CHAIN_CONFIRMATIONS=1 unless --confirmations says otherwise)",
    )
    parser.add_argument("--confirmations", type=int, default=None)
    parser.add_argument(
        "--latency",
        type=float,
        default=0.020,
        help="seconds the stand-in adds to each call (default 0.020)",
    )
    parser.add_argument(
        "--limit",
        type=float,
        default=0,
        help="seconds the run may take before the bench fails (default: 120 + "
        "0.5 s per credential, and the blocks' time)",
    )
    args = parser.parse_args(argv)
    count = args.count or (100 if args.small else 1000)
    block_time = args.block_time or None
    confirmations = (
        args.confirmations
        if args.confirmations is not None
        else (1 if block_time else 0)
    )
    limit = args.limit or 120 + 0.5 * count + 20 * (block_time or 0)
    print(machine_line(), flush=True)
    yardstick = Yardstick()

    from evops.protocol.dids import DID
    from evops.protocol.jwt import issued_token
    from evops.protocol.keys import LocalKeySigner
    from evops.sandbox.peers import PeerStack

    issuer_key = "0x" + __import__("secrets").token_hex(32)
    issuer = LocalKeySigner(issuer_key)
    issuer_did = DID.for_address(issuer.address).canonical
    with PeerStack(block_time=block_time) as stack:
        anvil = stack.anvil
        mine(anvil.rpc_url)
        with stand_in_process(
            anvil.rpc_url,
            nats_url=stack.nats.url,
            issuer_did=issuer_did,
            latency=args.latency,
            registry_address=str(stack.registry_address),
            # The server's login window is 10 blocks, about 50 s of real blocks.
            # With instant mining every publication is a block (a burst makes a
            # hundred a second), so 10 blocks pass while a login waits its turn
            # and logins fail as "outdated"; the same 50 s are kept instead.
            blocks_back=None if block_time else INSTANT_BLOCKS_BACK,
        ) as stand_in:
            setup_django(
                CACHE_SERVER_URL=stand_in.url,
                CHAIN_RPC_URL=anvil.rpc_url,
                DID_REGISTRY_ADDRESS=str(stack.registry_address),
                CHAIN_MAX_FEE_GWEI="100",
                CHAIN_CONFIRMATIONS=str(confirmations),
                IPFS_API_URL=stack.ipfs.api_url,
                NATS_URL=stack.nats.url,
                NATS_PREQUALIFICATION_SUBJECT="*.prequalification.exchange",
                NATS_CLAIM_EXCHANGE_SUBJECTS=f"*.claim-exchange.*.{ENV}",
                PREQUALIFICATION_ROLE=ROLE,
            )
            from django.conf import settings

            records = asyncio.run(_prepare(count, anvil.rpc_url))
            items = [
                {
                    "claim_id": r.claim_id,
                    "did": r.asset.did,
                    "token": issued_token(
                        issuer,
                        issuer_did=issuer_did,
                        subject=r.asset.did,
                        claim_data={"claimType": ROLE, "claimTypeVersion": 1},
                        exp=int(time.time()) + 3600,
                    ),
                }
                for r in records
            ]
            job = {
                "issuer_key": issuer_key,
                "issuer_did": issuer_did,
                "url": stand_in.url,
                "rpc_url": anvil.rpc_url,
                "concurrency": TSO_CONCURRENCY,
                "items": items,
            }
            elapsed, latencies, issued, cpu, external = asyncio.run(
                _run(records, job, limit)
            )
            server_cpu = stand_in.cpu_seconds()
    yardstick.close()
    published = len(latencies)
    print(
        f"publication: {count} credentials issued by a TSO process ({issued} "
        f"accepted by the stand-in), asset chain mode on anvil ("
        + (f"{block_time:g} s blocks" if block_time else "instant mining")
        + f", CHAIN_CONFIRMATIONS={confirmations}), js-ipfs store, stand-in "
        f"+{args.latency * 1000:.0f} ms per call; workers "
        f"{settings.WORKER_CONCURRENCY}",
        flush=True,
    )
    print(f"  {yardstick.describe()}")
    print(
        f"  published and confirmed: {published}/{issued} in {elapsed:.2f} s "
        f"-> {published / elapsed:.1f} credentials/s"
    )
    if latencies:
        print(f"  latency (issue returned -> published_at): {describe(latencies)}")
        total = sum(latencies)
        own = max(0.0, total - external)
        print(
            f"  inside peers' calls (cache server, store, chain): {external:.1f} s "
            f"of {total:.1f} s summed latency -> evops' own share {own / total:.0%} "
            "(queueing for a worker slot or the database thread counts as evops')"
        )
    each = cpu / max(published, 1)
    print(
        f"  evops process CPU: {cpu:.1f} s ({each * 1000:.1f} ms per credential = "
        f"{yardstick.ratio(each):.0f} raw signatures, goal <= 100); stand-in CPU "
        f"over the whole run: {server_cpu:.1f} s"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
