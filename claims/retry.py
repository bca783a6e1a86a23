"""The project's retry policy, built from settings, and the readable error an
operator sees.

The policy itself (`evops.integrations.retry.RetryPolicy`) is pure; this module
fills it from `RETRY_BASE_SECONDS`, `RETRY_MAX_SECONDS` and `MAX_ATTEMPTS` (read at
each call, so a changed setting applies at once). The inbox (a message deferred
after a transient failure) and the claim state machine (a step scheduled again) ask
it when to try next; `claims.integrations` hands the same object to the peer
clients for their in-call retries.
"""

from __future__ import annotations

from django.conf import settings

from claims.querysets import REASON_CHARS
from evops.integrations.retry import Backoff, RetryPolicy

REASON_GAVE_UP = "gave up after {attempts} attempts: {error}"
# Stored errors are bounded like every stored reason.
MAX_ERROR = REASON_CHARS


def retry_policy() -> RetryPolicy:
    """The policy the settings describe; the peers' in-call retries keep theirs."""
    return RetryPolicy(
        backoff=Backoff(
            float(settings.RETRY_BASE_SECONDS), float(settings.RETRY_MAX_SECONDS)
        ),
        max_attempts=int(settings.MAX_ATTEMPTS),
    )


def retry_delay(attempts: int) -> float:
    """Seconds until the next scheduled try after `attempts` failed ones."""
    return retry_policy().delay(attempts)


def readable_error(error: BaseException | str) -> str:
    """One readable line for `last_error`: type and message, bounded in length."""
    if isinstance(error, BaseException):
        name = type(error).__name__
        text = f"{name}: {error}" if str(error) else name
    else:
        text = error
    return text[:MAX_ERROR]
