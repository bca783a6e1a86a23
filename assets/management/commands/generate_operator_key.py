"""Create the relay operator account with a fresh key; print the address to fund."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from assets import crypto
from assets.management.commands.import_operator_key import report_stored
from assets.services import AssetExists, operator_generate


class Command(BaseCommand):
    help = (
        "Generate the relay-mode operator account (the one that sends relayed DID "
        "writes and pays their gas). Its key is sealed under EVOPS_KEY_ENCRYPTION_KEYS "
        "and never shown; fund the printed address."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--label", default="", help="a name for the account in the console"
        )
        parser.add_argument(
            "--chain", default=None, help="Chain name (default: that of CHAIN_ID)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            operator = operator_generate(label=options["label"], chain=options["chain"])
        except (crypto.KeyCustodyError, AssetExists, ValueError) as exc:
            raise CommandError(str(exc)) from None
        report_stored(self, operator, "Generated")
