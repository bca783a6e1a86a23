"""Chaos 1: `kill -9` the listener mid-burst, restart it, check nothing is lost.

Run: .venv/bin/python bench/chaos_crash.py [--count N] [--core] [--time-limit S]

Peers of its own (anvil with instant mining and the registry, a private nats-server,
the cache-server stand-in in its own process, whose store keeps the tokens), a
PostgreSQL database of its own, and the real `manage.py run_nats_listener` process.
N assets: half get a prequalification request on NATS, the other half have a claim
request filed beforehand and a TSO process issues their credentials through the
stand-in (which sends two `issue-credential` notices per claim, as the real server
does). Once a quarter of that work is done and a claim is being published, the
listener is killed with SIGKILL and started again at once, with `--no-reconcile`
(`--kills K`: K times, at K shares of the work).

JetStream mode (default; a stream of its own): everything must be done within 60 s
of the restart with no reconciliation; core mode (`--core`): what was sent while no
listener ran is lost by design, so the script waits for the restarted listener to go
quiet, runs `manage.py reconcile_claims` once, and then every credential must be
published. In both: one chain write per credential (the registry's
`DIDAttributeChanged` logs per identity), one claim request per asset at the cache
server, no claim left in `publishing`, no permanent failure. Prints its figures;
exits 1 if an invariant fails, 3 if its time limit is reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos_common import (
    HubWatcher,
    ListenerProcess,
    chain_writes,
    claim_requests_per_asset,
    database_figures,
    fund_all,
    kill_listeners,
    listener_env,
    prepare_requested,
    start_tso,
    time_limit,
    tso_job,
    tso_results,
)
from pipeline_common import ROOT, mine, setup_django, stand_in_process

SUBJECT = "chaos.prequalification.exchange"
RESTART_GOAL = 60.0


async def _progress(request_assets: set[int], issue_records: set[int]) -> int:
    """Requests filed for the request half, plus credentials published."""
    from claims.models import ClaimRecord, ClaimStatus

    filed = await ClaimRecord.objects.filter(asset_id__in=request_assets).acount()
    published = await ClaimRecord.objects.filter(
        pk__in=issue_records, status=ClaimStatus.PUBLISHED
    ).acount()
    return filed + published


async def _stream_figures(client: Any, stream: str) -> dict[str, int]:
    """JetStream: messages the stream took vs. those stored in the inbox."""
    if not stream:
        return {}
    from claims.models import InboundMessage

    info = await client.jetstream().stream_info(stream)
    stored = (
        await InboundMessage.objects.filter(stream_sequence__isnull=False)
        .values("stream_sequence")
        .distinct()
        .acount()
    )
    rows = await InboundMessage.objects.filter(stream_sequence__isnull=False).acount()
    return {"in_stream": int(info.state.last_seq), "stored": stored, "rows": rows}


async def _publishing() -> bool:
    from claims.models import ClaimRecord, ClaimStatus

    return await ClaimRecord.objects.filter(status=ClaimStatus.PUBLISHING).aexists()


async def _quiet() -> bool:
    """No message waiting and no claim on its way to the chain."""
    from claims.models import ClaimRecord, ClaimStatus, InboundMessage, MessageOutcome

    pending = await InboundMessage.objects.filter(
        outcome=MessageOutcome.PENDING
    ).aexists()
    moving = await ClaimRecord.objects.filter(
        status__in=[ClaimStatus.ISSUED, ClaimStatus.STORED, ClaimStatus.PUBLISHING]
    ).aexists()
    return not pending and not moving


async def _run(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    import nats
    from asgiref.sync import sync_to_async

    from assets.services import asset_generate

    count = args.count
    env = ctx["env"]
    half = count // 2
    assets = await sync_to_async(asset_generate)(count=count)
    request_half, issue_half = assets[:half], assets[half:]
    await sync_to_async(fund_all)(ctx["rpc_url"], [a.address for a in issue_half])
    watcher = HubWatcher()
    await watcher.start(ctx["nats_url"])
    records = await prepare_requested(issue_half)
    job = await sync_to_async(tso_job)(
        records,
        issuer_key=ctx["issuer_key"],
        issuer_did=ctx["issuer_did"],
        url=ctx["stand_in_url"],
        rpc_url=ctx["rpc_url"],
    )
    request_ids = {a.pk for a in request_half}
    issue_ids = {r.pk for r in records}
    total = len(request_ids) + len(issue_ids)

    first = ListenerProcess(env, "chaos", "--no-reconcile")
    await first.listening()
    client = await nats.connect(ctx["nats_url"])
    # The burst: requests on NATS and the TSO's issues at the same time.
    tso = await start_tso(job)
    for asset in request_half:
        await client.publish(SUBJECT, json.dumps({"did": asset.did}).encode())
    await client.flush()
    burst_sent = time.monotonic()
    kills: list[dict[str, Any]] = []
    running = first
    for kill in range(1, args.kills + 1):
        # Kill once the next share is done (a quarter for one kill) and a claim is
        # on its way to the chain (its write may be in flight), or 30 s passed.
        kill_at = max(1, total * kill // (args.kills + 3))
        if kills:  # and some work done by the restarted listener
            kill_at = max(kill_at, kills[-1]["done"] + 1)
        since = time.monotonic()
        while True:
            if running.process.poll() is not None:
                raise RuntimeError(f"the listener exited; see {running.log_path}")
            if await _progress(request_ids, issue_ids) >= kill_at and (
                await _publishing() or time.monotonic() - since > 30
            ):
                break
            await asyncio.sleep(0.02)
        running.kill9()
        kills.append(
            {
                "after": time.monotonic() - burst_sent,
                "done": await _progress(request_ids, issue_ids),
                "database": await database_figures(),
            }
        )
        running = ListenerProcess(env, "chaos", "--no-reconcile")
        restarted = time.monotonic()
        await running.listening()
    second = running
    statuses = await tso_results(tso)
    issued = sum(1 for s in statuses.values() if s == 201)

    async def finished() -> bool:
        return await _progress(request_ids, issue_ids) >= len(request_ids) + issued

    done_in: float | None = None
    deadline = restarted + args.wait
    while not args.core and time.monotonic() < deadline:
        if await finished() and await _quiet():
            done_in = time.monotonic() - restarted
            break
        await asyncio.sleep(0.1)
    reconcile_output = ""
    if args.core:
        # Wait for the restarted listener to do what it can (the dead one's leased
        # messages come back when their leases run out), then reconcile once.
        quiet_since = None
        while time.monotonic() < deadline:
            if not await _quiet():
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 3:
                break
            await asyncio.sleep(0.2)
        ctx["quiet_after"] = time.monotonic() - restarted
        before_reconcile = await _progress(request_ids, issue_ids)
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "manage.py", "reconcile_claims", "--no-progress"],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        reconcile_output = result.stdout.strip() or result.stderr.strip()[-500:]
        while time.monotonic() < deadline + 120:
            if await _quiet():
                break
            await asyncio.sleep(0.2)
        ctx["before_reconcile"] = before_reconcile
    second.stop()
    stream_figures = await _stream_figures(client, ctx["stream"])
    await client.close()
    await watcher.close()
    from assets.models import Asset
    from claims.models import ClaimRecord, ClaimStatus

    published = await ClaimRecord.objects.filter(
        pk__in=issue_ids, status=ClaimStatus.PUBLISHED
    ).acount()
    filed_assets = (
        await ClaimRecord.objects.filter(asset_id__in=request_ids)
        .values("asset_id")
        .distinct()
        .acount()
    )
    addresses = {
        a.pk: a.address.lower()
        async for a in Asset.objects.filter(pk__in=[a.pk for a in assets])
    }
    writes = await asyncio.to_thread(chain_writes, ctx["rpc_url"], ctx["registry"])
    issue_addresses = {addresses[a.pk] for a in issue_half}
    hub = await claim_requests_per_asset(watcher)
    return {
        "count": count,
        "requests": len(request_ids),
        "issued": issued,
        "tso_statuses": sorted(set(statuses.values())),
        "kills": kills,
        "done_in": done_in,
        "published": published,
        "filed_assets": filed_assets,
        "writes_total": sum(writes.values()),
        "writes_duplicated": sum(n - 1 for n in writes.values() if n > 1),
        "writes_missing": len(issue_addresses - set(writes)),
        "writes_unexpected": len(set(writes) - issue_addresses),
        "hub_duplicates": sum(n - 1 for n in hub["per_asset"].values() if n > 1),
        "hub_assets": len(hub["per_asset"]),
        "hub_unknown": hub["unknown"],
        "final": await database_figures(),
        "stream": stream_figures,
        "reconcile": reconcile_output,
        "errors_first": first.errors()[:5],
        "errors_second": second.errors()[:5],
    }


def _report(args: argparse.Namespace, f: dict[str, Any], ctx: dict[str, Any]) -> int:
    mode = "core NATS" if args.core else f"JetStream stream {ctx['stream']}"
    print(
        f"chaos crash: {f['count']} assets ({f['requests']} requests on NATS, "
        f"{f['issued']} credentials issued by a TSO process: 2 notices each), {mode}",
        flush=True,
    )
    for kill in f["kills"]:
        print(
            f"  killed (SIGKILL) {kill['after']:.1f} s into the burst with "
            f"{kill['done']} of {f['requests'] + f['issued']} done; database then: "
            f"{kill['database']}"
        )
    done = f"{f['done_in']:.1f} s" if f["done_in"] is not None else "NOT within wait"
    if not args.core:
        print(f"  last restart -> everything done and quiet (no reconcile): {done}")
    if args.core:
        print(
            f"  quiet {ctx.get('quiet_after', 0):.1f} s after the restart, with "
            f"{ctx.get('before_reconcile')} done; "
            f"reconcile_claims: {f['reconcile']}"
        )
    print(
        f"  requests filed: {f['filed_assets']}/{f['requests']} assets; credentials "
        f"published: {f['published']}/{f['issued']}"
    )
    print(
        f"  chain: {f['writes_total']} DIDAttributeChanged logs, "
        f"{f['writes_duplicated']} duplicate, {f['writes_missing']} missing, "
        f"{f['writes_unexpected']} for identities without a credential"
    )
    print(
        f"  cache server: claim requests for {f['hub_assets']} assets, "
        f"{f['hub_duplicates']} duplicate, {f['hub_unknown']} unknown to evops"
    )
    if f["stream"]:
        print(
            f"  stream: {f['stream']['in_stream']} messages taken, "
            f"{f['stream']['stored']} of them stored in the inbox, in "
            f"{f['stream']['rows']} rows"
        )
    print(f"  database at the end: {f['final']}")
    for which in ("errors_first", "errors_second"):
        if f[which]:
            print(f"  listener log errors ({which}): {f[which]}")
    final = f["final"]
    failures = []
    if f["writes_duplicated"]:
        failures.append("duplicate chain writes")
    if f["published"] != f["issued"] or f["writes_missing"]:
        failures.append("credentials not published")
    if final.get("claims publishing"):
        failures.append("claims left in publishing")
    if final.get("claims failed") or final.get("messages failed"):
        failures.append("permanent failures")
    if f["hub_duplicates"] or f["hub_unknown"]:
        failures.append("duplicate claim requests at the cache server")
    if not args.core:
        if f["filed_assets"] != f["requests"]:
            failures.append("prequalification requests lost")
        if f["done_in"] is None or f["done_in"] > RESTART_GOAL:
            failures.append(f"not everything done within {RESTART_GOAL:.0f} s")
        if final.get("messages pending"):
            failures.append("messages left pending")
        if f["stream"]["stored"] != f["stream"]["in_stream"]:
            failures.append("stream messages not stored")
        if f["stream"]["rows"] != f["stream"]["stored"]:
            failures.append("stream messages stored twice")
    else:
        print(
            f"  (core mode: {f['requests'] - f['filed_assets']} requests sent while "
            "no listener ran are lost by design)"
        )
    print("  invariants: " + ("all hold" if not failures else "; ".join(failures)))
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--core", action="store_true", help="core NATS, no stream")
    parser.add_argument("--kills", type=int, default=1, help="kill -9, restart")
    parser.add_argument("--wait", type=float, default=180.0, help="after restart")
    parser.add_argument("--time-limit", type=float, default=1200.0)
    args = parser.parse_args(argv)
    time_limit(args.time_limit)

    from evops.protocol.dids import DID
    from evops.protocol.keys import LocalKeySigner
    from evops.sandbox.peers import Anvil, NatsServer

    issuer_key = "0x" + secrets.token_hex(32)
    issuer_did = DID.for_address(LocalKeySigner(issuer_key).address).canonical
    stream = "" if args.core else f"CHAOS_{os.getpid()}"
    with Anvil() as anvil, NatsServer() as nats_server:
        registry = str(anvil.deploy_registry())
        mine(anvil.rpc_url)
        with stand_in_process(
            anvil.rpc_url,
            nats_url=nats_server.url,
            issuer_did=issuer_did,
            latency=0.0,
        ) as stand_in:
            env = listener_env(
                stand_in_url=stand_in.url,
                rpc_url=anvil.rpc_url,
                registry=registry,
                nats_url=nats_server.url,
                NATS_JETSTREAM_STREAM=stream,
                RECONCILE_INTERVAL="0",
            )
            env["DATABASE_URL"] = setup_django(**env)
            ctx = {
                "env": env,
                "rpc_url": anvil.rpc_url,
                "registry": registry,
                "nats_url": nats_server.url,
                "stand_in_url": stand_in.url,
                "issuer_key": issuer_key,
                "issuer_did": issuer_did,
                "stream": stream,
            }
            try:
                figures = asyncio.run(_run(args, ctx))
            finally:
                # Before the peers stop and the database is dropped.
                kill_listeners()
    return _report(args, figures, ctx)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
