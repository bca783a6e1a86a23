"""Create assets with fresh random keys: sealed under the current master key, or
made inside the PKCS#11 token (`--backend pkcs11`, default `SIGNER_BACKEND`)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from assets import crypto
from assets.management.commands.import_asset_keys import default_asset_chain
from assets.management.progress import tqdm_progress
from assets.models import AssetKind, SignerBackend
from assets.services import asset_generate


class Command(BaseCommand):
    help = (
        "Generate N assets with new private keys (encrypted at rest, or made inside "
        "the PKCS#11 token with --backend pkcs11)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--count", type=int, required=True, help="how many assets to create"
        )
        parser.add_argument(
            "--kind",
            choices=AssetKind.values,
            default=AssetKind.OTHER,
            help=f"asset kind, one of {', '.join(AssetKind.values)} "
            f"(default: {AssetKind.OTHER})",
        )
        parser.add_argument(
            "--label-prefix",
            default="",
            help="labels are this prefix and a running number (default: none)",
        )
        parser.add_argument(
            "--chain",
            default=None,
            help="DID chain name, e.g. volta or ewc (default: CHAIN_ID's chain)",
        )
        parser.add_argument(
            "--backend",
            choices=SignerBackend.values,
            default=None,
            help="where the keys are made: local (sealed in the database) or pkcs11 "
            "(generated inside the token) (default: SIGNER_BACKEND)",
        )
        parser.add_argument(
            "--no-progress", action="store_true", help="no progress bar on stderr"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["count"] < 1:
            raise CommandError("--count must be at least 1.")
        backend = options["backend"] or settings.SIGNER_BACKEND
        try:
            assets = asset_generate(
                count=options["count"],
                kind=options["kind"],
                label_prefix=options["label_prefix"],
                chain=options["chain"] or default_asset_chain(),
                backend=backend,
                progress=tqdm_progress(self.stderr, enabled=not options["no_progress"]),
            )
        except crypto.KeyCustodyError as exc:
            raise CommandError(str(exc)) from None
        where = (
            f"made in PKCS#11 token {assets[0].token_label!r}"
            if backend == SignerBackend.PKCS11
            else f"sealed with master key {crypto.current_key_id()!r}"
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"Generated {len(assets)} {options['kind']} asset(s), keys {where}: "
                f"{assets[0].did} .. {assets[-1].did}"
            )
        )
