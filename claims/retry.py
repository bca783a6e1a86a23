"""The retry policy: how long to wait before another try, when to give up, and the
readable error an operator sees.

Used by the inbox (a message deferred after a transient failure) and by the claim
state machine (a claim step scheduled again); `MAX_ATTEMPTS`, `RETRY_BASE_SECONDS`
and `RETRY_MAX_SECONDS` configure it.
"""

from __future__ import annotations

import random

from django.conf import settings

from claims.models import REASON_CHARS

REASON_GAVE_UP = "gave up after {attempts} attempts: {error}"
# Stored errors are bounded like every stored reason.
MAX_ERROR = REASON_CHARS


def retry_delay(attempts: int) -> float:
    """Jittered exponential backoff: base * 2**(attempts-1), capped, times 0.5-1.5."""
    base = float(settings.RETRY_BASE_SECONDS)
    cap = float(settings.RETRY_MAX_SECONDS)
    delay = min(cap, base * (2 ** max(0, attempts - 1)))
    return float(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not crypto


def readable_error(error: BaseException | str) -> str:
    """One readable line for `last_error`: type and message, bounded in length."""
    if isinstance(error, BaseException):
        name = type(error).__name__
        text = f"{name}: {error}" if str(error) else name
    else:
        text = error
    return text[:MAX_ERROR]
