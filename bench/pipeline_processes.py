"""Benchmark 4: one listener process against several on the same machine.

Run: .venv/bin/python bench/pipeline_processes.py [--count N] [--processes 1,2]

The same burst as pipeline_requests.py (N prequalification requests published at
once, stand-in +20 ms per call), filed by the real `manage.py run_nats_listener
--processes P` for each P given, on one database and one set of peers (the assets
and their requests are cleared between runs). Prints the wall time, requests/s and
the speed-up over the first P. Goal: 2 processes on 2 cores >= 1.7x one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_common import (
    ENV,
    ROLE,
    ROOT,
    BenchFailure,
    Stopwatch,
    Yardstick,
    machine_cpu_seconds,
    machine_line,
    mine,
    process_cpu_seconds,
    setup_django,
    stand_in_process,
)

LATENCY = 0.020
SUBJECT = "bench.prequalification.exchange"


def _run_once(
    processes: int, count: int, nats_url: str, limit: float
) -> tuple[float, float, float]:
    import nats
    from asgiref.sync import sync_to_async

    from assets.services import asset_generate
    from claims.models import ClaimRecord

    assets = asset_generate(count=count)
    env = {**os.environ, "LOG_LEVEL": "INFO", "LOG_FORMAT": "json"}
    name = f"bench{processes}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "run_nats_listener",
            *("--name", name, "--no-reconcile", "--processes", str(processes)),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    listening = threading.Semaphore(0)
    pids: list[int] = []
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("started "):
                # "started N listener processes PID, PID in queue group G"
                pids.extend(int(p.strip(",")) for p in line.split()[4 : 4 + processes])
            if line.startswith("{") and '"message":"listening"' in line:
                listening.release()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for _ in range(processes):
            if not listening.acquire(timeout=60):
                raise BenchFailure("listeners not subscribed:\n" + "".join(lines[-20:]))
        if processes == 1:
            pids.append(proc.pid)
        cpu_before = sum(process_cpu_seconds(pid) for pid in pids)
        machine_before = machine_cpu_seconds()

        async def burst() -> float:
            client = await nats.connect(nats_url)
            clock = Stopwatch()
            for asset in assets:
                await client.publish(SUBJECT, json.dumps({"did": asset.did}).encode())
            await client.flush()
            deadline = time.monotonic() + limit
            while await sync_to_async(ClaimRecord.objects.count)() < count:
                if time.monotonic() > deadline:
                    raise BenchFailure(f"{processes} process(es): not filed in time")
                await asyncio.sleep(0.05)
            elapsed = clock()
            await client.close()
            return elapsed

        elapsed = asyncio.run(burst())
        cpu = sum(process_cpu_seconds(pid) for pid in pids) - cpu_before
        machine = machine_cpu_seconds() - machine_before
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    from assets.models import Asset
    from claims.models import ClaimEvent, InboundMessage

    ClaimEvent.objects.all().delete()
    ClaimRecord.objects.all().delete()
    InboundMessage.objects.all().delete()
    Asset.objects.all().delete()
    return elapsed, cpu, machine


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--processes", default="1,2")
    args = parser.parse_args(argv)
    plan = [int(p) for p in args.processes.split(",")]
    print(machine_line(), flush=True)
    yardstick = Yardstick()
    from evops.protocol.dids import DID
    from evops.protocol.keys import LocalKeySigner
    from evops.sandbox.peers import Anvil, NatsServer

    issuer = LocalKeySigner.generate()
    issuer_did = DID.for_address(issuer.address).canonical
    results = []
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
            setup_django(
                CACHE_SERVER_URL=stand_in.url,
                CHAIN_RPC_URL=anvil.rpc_url,
                DID_REGISTRY_ADDRESS=str(registry),
                NATS_URL=nats_server.url,
                NATS_PREQUALIFICATION_SUBJECT="*.prequalification.exchange",
                NATS_CLAIM_EXCHANGE_SUBJECTS=f"*.claim-exchange.*.{ENV}",
                PREQUALIFICATION_ROLE=ROLE,
            )
            for processes in plan:
                elapsed, cpu, machine = _run_once(
                    processes, args.count, nats_server.url, 60 + 0.2 * args.count
                )
                results.append((processes, elapsed, cpu))
                print(
                    f"  {processes} process(es): {args.count} filed in {elapsed:.2f} s "
                    f"wall ({args.count / elapsed:.0f}/s), listener CPU {cpu:.1f} s "
                    f"({yardstick.ratio(cpu / args.count):.0f} raw signatures per "
                    f"request); the whole machine (with the stand-in, PostgreSQL, "
                    f"NATS, anvil) {machine:.1f} s of CPU: {machine / elapsed:.2f} of "
                    f"{os.cpu_count()} cores busy",
                    flush=True,
                )
    yardstick.close()
    print(f"  {yardstick.describe()}")
    base = results[0][1]
    for processes, elapsed, *_ in results[1:]:
        print(
            f"  {processes} processes vs {results[0][0]}: {base / elapsed:.2f}x "
            f"(goal >= 1.7x with 2 on 2 cores)"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
