"""Where a claim goes when a step fails, and back.

A transient failure sends the record back a step with a backoff
(`claim_schedule_retry`, the policy from `claims.retry`) until the policy gives up
and it is failed; a permanent failure (`claim_fail`) or a notice about it that failed
for good (`claim_fail_from_message`) fails it at once; a staff retry (`claim_retry`)
sends a failed claim back to the step it failed at. Every move goes through the
compare-and-set of `claims.transitions`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from django.utils import timezone

from assets.models import Asset
from claims.history import event_append
from claims.models import Actor, ClaimRecord, ClaimStatus
from claims.retry import MAX_ERROR, REASON_GAVE_UP, readable_error, retry_policy
from claims.transitions import claim_get_or_create, claim_transition

ERR_NOT_RETRYABLE = "Only failed claims can be retried (this one is {status})."
MSG_FAILED_BY_MESSAGE = "A message about this claim failed: {reason}"


def claim_fail_from_message(
    *, asset: Asset, claim_id: str, reason: str, actor: Actor
) -> bool:
    """A notice about this claim failed for good: the claim shows it, retryable.

    Only a claim still waiting (requested, issued, stored) is moved to failed, so
    `retry_claims` and the console's retry find it; a claim further along, or final,
    keeps its state and gets a history note.
    """
    record = claim_get_or_create(asset, claim_id, actor)
    text = MSG_FAILED_BY_MESSAGE.format(reason=reason)[:MAX_ERROR]
    moved = claim_transition(
        record_id=record.pk,
        expected=[ClaimStatus.REQUESTED, ClaimStatus.ISSUED, ClaimStatus.STORED],
        to=ClaimStatus.FAILED,
        actor=actor,
        kind="failed",
        message=text,
        last_error=text,
        next_retry_at=None,
    )
    if not moved:
        event_append(record.pk, actor=actor, kind="message_failed", message=text)
    return moved


def claim_schedule_retry(
    *,
    record_id: int,
    expected: str,
    back_to: str,
    error: BaseException | str,
    actor: Actor,
    details: Mapping[str, Any] | None = None,
) -> str:
    """After a transient failure: back to `back_to` with a backoff, or failed.

    Returns the status the record ended in ("" if someone else moved it first).
    `attempts` counts publication attempts (incremented entering `publishing`), or
    is incremented here for failures before that point.
    """
    text = readable_error(error)
    row = (
        ClaimRecord.objects.filter(pk=record_id)
        .values_list("attempts", flat=True)
        .first()
    )
    if row is None:
        return ""
    attempts = row if expected == ClaimStatus.PUBLISHING else row + 1
    policy = retry_policy()
    if policy.gives_up(attempts):
        moved = claim_transition(
            record_id=record_id,
            expected=[expected],
            to=ClaimStatus.FAILED,
            actor=actor,
            kind="failed",
            message=REASON_GAVE_UP.format(attempts=attempts, error=text),
            details=details,
            attempts=attempts,
            last_error=REASON_GAVE_UP.format(attempts=attempts, error=text),
            next_retry_at=None,
        )
        return ClaimStatus.FAILED if moved else ""
    delay = policy.delay(attempts)
    moved = claim_transition(
        record_id=record_id,
        expected=[expected],
        to=back_to,
        actor=actor,
        kind="retry_scheduled",
        message=f"{text} (attempt {attempts}; retry in {delay:.1f}s)",
        details=details,
        attempts=attempts,
        last_error=text,
        next_retry_at=timezone.now() + timedelta(seconds=delay),
    )
    return back_to if moved else ""


def claim_fail(
    *,
    record_id: int,
    expected: Iterable[str],
    error: BaseException | str,
    actor: Actor,
    details: Mapping[str, Any] | None = None,
) -> bool:
    """A permanent failure: → failed with the readable reason."""
    text = readable_error(error)
    return claim_transition(
        record_id=record_id,
        expected=expected,
        to=ClaimStatus.FAILED,
        actor=actor,
        message=text,
        details=details,
        last_error=text,
        next_retry_at=None,
    )


def claim_retry(*, record: ClaimRecord, actor: Actor) -> bool:
    """Staff retry of a failed claim: back to the step it failed at, due now.

    A record with a CID goes back to `stored`, one with a token to `issued`,
    otherwise to `requested`. The listener's worker (or the `retry_claims` command)
    picks it up; the publication still goes through the CAS into `publishing` and
    the check against the chain, so a retry never writes twice.
    """
    if record.status != ClaimStatus.FAILED:
        raise ValueError(ERR_NOT_RETRYABLE.format(status=record.status))
    if record.cid:
        target = ClaimStatus.STORED
    elif record.token:
        target = ClaimStatus.ISSUED
    else:
        target = ClaimStatus.REQUESTED
    return claim_transition(
        record_id=record.pk,
        expected=[ClaimStatus.FAILED],
        to=target,
        actor=actor,
        kind="retry",
        message=f"Retry requested by {actor.label or actor.kind}.",
        details={"previous_error": record.last_error},
        attempts=0,
        next_retry_at=timezone.now(),
    )
