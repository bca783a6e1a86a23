"""Move locally sealed asset keys into the PKCS#11 token, all or nothing."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from assets import crypto
from assets.management.progress import tqdm_progress
from assets.services import assets_move_keys_to_token


class Command(BaseCommand):
    help = (
        "Store every locally sealed asset key (or those of --asset DID) in the "
        "PKCS#11 token as a sensitive, non-extractable key, check each by signing "
        "with the token, then switch the assets to the token and delete their sealed "
        "keys. All or nothing: on any failure the keys created in the token are "
        "removed and no asset changes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--asset",
            action="append",
            default=[],
            metavar="DID",
            dest="dids",
            help="move only this asset's key (repeatable; default: every sealed key)",
        )
        parser.add_argument(
            "--no-progress", action="store_true", help="no progress bar on stderr"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = assets_move_keys_to_token(
                dids=options["dids"],
                progress=tqdm_progress(self.stderr, enabled=not options["no_progress"]),
            )
        except crypto.KeyCustodyError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            self.style.SUCCESS(
                f"Moved {report.moved} asset key(s) into PKCS#11 token "
                f"{report.token!r}; their sealed copies are deleted."
            )
        )
