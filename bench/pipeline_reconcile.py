"""Benchmark 3: reconciliation of many assets with nothing to do, +20 ms per call.

Run: .venv/bin/python bench/pipeline_reconcile.py [--small] [--count N]

N assets (keys sealed in the database) none of which has an accepted claim on the
stand-in: each asset costs a login and the accepted-claims query, every call 20 ms
slower. Timed is the listener's own reconciliation step (`Listener.reconcile_once`,
what runs at start and every RECONCILE_INTERVAL) with the settings' concurrency;
a second pass shows the steady state (sessions already logged in). Goal: 10,000
assets in under 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_common import (
    ROLE,
    Stopwatch,
    cpu_seconds,
    mine,
    setup_django,
    stand_in_process,
)

LATENCY = 0.020


async def _reconcile(passes: int) -> list[tuple[float, Any, float]]:
    from claims.integrations import integrations_from_settings
    from claims.listener import Listener, ListenerConfig
    from evops.integrations.nats import NatsOptions

    config = ListenerConfig(nats=NatsOptions(url="nats://unused"), subjects=[])
    from django.conf import settings

    config.reconcile_concurrency = settings.RECONCILE_CONCURRENCY
    integrations = integrations_from_settings()
    listener = Listener(config, integrations)
    runs = []
    for _ in range(passes):
        cpu = cpu_seconds()
        clock = Stopwatch()
        result = await listener.reconcile_once()
        runs.append((clock(), result, cpu_seconds() - cpu))
    await integrations.aclose()
    return runs


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="1,000 assets")
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args(argv)
    count = args.count or (1000 if args.small else 10000)

    from evops.protocol.dids import DID
    from evops.protocol.keys import LocalKeySigner
    from evops.sandbox.peers import Anvil

    issuer = LocalKeySigner.generate()
    issuer_did = DID.for_address(issuer.address).canonical
    with Anvil() as anvil:
        registry = anvil.deploy_registry()
        mine(anvil.rpc_url)
        with stand_in_process(
            anvil.rpc_url, nats_url=None, issuer_did=issuer_did, latency=LATENCY
        ) as stand_in:
            setup_django(
                CACHE_SERVER_URL=stand_in.url,
                CHAIN_RPC_URL=anvil.rpc_url,
                DID_REGISTRY_ADDRESS=str(registry),
                PREQUALIFICATION_ROLE=ROLE,
            )
            from django.conf import settings

            from assets.services import asset_generate

            clock = Stopwatch()
            asset_generate(count=count)
            generated = clock()
            runs = asyncio.run(_reconcile(2))
            server_cpu = stand_in.cpu_seconds()
    print(
        f"reconciliation: {count} assets, nothing to do, stand-in +"
        f"{LATENCY * 1000:.0f} ms per call, concurrency "
        f"{settings.RECONCILE_CONCURRENCY} (assets generated in {generated:.1f} s)",
        flush=True,
    )
    for label, (elapsed, result, cpu) in zip(
        ("first pass (logs every asset in)", "second pass (sessions reused)"),
        runs,
        strict=True,
    ):
        print(
            f"  {label}: {elapsed:6.2f} s ({result.assets / elapsed:6.0f} assets/s), "
            f"published {result.published}, errors {len(result.errors)}, "
            f"evops CPU {cpu:.1f} s"
        )
    scaled = runs[0][0] * 10000 / count
    verdict = "met" if scaled < 60 else "NOT met"
    print(
        f"  first pass scaled to 10,000 assets: {scaled:.1f} s (goal < 60 s: "
        f"{verdict}); stand-in CPU {server_cpu:.1f} s"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
