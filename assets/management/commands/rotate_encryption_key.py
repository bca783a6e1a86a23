"""Re-encrypt every asset and operator key under the first key of the setting."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from assets import crypto
from assets.management.progress import tqdm_progress
from assets.services import asset_rotate_encryption_keys


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored asset and operator key under the first key listed in "
        "EVOPS_KEY_ENCRYPTION_KEYS, verifying each; all or nothing. Afterwards the "
        "older keys can be removed from the setting."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-progress", action="store_true", help="no progress bar on stderr"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = asset_rotate_encryption_keys(
                progress=tqdm_progress(self.stderr, enabled=not options["no_progress"])
            )
        except crypto.KeyCustodyError as exc:
            raise CommandError(str(exc)) from None
        previous = ", ".join(
            f"{key_id}: {count}"
            for key_id, count in sorted(report.by_previous_key.items())
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"Re-encrypted {report.total + report.operators} key(s) under master "
                f"key {report.key_id!r} ({report.total} asset, {report.operators} "
                "operator" + (f"; were sealed with {previous})." if previous else ").")
            )
        )
