"""`manage.py sandbox_play`: play the EV dashboard and the TSO against the sandbox.

For some demo assets without a claim it publishes the dashboard's NATS message
`dashboard.prequalification.exchange` `{"did": ...}`; the listener files each claim
request on the cache-server stand-in. Then, acting as the TSO, it issues each
requested claim through the stand-in's issuer endpoint, which publishes the
`issue-credential` message; the listener stores and publishes the credential. Watch
the dashboard: the claims move requested → issued → stored → published, live. It
waits for each claim to settle and prints its final state. When every demo asset has
a claim already, `--fresh` makes new demo assets (funded on the sandbox chain) to play
with.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from evops.management.commands.sandbox import (
    DEMO_BALANCE_WEI,
    DEMO_LABEL,
    STATE_FILE,
    apply_environment,
)

NO_SANDBOX = "No sandbox is running (start `manage.py sandbox` first)."
ALL_CLAIMED = (
    "Every demo asset has a claim already: pass --fresh to make new demo assets."
)
FINAL_STATES = ("published", "rejected", "failed")
PREQUALIFICATION_SUBJECT = "dashboard.prequalification.exchange"


class Command(BaseCommand):
    help = "Ask prequalification for some demo assets, then issue them as the TSO."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--count",
            type=int,
            default=3,
            help="demo assets to ask prequalification for (default: 3)",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=60.0,
            help="seconds to wait for the claims to settle (default: 60)",
        )
        parser.add_argument(
            "--reject",
            type=int,
            default=0,
            help="reject this many of the claims instead of issuing them (default: 0)",
        )
        parser.add_argument(
            "--fresh",
            action="store_true",
            help="make --count new demo assets (funded on the sandbox chain) and play "
            "with those, instead of the demo assets without a claim",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("sandbox_play runs only with DEBUG=true.")
        if not STATE_FILE.exists():
            raise CommandError(NO_SANDBOX)
        state = json.loads(STATE_FILE.read_text(encoding="utf-8"))
        apply_environment(state["env"])
        from assets.models import Asset
        from claims.models import ClaimRecord, ClaimStatus

        if options["fresh"]:
            assets = self._new_assets(state, options["count"])
        else:
            assets = list(
                Asset.objects.filter(
                    label__startswith=DEMO_LABEL, claims__isnull=True
                ).order_by("id")[: options["count"]]
            )
        if not assets:
            raise CommandError(ALL_CLAIMED)
        asyncio.run(self._ask(state["env"]["NATS_URL"], [a.did for a in assets]))
        self.stdout.write(f"asked prequalification for {len(assets)} assets")

        deadline = time.monotonic() + options["timeout"]
        records: list[ClaimRecord] = []
        while time.monotonic() < deadline:
            records = list(
                ClaimRecord.objects.filter(
                    asset__in=assets, status=ClaimStatus.REQUESTED
                ).select_related("asset")
            )
            if len(records) == len(assets):
                break
            time.sleep(0.5)
        if not records:
            raise CommandError(
                "No claim request was filed in time: is the listener running?"
            )
        statuses = asyncio.run(self._issue(state, records, options["reject"]))
        for record, status in zip(records, statuses, strict=True):
            self.stdout.write(f"  {record.asset.did} claim {record.claim_id}: {status}")
        self.stdout.write("waiting for the claims to settle...")
        deadline = time.monotonic() + options["timeout"]
        pending = {record.pk for record in records}
        final: dict[int, str] = {}
        while pending and time.monotonic() < deadline:
            for pk, status in ClaimRecord.objects.filter(pk__in=pending).values_list(
                "pk", "status"
            ):
                if status in FINAL_STATES:
                    final[pk] = str(status)
                    pending.discard(pk)
            if pending:
                time.sleep(0.5)
        for record in records:
            record.refresh_from_db()
            error = f" ({record.last_error})" if record.last_error else ""
            settled = "" if record.pk in final else " (still moving at the timeout)"
            self.stdout.write(
                f"  {record.asset.did} claim {record.claim_id}: final state "
                f"{record.status}{error}{settled}"
            )

    def _new_assets(self, state: dict[str, Any], count: int) -> list[Any]:
        from assets import services
        from evops.sandbox.peers import fund

        assets = services.asset_generate(count=count, label_prefix=DEMO_LABEL)
        for asset in assets:
            fund(state["env"]["CHAIN_RPC_URL"], asset.address, DEMO_BALANCE_WEI)
        self.stdout.write(f"made {len(assets)} new demo asset(s)")
        return assets

    async def _ask(self, nats_url: str, dids: list[str]) -> None:
        import nats

        connection = await nats.connect(nats_url, connect_timeout=5)
        try:
            for did in dids:
                payload = json.dumps({"did": did}).encode()
                await connection.publish(PREQUALIFICATION_SUBJECT, payload)
            await connection.flush(timeout=5)
        finally:
            await connection.drain()

    async def _issue(
        self, state: dict[str, Any], records: list[Any], reject: int
    ) -> list[str]:
        from evops.integrations.chain import chain_from_settings
        from evops.protocol.jwt import issued_token
        from evops.protocol.keys import LocalKeySigner
        from evops.sandbox.cache_server import issue_claim

        issuer = LocalKeySigner(bytes.fromhex(state["issuer_key"]))
        chain = chain_from_settings(read_only=True)
        try:
            block = await chain.block_number()
        finally:
            await chain.aclose()
        results = []
        for index, record in enumerate(records):
            token = issued_token(
                issuer,
                issuer_did=state["issuer_did"],
                subject=record.asset.did,
                claim_data={"claimType": state["role"], "claimTypeVersion": 1},
            )
            status = await issue_claim(
                state["env"]["CACHE_SERVER_URL"],
                issuer,
                issuer_did=state["issuer_did"],
                claim_id=record.claim_id,
                requester=record.asset.did,
                issued_token=token,
                block_number=block,
                reject=index < reject,
                rejection_reason="sandbox: not eligible",
            )
            verb = "rejected" if index < reject else "issued"
            results.append(f"{verb} (HTTP {status})")
        return results
