"""Leases tied to the listener's liveness: what a live listener holds, it renews.

A worker that takes an inbound message or a claim record leases it for a short time
(`INBOX_LEASE_SECONDS`, `PUBLISH_LEASE_SECONDS`). The listener's heartbeat renews the
leases of everything its workers still hold, so a lease only runs out when the
listener holding it stopped beating: a crashed listener's messages and `publishing`
records are taken over by the next lease after that, in seconds rather than at the
next reconciliation.

A record carried into `publishing` while handling a message (the usual path of an
issue notice) is not a job of its own, so the pipeline announces it with
`holding(record_id)`; the listener collects these per process (`collecting`).
Outside a listener (console, commands, tests) nothing is collected and `holding`
does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_held: ContextVar[set[int] | None] = ContextVar("claims_held_records", default=None)


@contextlib.contextmanager
def collecting(held: set[int]) -> Iterator[None]:
    """Records announced with `holding` inside go into `held` (the listener's)."""
    token = _held.set(held)
    try:
        yield
    finally:
        _held.reset(token)


@contextlib.contextmanager
def holding(record_id: int) -> Iterator[None]:
    """While inside, the current listener (if any) renews this record's lease."""
    held = _held.get()
    if held is None:
        yield
        return
    held.add(record_id)
    try:
        yield
    finally:
        held.discard(record_id)
