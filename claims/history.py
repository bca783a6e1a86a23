"""The claim history: append-only events, and the live announcement of each change.

Every transition writes one `ClaimEvent` in its own transaction and announces the new
status after commit (`claims.signals.claim_changed`, which the console relays); a
note records something that happened to a claim without changing its status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import transaction

from claims import signals
from claims.models import Actor, ClaimEvent, ClaimRecord
from claims.retry import MAX_ERROR


def event_append(record_id: int, **fields: Any) -> ClaimEvent:
    """Append one history event now (`event_row`'s arguments)."""
    event = event_row(record_id, **fields)
    event.save(force_insert=True)
    return event


def event_row(
    record_id: int,
    *,
    actor: Actor,
    kind: str,
    from_status: str = "",
    to_status: str = "",
    message: str = "",
    details: Mapping[str, Any] | None = None,
) -> ClaimEvent:
    """An unsaved history event (`event_append` saves one; batches bulk-create them)."""
    return ClaimEvent(
        record_id=record_id,
        kind=kind,
        from_status=from_status,
        to_status=to_status,
        actor=actor.kind,
        actor_label=actor.label,
        user_id=actor.user_id,
        message=message[:MAX_ERROR],
        details=dict(details or {}),
    )


def announce(record_id: int, status: str) -> None:
    transaction.on_commit(
        lambda: signals.claim_changed.send(
            sender=ClaimRecord, record_id=record_id, status=status
        )
    )


def claim_note(
    record_id: int,
    *,
    actor: Actor,
    kind: str,
    message: str = "",
    details: Mapping[str, Any] | None = None,
) -> None:
    """Append a history event that does not change the status."""
    event_append(record_id, actor=actor, kind=kind, message=message, details=details)
