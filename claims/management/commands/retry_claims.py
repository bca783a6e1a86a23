"""`manage.py retry_claims [--status failed] [--asset DID] [--claim ID]`: staff retry.

Uses the same `claim_retry` service as the console, then carries the claims on at
once (the listener would pick them up too; the CAS makes that race harmless).
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from claims import failures, inbox, pipeline, selectors
from claims.integrations import Integrations, integrations_from_settings
from claims.models import Actor, ClaimStatus, staff_actor
from evops.protocol.errors import DIDError


class Command(BaseCommand):
    help = "Retry failed claims through the same service the console uses."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--status",
            action="append",
            default=[],
            choices=[ClaimStatus.FAILED],
            help=f"claims in this status, one of {ClaimStatus.FAILED} (default: "
            f"{ClaimStatus.FAILED})",
        )
        parser.add_argument(
            "--asset",
            action="append",
            default=[],
            metavar="DID",
            help="only this asset's claims (repeatable)",
        )
        parser.add_argument(
            "--claim",
            action="append",
            default=[],
            metavar="ID",
            help="only this claim, by its cache-server id (repeatable)",
        )
        parser.add_argument("--user", default="", help="Staff username to record.")
        parser.add_argument(
            "--requests",
            action="store_true",
            help="Also hand failed prequalification requests (inbound messages that "
            "gave up) back to the listener, which files them again.",
        )
        parser.add_argument(
            "--schedule-only",
            action="store_true",
            help="Only mark them due; let the running listener publish.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = None
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"No user {options['user']!r}.")
        actor = staff_actor(user)
        if user is None:
            actor = Actor(actor.kind, "retry_claims")
        try:
            records = selectors.claims_for_retry(
                statuses=options["status"] or [ClaimStatus.FAILED],
                asset_dids=options["asset"],
                claim_ids=options["claim"],
            )
        except DIDError as exc:
            raise CommandError(f"--asset: {exc}") from None
        retried = [r.pk for r in records if failures.claim_retry(record=r, actor=actor)]
        self.stdout.write(f"{len(retried)} of {len(records)} claims scheduled again")
        if options["requests"]:
            count = inbox.inbound_requeue_requests(asset_dids=options["asset"])
            self.stdout.write(f"{count} failed prequalification requests requeued")
        if options["schedule_only"] or not retried:
            return
        statuses = asyncio.run(self._run(retried, actor, self.integrations()))
        for status in sorted(set(statuses)):
            self.stdout.write(f"  {statuses.count(status)} {status or 'busy'}")

    def integrations(self) -> Integrations:
        return integrations_from_settings()

    async def _run(
        self, record_ids: list[int], actor: Actor, integrations: Integrations
    ) -> list[str]:
        try:
            return list(
                await asyncio.gather(
                    *(
                        pipeline.claim_process_due(
                            record_id=pk, integrations=integrations, actor=actor
                        )
                        for pk in record_ids
                    )
                )
            )
        finally:
            await integrations.aclose()
