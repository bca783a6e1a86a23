"""Benchmark of the console pages: asset list, claim list and dashboard at scale.

Run from the project root:
`.venv/bin/python bench/admin.py [--assets 10000] [--claims 100000] [--runs 5]`.

Creates (and afterwards drops) a PostgreSQL database `evops_bench_admin` on the
server of DATABASE_URL (default 127.0.0.1:5432), fills it with `--assets` assets,
`--claims` claims across every status and one history event per claim, then renders
each page through Django's test client as a superuser. Prints the median time and
the query count of each page, and the query count again with a tenth of the rows:
the goal is under 300 ms per page with a query count that does not grow with rows.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAGES = {
    "asset list": "/admin/assets/asset/",
    "asset list, not prequalified": "/admin/assets/asset/?prequalification=failed",
    "asset list, never requested": "/admin/assets/asset/?prequalification=none",
    "claim list": "/admin/claims/claimrecord/",
    "claim list, failed filter": "/admin/claims/claimrecord/?status__exact=failed",
    "claim list, failed in 24 h": "/admin/claims/claimrecord/?failed_since=24h",
    "claim search, label": "/admin/claims/claimrecord/?q=bench-77",
    "claim search, claim id": "/admin/claims/claimrecord/?q={claim_id}",
    "claim search, tx hash": "/admin/claims/claimrecord/?q={tx_hash}",
    "claim search, CID": "/admin/claims/claimrecord/?q={cid}",
    "claim search, DID": "/admin/claims/claimrecord/?q={did}",
    "inbox": "/admin/claims/inboundmessage/",
    "dashboard (charts)": "/admin/",
}


def _configure() -> None:
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/evops")
    os.environ["DATABASE_URL"] = base.rsplit("/", 1)[0] + "/evops_bench_admin"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evops.settings_test")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("CHAIN_RPC_URL", "http://127.0.0.1:9")


def _fill(assets: int, claims: int) -> None:
    from datetime import timedelta

    from django.db import connection
    from django.utils import timezone

    from assets.models import Asset, AssetKind
    from claims.models import (
        ClaimEvent,
        ClaimRecord,
        ClaimStatus,
        InboundMessage,
        MessageKind,
        MessageOutcome,
    )
    from evops.protocol.dids import DID

    kinds = list(AssetKind.values)
    statuses = list(ClaimStatus.values)
    batch = []
    for number in range(assets):
        address = DID.for_address("0x" + secrets.token_hex(20)).address
        batch.append(
            Asset(
                did=f"did:ethr:volta:{address}",
                address=address,
                kind=kinds[number % len(kinds)],
                label=f"bench-{number}",
            )
        )
    Asset.objects.bulk_create(batch, batch_size=5000)
    ids = list(Asset.objects.values_list("id", flat=True))
    step = 10_000
    prefix = secrets.token_hex(3)
    now = timezone.now()
    for start in range(0, claims, step):
        records = [
            ClaimRecord(
                asset_id=ids[n % len(ids)],
                claim_id=f"claim-{prefix}-{n}",
                role="prequalified.roles.tso.apps.bench.iam.ewc",
                status=statuses[n % len(statuses)],
                last_error="ChainError: timeout" if n % 7 == 6 else "",
                cid=f"Qm{prefix}{n:040d}",
                tx_hash=f"0x{prefix}{n:058x}",
                issued_at=now - timedelta(minutes=n % 1440),
                published_at=now
                - timedelta(minutes=n % 1440)
                + timedelta(seconds=n % 90),
            )
            for n in range(start, min(claims, start + step))
        ]
        created = ClaimRecord.objects.bulk_create(records, batch_size=step)
        ClaimEvent.objects.bulk_create(
            [
                ClaimEvent(
                    record_id=r.pk,
                    kind=r.status,
                    to_status=r.status,
                    actor="system",
                )
                for r in created
            ],
            batch_size=step,
        )
        # The dashboard's charts read the last 24 h: spread the events over it.
        ClaimEvent.objects.filter(record_id__in=[r.pk for r in created]).update(
            at=now - timedelta(minutes=start // step * 7 % 1440)
        )
        InboundMessage.objects.bulk_create(
            [
                InboundMessage(
                    subject="evops.bench",
                    payload="{}",
                    dedupe_key=f"{prefix}{r.pk}",
                    kind=MessageKind.ISSUE,
                    outcome=MessageOutcome.PROCESSED,
                    claim_id=r.claim_id,
                    record_id=r.pk if r.pk % 3 else None,
                )
                for r in created[: step // 10]
            ],
            batch_size=step,
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def _measure(client: object, url: str, runs: int) -> tuple[float, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times, queries = [], 0
    for _ in range(runs + 1):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(url)  # type: ignore[attr-defined]
            elapsed = time.perf_counter() - started
        assert response.status_code == 200, (url, response.status_code)
        times.append(elapsed)
        queries = len(captured.captured_queries)
    return statistics.median(times[1:]) * 1000, queries


def _measure_export(client: object, claims: int) -> None:
    """CSV export of every claim (select all): first byte, whole body, history."""
    from claims.models import ClaimEvent, ClaimRecord

    first_pk = ClaimRecord.objects.order_by("id").values_list("pk", flat=True)[0]
    before = ClaimEvent.objects.filter(kind="exported").count()
    started = time.perf_counter()
    response = client.post(  # type: ignore[attr-defined]
        "/admin/claims/claimrecord/",
        {
            "action": "export_csv",
            "select_across": "1",
            "index": 0,
            "_selected_action": [str(first_pk)],
        },
    )
    assert response.status_code == 200, response.status_code
    stream = iter(response.streaming_content)
    size = len(next(stream))
    first_byte = time.perf_counter() - started
    for part in stream:
        size += len(part)
    whole = time.perf_counter() - started
    noted = ClaimEvent.objects.filter(kind="exported").count() - before
    flag = "" if first_byte < 1 and noted == claims else "  <-- goal"
    print(
        f"\nCSV export of {claims} claims: first byte {first_byte * 1000:.0f} ms, "
        f"all {size / 1e6:.1f} MB in {whole:.1f} s, {noted} 'exported' events "
        f"written while streaming (goal: first byte < 1 s, every claim noted){flag}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", type=int, default=10_000)
    parser.add_argument("--claims", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    _configure()

    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment

    from claims.models import ClaimRecord

    settings.ALLOWED_HOSTS = ["testserver"]
    setup_test_environment()
    creation = connection.creation
    name = creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        sys.path.insert(0, str(ROOT / "bench"))
        from pipeline_common import machine_line

        print(machine_line())
        print(f"database {name}: filling {args.assets} assets, {args.claims} claims")
        started = time.perf_counter()
        _fill(args.assets // 10, args.claims // 10)
        user = User.objects.create_superuser("bench", password="bench-password")
        client = Client()
        client.force_login(user)
        first = ClaimRecord.objects.select_related("asset").order_by("id").first()
        assert first is not None
        small_ids = {
            "claim_id": first.claim_id,
            "tx_hash": first.tx_hash,
            "cid": first.cid,
            "did": first.asset.did,
        }
        small = {
            label: _measure(client, url.format(**small_ids), 1)[1]
            for label, url in PAGES.items()
        }
        _fill(args.assets - args.assets // 10, args.claims - args.claims // 10)
        print(f"filled in {time.perf_counter() - started:.1f} s\n")
        sample = ClaimRecord.objects.select_related("asset").order_by("id")[
            args.claims // 2
        ]
        ids = {
            "claim_id": sample.claim_id,
            "tx_hash": sample.tx_hash,
            "cid": sample.cid,
            "did": sample.asset.did,
        }
        print(f"{'page':30} {'median ms':>10} {'queries':>8} {'at 1/10':>8}")
        for label, template in PAGES.items():
            url = template.format(**ids)
            median, queries = _measure(client, url, args.runs)
            flag = "" if median < 300 and queries == small[label] else "  <-- goal"
            print(f"{label:30} {median:10.1f} {queries:8d} {small[label]:8d}{flag}")
        _measure_export(client, args.claims)
    finally:
        creation.destroy_test_db(name, verbosity=0)


if __name__ == "__main__":
    main()
