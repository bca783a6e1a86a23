"""Chaos 2: three listener processes share the work; every effect exactly once.

Run: .venv/bin/python bench/chaos_queue_group.py [--count N] [--jetstream]
     [--listeners 3] [--time-limit S]

Peers of its own (anvil with instant mining and the registry, a private nats-server,
the cache-server stand-in in its own process, whose store keeps the tokens), a
PostgreSQL database of its own, and three real `manage.py run_nats_listener`
processes in one queue group (core NATS, default) or bound to one JetStream durable
consumer (`--jetstream`). About N messages, mixed and sent at once:

- a third: prequalification requests, one per asset, and a tenth of those again
  (duplicates of a request already sent);
- 30 %: credentials issued by a TSO process through the stand-in, each announced by
  two `issue-credential` notices (as the real server sends them);
- the rest: poison (a subject that is not UTF-8, a NUL in the subject, a NUL in the
  claim id, JSON that does not parse, a payload over the size limit, a malformed
  DID, an unknown asset).

Checked on the peers once all is quiet: one claim request per asset at the cache
server, one chain write (`DIDAttributeChanged`) per credential and none other,
every request filed and every credential published, no permanent failure (no failed
claim, no failed message), nothing left pending or in `publishing`. Prints its
figures; exits 1 if an invariant fails, 3 if its time limit is reached.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import secrets
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
    raw_publish,
    start_tso,
    time_limit,
    tso_job,
    tso_results,
)
from pipeline_common import ENV, mine, setup_django, stand_in_process

SUBJECT = "chaos.prequalification.exchange"


def _poison(index: int, known_did: str) -> tuple[bytes, bytes]:
    """The `index`-th poison message (kinds in turn)."""
    exchange = f"issue-credential.claim-exchange.{known_did}.{ENV}".encode()
    kinds: list[tuple[bytes, bytes]] = [
        (b"\xff\xfe.prequalification.exchange", b'{"did":"x"}'),
        (b"nul\x00.prequalification.exchange", b'{"did":"x"}'),
        (exchange, b'{"type":"issue-credential","claimId":"\\u0000poison"}'),
        (SUBJECT.encode(), b"{not json"),
        (SUBJECT.encode(), b'{"did":"' + b"9" * 70000 + b'"}'),
        (SUBJECT.encode(), b'{"did":"did:ethr:volta:0xnothex"}'),
        (
            SUBJECT.encode(),
            b'{"did":"did:ethr:volta:0x000000000000000000000000000000000000dEaD"}',
        ),
    ]
    return kinds[index % len(kinds)]


async def _run(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    import nats
    from asgiref.sync import sync_to_async

    from assets.models import Asset
    from assets.services import asset_generate
    from claims.models import ClaimRecord, ClaimStatus, InboundMessage, MessageOutcome

    count = args.count
    n_requests = round(count * 0.33)
    n_duplicates = round(count * 0.033)
    n_issues = round(count * 0.30)
    n_poison = max(7, count - n_requests - n_duplicates - 2 * n_issues)
    env = ctx["env"]
    assets = await sync_to_async(asset_generate)(count=n_requests + n_issues)
    request_half, issue_half = assets[:n_requests], assets[n_requests:]
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
    rows_before = await InboundMessage.objects.acount()

    mode: tuple[str, ...]
    if args.jetstream:
        mode = ("--jetstream", ctx["stream"], "--durable", "chaos")
    else:
        mode = ("--queue-group", "chaos")
    listeners = [
        ListenerProcess(env, f"chaos-{i}", "--no-reconcile", *mode)
        for i in range(args.listeners)
    ]
    for listener in listeners:
        await listener.listening()

    rng = random.Random(12)
    messages: list[tuple[bytes, bytes]] = [
        (SUBJECT.encode(), json.dumps({"did": a.did}).encode()) for a in request_half
    ]
    messages += [
        (SUBJECT.encode(), json.dumps({"did": a.did}).encode())
        for a in rng.sample(request_half, min(n_duplicates, len(request_half)))
    ]
    messages += [_poison(i, issue_half[0].did) for i in range(n_poison)]
    rng.shuffle(messages)
    client = await nats.connect(ctx["nats_url"])
    tso = await start_tso(job)
    started = time.monotonic()
    for subject, payload in messages:
        try:
            await client.publish(subject.decode("utf-8"), payload)
        except (UnicodeDecodeError, Exception):
            # nats-py refuses such subjects; the server does not.
            await asyncio.to_thread(raw_publish, ctx["nats_url"], [(subject, payload)])
    await client.flush()
    statuses = await tso_results(tso)
    issued = sum(1 for s in statuses.values() if s == 201)

    async def done() -> bool:
        filed = (
            await ClaimRecord.objects.filter(asset_id__in=request_ids)
            .values("asset_id")
            .distinct()
            .acount()
        )
        published = await ClaimRecord.objects.filter(
            pk__in=issue_ids, status=ClaimStatus.PUBLISHED
        ).acount()
        pending = await InboundMessage.objects.filter(
            outcome=MessageOutcome.PENDING
        ).aexists()
        moving = await ClaimRecord.objects.filter(
            status__in=[ClaimStatus.ISSUED, ClaimStatus.STORED, ClaimStatus.PUBLISHING]
        ).aexists()
        return (
            filed >= len(request_ids)
            and published >= issued
            and not pending
            and not moving
        )

    done_in: float | None = None
    while time.monotonic() - started < args.wait:
        if await done():
            done_in = time.monotonic() - started
            break
        await asyncio.sleep(0.2)
    exits = [listener.stop() for listener in listeners]
    await client.close()
    await watcher.close()

    per_listener = collections.Counter(
        {name or "?": n async for name, n in _per_listener(rows_before)}
    )
    filed_assets = (
        await ClaimRecord.objects.filter(asset_id__in=request_ids)
        .values("asset_id")
        .distinct()
        .acount()
    )
    published = await ClaimRecord.objects.filter(
        pk__in=issue_ids, status=ClaimStatus.PUBLISHED
    ).acount()
    addresses = {
        a.pk: a.address.lower()
        async for a in Asset.objects.filter(pk__in=[a.pk for a in assets])
    }
    writes = await asyncio.to_thread(chain_writes, ctx["rpc_url"], ctx["registry"])
    issue_addresses = {addresses[a.pk] for a in issue_half}
    hub = await claim_requests_per_asset(watcher)
    outdated = sum(
        1
        for listener in listeners
        for entry in listener.log_lines()
        if "Claim outdated" in json.dumps(entry)
    )
    return {
        "count": len(messages) + 2 * issued,
        "requests": len(request_ids),
        "duplicates": n_duplicates,
        "poison": n_poison,
        "issued": issued,
        "tso_statuses": sorted(set(statuses.values())),
        "done_in": done_in,
        "filed_assets": filed_assets,
        "published": published,
        "writes_total": sum(writes.values()),
        "writes_duplicated": sum(n - 1 for n in writes.values() if n > 1),
        "writes_missing": len(issue_addresses - set(writes)),
        "writes_unexpected": len(set(writes) - issue_addresses),
        "hub_duplicates": sum(n - 1 for n in hub["per_asset"].values() if n > 1),
        "hub_assets": len(hub["per_asset"]),
        "hub_unknown": hub["unknown"],
        "per_listener": dict(per_listener),
        "final": await database_figures(),
        "reasons": await _reasons(rows_before),
        "exits": exits,
        "outdated": outdated,
        "errors": {
            listener.name: listener.errors()[:3]
            for listener in listeners
            if listener.errors()
        },
    }


async def _per_listener(after_id: int) -> Any:
    from django.db.models import Count

    from claims.models import InboundMessage

    query = (
        InboundMessage.objects.order_by()
        .filter(id__gt=after_id)
        .values("listener")
        .annotate(n=Count("id"))
    )
    async for row in query:
        yield row["listener"], row["n"]


async def _reasons(after_id: int) -> dict[str, int]:
    """Stored messages by outcome and reason (the reason's first words)."""
    from claims.models import InboundMessage

    counts: collections.Counter[str] = collections.Counter()
    async for outcome, reason in InboundMessage.objects.filter(
        id__gt=after_id
    ).values_list("outcome", "reason"):
        counts[f"{outcome}: {re.sub(r'#[0-9]+', '#N', reason)[:50]}"] += 1
    return dict(counts.most_common())


def _report(args: argparse.Namespace, f: dict[str, Any], ctx: dict[str, Any]) -> int:
    mode = (
        f"bound to one JetStream durable (stream {ctx['stream']})"
        if args.jetstream
        else "in one core NATS queue group"
    )
    print(
        f"chaos queue group: {args.listeners} listener processes {mode}; "
        f"{f['count']} messages: {f['requests']} requests + {f['duplicates']} "
        f"duplicates, {f['issued']} credentials x 2 notices, {f['poison']} poison",
        flush=True,
    )
    done = f"{f['done_in']:.1f} s" if f["done_in"] is not None else "NOT within wait"
    print(f"  burst start -> all done and quiet: {done}")
    print(f"  stored messages per listener: {f['per_listener']}")
    print(
        f"  requests filed: {f['filed_assets']}/{f['requests']} assets; credentials "
        f"published: {f['published']}/{f['issued']} (TSO statuses "
        f"{f['tso_statuses']})"
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
    print(f"  'Claim outdated' in the listeners' logs: {f['outdated']} lines")
    print(f"  database at the end: {f['final']}")
    for reason, n in f["reasons"].items():
        print(f"    {n:6d}  {reason}")
    print(f"  listener exit codes: {f['exits']}")
    if f["errors"]:
        print(f"  listener log errors: {f['errors']}")
    final = f["final"]
    failures = []
    if f["writes_duplicated"] or f["writes_unexpected"]:
        failures.append("a chain write more than once")
    if f["published"] != f["issued"] or f["writes_missing"]:
        failures.append("credentials not published")
    if f["filed_assets"] != f["requests"]:
        failures.append("requests not filed")
    if f["hub_duplicates"] or f["hub_unknown"]:
        failures.append("a claim request more than once at the cache server")
    if final.get("claims failed") or final.get("messages failed"):
        failures.append("permanent failures")
    if final.get("messages pending") or final.get("claims publishing"):
        failures.append("work left pending")
    if f["done_in"] is None:
        failures.append("not done within the wait")
    if any(code != 0 for code in f["exits"]):
        failures.append("a listener did not stop cleanly")
    print("  invariants: " + ("all hold" if not failures else "; ".join(failures)))
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--listeners", type=int, default=3)
    parser.add_argument("--jetstream", action="store_true")
    parser.add_argument("--wait", type=float, default=600.0, help="for all done")
    parser.add_argument("--time-limit", type=float, default=1500.0)
    args = parser.parse_args(argv)
    time_limit(args.time_limit)

    from evops.protocol.dids import DID
    from evops.protocol.keys import LocalKeySigner
    from evops.sandbox.peers import Anvil, NatsServer

    issuer_key = "0x" + secrets.token_hex(32)
    issuer_did = DID.for_address(LocalKeySigner(issuer_key).address).canonical
    stream = f"CHAOS_{os.getpid()}"
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
