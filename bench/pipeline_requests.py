"""Benchmark 1: a burst of prequalification requests, stand-in adding 20 ms per call.

Run: .venv/bin/python bench/pipeline_requests.py [--small] [--count N]
     [--signer-backend local|pkcs11]
(`NATS_JETSTREAM_STREAM=BENCH` in the environment: the listener in JetStream mode.
`--signer-backend pkcs11`, or `SIGNER_BACKEND=pkcs11`: the assets' keys are made in a
throw-away SoftHSM2 token, or the HSM `PKCS11_MODULE` etc. name, and every login and
claim-request signature comes from it.)

Publishes N `{"did"}` messages on the prequalification subject at once to a running
`Listener` (built as `run_nats_listener` builds it: settings, real integrations,
keys sealed in the database) and times until all N claim requests are filed (N
`requested` records). Next to it, in the same run against the same stand-in, the
baseline the original service had: per message, sequentially, log in afresh, fetch
the role definition and file the request. Goal: evops at least 20x faster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_common import (
    ENV,
    ROLE,
    StandIn,
    Stopwatch,
    Yardstick,
    cpu_seconds,
    describe,
    machine_cpu_seconds,
    machine_line,
    mine,
    setup_django,
    stand_in_process,
    start_listener,
    wait_done,
)

LATENCY = 0.020
SUBJECT = "bench.prequalification.exchange"


async def _evops(
    stand_in: StandIn, nats_url: str, count: int, limit: float
) -> tuple[float, int, float, float, float]:
    """The listener's time for the burst, requests filed, CPU of evops, of the
    stand-in and of the rest of the machine (PostgreSQL, NATS, anvil).

    CPU is counted from the first publish to the last filing (not the set-up: key
    generation, connections). The wait counts the records' `claim_changed` signals
    and reads the database only once they say all are filed: polling a count every
    50 ms cost this process a few per cent of the CPU it measures.
    """
    import nats
    from asgiref.sync import sync_to_async

    from assets.services import asset_generate
    from claims.integrations import integrations_from_settings
    from claims.listener import Listener
    from claims.listener_config import ListenerConfig
    from claims.models import ClaimRecord
    from claims.signals import claim_changed

    announced: set[int] = set()

    def on_changed(sender: object, record_id: int, **kwargs: object) -> None:
        announced.add(record_id)

    claim_changed.connect(on_changed, weak=False, dispatch_uid="bench-requests")
    assets = await sync_to_async(asset_generate)(count=count)
    config = ListenerConfig.from_settings(name="bench", reconcile_on_start=False)
    config.reconcile_interval = 0
    integrations = integrations_from_settings()
    listener = Listener(config, integrations)
    task = await start_listener(listener)
    client = await nats.connect(nats_url)
    own_cpu, server_cpu = cpu_seconds(), stand_in.cpu_seconds()
    machine_cpu = machine_cpu_seconds()
    clock = Stopwatch()
    for asset in assets:
        await client.publish(SUBJECT, json.dumps({"did": asset.did}).encode())
    await client.flush()

    async def all_filed() -> bool:
        if len(announced) < count:
            return False
        return await ClaimRecord.objects.acount() >= count

    await wait_done(all_filed, limit, f"{count} prequalification requests")
    elapsed = clock()
    own_cpu, server_cpu = cpu_seconds() - own_cpu, stand_in.cpu_seconds() - server_cpu
    others = machine_cpu_seconds() - machine_cpu - own_cpu - server_cpu
    filed = await ClaimRecord.objects.acount()
    listener.stop.set()
    await task
    await client.close()
    await integrations.aclose()
    claim_changed.disconnect(dispatch_uid="bench-requests")
    return elapsed, filed, own_cpu, server_cpu, others


async def _baseline(url: str, rpc_url: str, count: int) -> tuple[float, list[float]]:
    """The original: per message, a fresh login, the role, the request; one by one."""
    from evops.integrations.cache_server import CacheServerClient
    from evops.protocol.dids import DID
    from evops.protocol.keys import LocalKeySigner
    from evops.sandbox.cache_server import eth_block_number

    async def block_number() -> int:
        return await eth_block_number(rpc_url)

    signers = [LocalKeySigner.generate() for _ in range(count)]
    each: list[float] = []
    clock = Stopwatch()
    for signer in signers:
        one = Stopwatch()
        did = DID.for_address(signer.address).canonical
        async with CacheServerClient(url, block_number=block_number) as client:
            role = await client.role(signer, did, ROLE)
            result = await client.request_claim(signer, did, role=role)
            assert result.claim_id, "the baseline must file a request"
        each.append(one())
    return clock(), each


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="100 requests")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument(
        "--limit",
        type=float,
        default=0,
        help="seconds the burst may take before the bench fails (default: 60 + "
        "0.2 s per request)",
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the sequential baseline"
    )
    parser.add_argument(
        "--signer-backend",
        choices=("local", "pkcs11"),
        default=os.environ.get("SIGNER_BACKEND", "local"),
    )
    args = parser.parse_args(argv)
    count = args.count or (100 if args.small else 1000)
    with contextlib.ExitStack() as stack:
        if args.signer_backend == "pkcs11":
            from hsm import softhsm_token

            token = stack.enter_context(softhsm_token())
            print(f"signer backend: PKCS#11, {token}", flush=True)
        _run(count, args.signer_backend, args.limit or 60 + 0.2 * count, args)


def _run(count: int, backend: str, limit: float, args: argparse.Namespace) -> None:
    print(machine_line(), flush=True)
    yardstick = Yardstick()

    from evops.protocol.dids import DID
    from evops.protocol.keys import LocalKeySigner
    from evops.sandbox.peers import Anvil, NatsServer

    issuer = LocalKeySigner.generate()
    issuer_did = DID.for_address(issuer.address).canonical
    with Anvil() as anvil, NatsServer() as nats_server:
        registry = anvil.deploy_registry()
        mine(anvil.rpc_url)
        with stand_in_process(
            anvil.rpc_url,
            nats_url=nats_server.url,
            issuer_did=issuer_did,
            latency=LATENCY,
            registry_address=str(registry),
        ) as stand_in:
            url = stand_in.url
            setup_django(
                CACHE_SERVER_URL=url,
                CHAIN_RPC_URL=anvil.rpc_url,
                DID_REGISTRY_ADDRESS=str(registry),
                NATS_URL=nats_server.url,
                NATS_PREQUALIFICATION_SUBJECT="*.prequalification.exchange",
                NATS_CLAIM_EXCHANGE_SUBJECTS=f"*.claim-exchange.*.{ENV}",
                PREQUALIFICATION_ROLE=ROLE,
                SIGNER_BACKEND=backend,
            )
            from django.conf import settings

            stream = settings.NATS_JETSTREAM_STREAM

            elapsed, filed, own_cpu, server_cpu, others = asyncio.run(
                _evops(stand_in, nats_server.url, count, limit)
            )
            base_elapsed, each = (
                (0.0, [])
                if args.no_baseline
                else asyncio.run(_baseline(url, anvil.rpc_url, count))
            )
    yardstick.close()
    print(
        f"prequalification burst: {count} requests, stand-in +{LATENCY * 1000:.0f} ms "
        f"per call; workers {settings.WORKER_CONCURRENCY}, cache-server "
        f"concurrency {settings.CACHE_SERVER_MAX_CONCURRENCY}, NATS "
        f"{'JetStream stream ' + stream if stream else 'core'}; signer backend "
        f"{settings.SIGNER_BACKEND}; the stand-in's login resolves the DID "
        "document from chain, reads the block number and loads the user's claims",
        flush=True,
    )
    print(f"  {yardstick.describe()}")
    per_request = own_cpu / max(filed, 1)
    print(
        f"  evops listener:  {filed}/{count} filed in {elapsed:7.2f} s wall "
        f"({filed / elapsed:6.0f} requests/s); CPU during the burst: evops "
        f"{own_cpu:.1f} s ({per_request * 1000:.2f} ms per request = "
        f"{yardstick.ratio(per_request):.0f} raw signatures, goal <= 20), "
        f"stand-in {server_cpu:.1f} s, the rest of the machine (PostgreSQL, NATS, "
        f"anvil) {others:.1f} s; {(own_cpu + server_cpu + others) / elapsed:.2f} "
        f"of {os.cpu_count()} cores busy"
    )
    # Latency floor: each request makes about 2 calls (a login shared by none in
    # a burst of fresh assets, and the request) at 20 ms, 50 at once.
    floor = count * 2 * LATENCY / settings.CACHE_SERVER_MAX_CONCURRENCY
    print(
        f"  latency floor ({count} x 2 calls x {LATENCY * 1000:.0f} ms / "
        f"{settings.CACHE_SERVER_MAX_CONCURRENCY} at once): {floor:.2f} s -> "
        f"{elapsed / floor:.1f}x the floor (goal <= 2x on an idle machine)"
    )
    if args.no_baseline:
        return
    print(
        f"  baseline (login, role, request per message, sequential): "
        f"{base_elapsed:7.2f} s ({count / base_elapsed:6.1f} requests/s; "
        f"per message {describe(each)})"
    )
    speedup = base_elapsed / elapsed
    verdict = "met" if speedup >= 20 and filed == count else "NOT met"
    print(f"  speed-up: {speedup:.1f}x (goal >= 20x: {verdict})")


if __name__ == "__main__":
    main(sys.argv[1:])
