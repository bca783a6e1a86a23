"""Write every asset's DID, address, kind, external id and label as CSV (no keys)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandParser

from assets.selectors import EXPORT_COLUMNS, asset_export_rows
from evops.csvsafe import csv_row


class Command(BaseCommand):
    help = (
        "Export assets as CSV (did,address,kind,external_id,label) for registering "
        "devices elsewhere. Never includes keys. A cell a spreadsheet would run as a "
        "formula (starting with =, +, -, @, tab or CR) is written with a leading '."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--output", type=Path, default=None, help="file to write (default stdout)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        output: Path | None = options["output"]
        if output is None:
            count = self._write(self.stdout)
            return
        with output.open("w", newline="", encoding="utf-8") as handle:
            count = self._write(handle)
        self.stderr.write(self.style.SUCCESS(f"Exported {count} asset(s) to {output}."))

    def _write(self, stream: TextIO | Any) -> int:
        target = getattr(stream, "_out", stream)
        writer = csv.writer(target, lineterminator="\n")
        writer.writerow(EXPORT_COLUMNS)
        count = 0
        for row in asset_export_rows():
            writer.writerow(csv_row(row))
            count += 1
        return count
