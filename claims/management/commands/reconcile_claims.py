"""`manage.py reconcile_claims [--asset DID ...]`: publish what is missing, once."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from claims import reconcile, selectors
from claims.integrations import Integrations, integrations_from_settings
from claims.models import RECONCILER
from evops.protocol.errors import DIDError


class Command(BaseCommand):
    help = (
        "Compare each asset's accepted claims on the cache server with its DID "
        "document on chain and publish what is missing (never twice)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--asset",
            action="append",
            default=[],
            metavar="DID",
            help="reconcile this asset only (repeatable; default: every active asset)",
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="assets at once (default: RECONCILE_CONCURRENCY)",
        )
        parser.add_argument(
            "--no-progress", action="store_true", help="no progress bar on stderr"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            assets = selectors.assets_for_reconciliation(options["asset"] or None)
        except DIDError as exc:
            raise CommandError(f"--asset: {exc}") from None
        if options["asset"] and len(assets) != len(set(options["asset"])):
            raise CommandError("Some --asset DIDs are not known assets.")
        concurrency = options["concurrency"] or settings.RECONCILE_CONCURRENCY
        bar = tqdm(
            total=len(assets),
            unit="asset",
            disable=options["no_progress"],
            file=sys.stderr,
        )
        try:
            result = asyncio.run(
                self._run(assets, concurrency, bar.update, self.integrations())
            )
        finally:
            bar.close()
        self.stdout.write(
            f"{result.assets} assets: {result.published} published, "
            f"{result.already_present} already on chain, {result.rejected} "
            f"rejected, {result.pending} pending, {len(result.errors)} errors"
        )
        for error in result.errors[:20]:
            self.stderr.write(error)

    def integrations(self) -> Integrations:
        return integrations_from_settings()

    async def _run(
        self, assets: Any, concurrency: int, progress: Any, integrations: Integrations
    ) -> reconcile.ReconcileResult:
        try:
            return await reconcile.reconcile_assets(
                assets=assets,
                integrations=integrations,
                actor=RECONCILER,
                concurrency=concurrency,
                progress=progress,
            )
        finally:
            await integrations.aclose()
