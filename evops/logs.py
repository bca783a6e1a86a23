"""Structured log output.

`JsonFormatter` writes one JSON object per line with the record's context fields
(`asset_did`, `claim_id`, `subject`, `tx_hash`, ... passed through `extra=`), so a
log pipeline can index them. Nothing here ever sees key material: signers never log.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

# Attributes every LogRecord has; anything else came in through `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Format a record as compact JSON with its `extra` context fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if _is_plain(value) else repr(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"), default=str)


def _is_plain(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


class AlwaysSafeExceptionReporterFilter(SafeExceptionReporterFilter):
    """Hide `sensitive_variables` and secret settings in every error report.

    Django's default filter stands down when DEBUG is on; evops keeps it on, because
    the frames that sign hold plaintext keys even in the local sandbox.
    """

    def is_active(self, request: Any) -> bool:
        return True
