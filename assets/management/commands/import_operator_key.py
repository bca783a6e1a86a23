"""Store the relay operator's existing key from a V3 keystore or a one-key hex file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from assets import crypto
from assets.management.commands.import_asset_keys import keystore_password
from assets.models import OperatorAccount
from assets.services import AssetExists, operator_import_key

SEVERAL_OPERATORS = (
    "{count} operator accounts are stored for chain {chain!r}: set "
    "CHAIN_OPERATOR_ADDRESS={address} to relay from this one."
)


def report_stored(command: BaseCommand, operator: OperatorAccount, verb: str) -> None:
    """Print what was stored and what to do next (the address, never the key)."""
    command.stdout.write(
        command.style.SUCCESS(
            f"{verb} operator account {operator.address} on chain "
            f"{operator.chain!r}, key sealed with master key {operator.key_id!r}."
        )
    )
    command.stdout.write(f"Fund {operator.address} so it can pay for relayed writes.")
    count = OperatorAccount.objects.filter(chain=operator.chain).count()
    if count > 1:
        command.stderr.write(
            SEVERAL_OPERATORS.format(
                count=count, chain=operator.chain, address=operator.address
            )
        )


class Command(BaseCommand):
    help = (
        "Import the relay-mode operator key from an Ethereum V3 keystore (password "
        "from --password-file or a prompt) or a file holding one hex private key. "
        "The key is sealed under EVOPS_KEY_ENCRYPTION_KEYS and never shown."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "path", type=Path, help="a V3 keystore JSON file, or a file of one hex key"
        )
        parser.add_argument(
            "--password-file",
            type=Path,
            default=None,
            help="file whose first line is the keystore's password (default: ask on "
            "the terminal; without a terminal this option is required)",
        )
        parser.add_argument(
            "--label", default="", help="a name for the account in the console"
        )
        parser.add_argument(
            "--chain", default=None, help="Chain name (default: that of CHAIN_ID)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        password = keystore_password(options["password_file"])
        if not options["path"].exists():
            raise CommandError(f"{options['path']}: no such file.")
        try:
            operator = operator_import_key(
                path=options["path"],
                password=password,
                label=options["label"],
                chain=options["chain"],
            )
        except (crypto.KeyCustodyError, AssetExists, ValueError) as exc:
            raise CommandError(str(exc)) from None
        report_stored(self, operator, "Imported")
