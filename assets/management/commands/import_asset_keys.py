"""Import asset keys from keymanager.db, keystore JSON or CSV files."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from assets import crypto
from assets.importers import FORMATS
from assets.management.progress import tqdm_progress
from assets.models import AssetKind
from assets.services import ImportRejected, asset_import_keys
from evops.protocol.dids import chain_name_for
from evops.protocol.errors import DIDError

ERR_UNREADABLE_FILE = "Cannot read --password-file: {reason}."
ERR_NO_TERMINAL = (
    "A keystore needs its password and there is no terminal to ask on: pass "
    "--password-file FILE (the password on its first line)."
)
ERR_EMPTY = "{paths}: no keys found; nothing was imported."
ERR_NO_CHAIN_NAME = (
    "CHAIN_ID {chain_id} has no DID chain name (volta, ewc); pass --chain NAME."
)
ERR_REJECTED = (
    "{count} invalid entr{plural}; nothing was imported. Fix them, or pass "
    "--skip-invalid to import the rest."
)


def keystore_password(password_file: Path | None) -> str | Callable[[], str]:
    """The password read from `password_file`, or a prompt for it.

    The prompt is a callable so that it is only shown when a keystore is actually
    met. The file's trailing newline (editors add one) is not part of the password.
    Shared with import_operator_key.
    """
    if password_file is None:
        return _prompt

    try:
        text = password_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise CommandError(ERR_UNREADABLE_FILE.format(reason=reason)) from None
    return text.rstrip("\r\n")


def _prompt() -> str:
    # Without a terminal getpass would read stdin (or end in EOFError): refuse instead.
    if not sys.stdin or not sys.stdin.isatty():
        raise CommandError(ERR_NO_TERMINAL)
    try:
        return getpass.getpass("Keystore password: ")
    except EOFError:
        raise CommandError(ERR_NO_TERMINAL) from None


def default_asset_chain() -> str:
    """The DID chain name of CHAIN_ID (what new DIDs are made on by default)."""
    from django.conf import settings

    try:
        return chain_name_for(int(settings.CHAIN_ID))
    except DIDError:
        raise CommandError(
            ERR_NO_CHAIN_NAME.format(chain_id=settings.CHAIN_ID)
        ) from None


class Command(BaseCommand):
    help = (
        "Import private keys as assets from the Node tool's keymanager.db, Ethereum "
        "keystore JSON files (or directories of them) or CSV/text files of hex keys. "
        "Keys already present are skipped; any invalid entry stops the whole import "
        "unless --skip-invalid is given."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "paths",
            nargs="+",
            type=Path,
            help="keymanager.db, keystore JSON files or directories of them, or "
            "CSV/text files of hex keys",
        )
        parser.add_argument(
            "--format",
            choices=FORMATS,
            default=None,
            help=f"input format, one of {', '.join(FORMATS)} (default: from each "
            "file's content)",
        )
        parser.add_argument(
            "--password-file",
            type=Path,
            default=None,
            help="file whose first line is the keystores' password (default: ask "
            "on the terminal; without a terminal this option is required)",
        )
        parser.add_argument(
            "--skip-invalid",
            action="store_true",
            help="import the valid entries and report the invalid ones, instead of "
            "importing nothing",
        )
        parser.add_argument(
            "--kind",
            choices=AssetKind.values,
            default=AssetKind.OTHER,
            help=f"asset kind for entries without one, one of "
            f"{', '.join(AssetKind.values)} (default: {AssetKind.OTHER})",
        )
        parser.add_argument(
            "--chain",
            default=None,
            help="DID chain name of the new assets, e.g. volta or ewc (default: "
            "CHAIN_ID's chain)",
        )
        parser.add_argument(
            "--no-progress", action="store_true", help="no progress bar on stderr"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        password = keystore_password(options["password_file"])
        for path in options["paths"]:
            if not path.exists():
                raise CommandError(f"{path}: no such file or directory.")
        try:
            report = asset_import_keys(
                paths=options["paths"],
                format=options["format"],
                password=password,
                skip_invalid=options["skip_invalid"],
                kind=options["kind"],
                chain=options["chain"] or default_asset_chain(),
                progress=tqdm_progress(self.stderr, enabled=not options["no_progress"]),
            )
        except ImportRejected as exc:
            for problem in exc.report.problems:
                self.stderr.write(str(problem))
            count = len(exc.report.problems)
            raise CommandError(
                ERR_REJECTED.format(count=count, plural="y" if count == 1 else "ies")
            ) from None
        except (crypto.KeyCustodyError, DIDError) as exc:
            raise CommandError(str(exc)) from None
        if report.entries == 0:
            raise CommandError(
                ERR_EMPTY.format(paths=", ".join(str(p) for p in options["paths"]))
            )
        for problem in report.problems:
            self.stderr.write(f"skipped invalid: {problem}")
        self.stdout.write(
            self.style.SUCCESS(
                f"Imported {report.created} asset(s); skipped {report.skipped} "
                f"already present or repeated; {len(report.problems)} invalid "
                f"(of {report.entries} entries). Keys sealed with master key "
                f"{crypto.current_key_id()!r}."
            )
        )
