"""CSV cells that a spreadsheet will not run as formulas (CSV injection).

A cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to
Excel and LibreOffice (`=HYPERLINK(...)` in an asset label would be a live link, or
worse). Both CSV exports, the console's and `manage.py export_assets`, write every
cell through `csv_cell`, which prefixes such a cell with a quote.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """`value` as text, with a leading quote when a spreadsheet would evaluate it."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def csv_row(values: Iterable[Any]) -> list[str]:
    """Every cell of a row through `csv_cell`."""
    return [csv_cell(value) for value in values]
