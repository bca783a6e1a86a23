"""Print a fresh master key entry for EVOPS_KEY_ENCRYPTION_KEYS."""

from __future__ import annotations

import base64
import re
import secrets
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class Command(BaseCommand):
    help = (
        "Print a new 'id:base64' AES-256 key for EVOPS_KEY_ENCRYPTION_KEYS. To rotate, "
        "put it first in the list, keep the old keys after it, and run "
        "rotate_encryption_key."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--id", dest="key_id", default=None, help="key id (default k<YYYYMMDD>)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        key_id = options["key_id"] or f"k{timezone.now():%Y%m%d}"
        if not _KEY_ID.match(key_id):
            raise CommandError("--id must be 1-32 letters, digits, '-' or '_'.")
        material = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        self.stdout.write(f"{key_id}:{material}")
