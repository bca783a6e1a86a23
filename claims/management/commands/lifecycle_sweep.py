"""`manage.py lifecycle_sweep`: one pass of the credential lifecycle, with progress.

The same sweep the listener runs every `LIFECYCLE_INTERVAL` seconds
(`claims.lifecycle.lifecycle_sweep`): renewals inside the window, expiry, the status
lists and the on-chain revocation registry, superseded records, and the removal of
every ended credential's service entry. Safe to run beside a listener: each move is
a compare-and-set, so nothing is done twice.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from tqdm import tqdm

from claims import lifecycle
from claims.integrations import Integrations, integrations_from_settings
from claims.models import LIFECYCLE


class Command(BaseCommand):
    help = (
        "Renew credentials inside the renewal window, mark expired and revoked ones "
        "and remove their service entries from the DID documents (one pass)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-progress", action="store_true", help="no progress bar on stderr"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        bars: dict[str, tqdm[Any]] = {}
        quiet = options["no_progress"]

        def totals(phase: str, count: int) -> None:
            bars[phase] = tqdm(
                total=count, desc=phase, unit="claim", disable=quiet, file=sys.stderr
            )

        def progress(phase: str, count: int) -> None:
            if phase in bars:
                bars[phase].update(count)

        try:
            result = asyncio.run(self._run(self.integrations(), progress, totals))
        finally:
            for bar in bars.values():
                bar.close()
        self.stdout.write(
            f"{result.checked} checked: {result.renewals} renewals filed, "
            f"{result.expired} expired, {result.revoked} revoked, "
            f"{result.superseded} superseded, {result.removed} entries removed, "
            f"{len(result.errors)} errors"
        )
        for error in result.errors[:20]:
            self.stderr.write(error)

    def integrations(self) -> Integrations:
        return integrations_from_settings()

    async def _run(
        self, integrations: Integrations, progress: Any, totals: Any
    ) -> lifecycle.SweepResult:
        config = lifecycle.lifecycle_from_settings(integrations)
        try:
            return await lifecycle.lifecycle_sweep(
                integrations=integrations,
                config=config,
                actor=LIFECYCLE,
                progress=progress,
                totals=totals,
            )
        finally:
            await config.aclose()
            await integrations.aclose()
