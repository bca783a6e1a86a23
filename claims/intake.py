"""The listener's core-NATS intake: received messages queued and stored in batches,
and whether intake is healthy.

`IntakeQueue` holds what the NATS callback received until one recorder task stores
it (`inbox.inbound_record_many`, a batch per round trip); a batch the database
refuses is stored message by message so one hostile row never holds back the
others, and a database that is down keeps the queue (core NATS never redelivers).
The queue is bounded: past `INTAKE_QUEUE_LIMIT` a message is dropped and counted.

`IntakeHealth` says what is wrong, in words: messages lost before they were stored
(red for `HEALTH_DROP_WINDOW`), a dead nats-py read loop. The listener reports it in
its heartbeat (`problems`), which `listener_health` and the dashboard read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from claims import inbox, metrics

log = logging.getLogger(__name__)

DROP_INTAKE_FULL = "intake_full"
DROP_SLOW_CONSUMER = "slow_consumer"
PROBLEM_READER_DEAD = "NATS read loop ended; reconnecting"
PROBLEM_DROPPED = "received messages dropped before they were stored: {counts}"


class IntakeHealth:
    """Counts of messages lost before they were stored, and the read loop's state."""

    def __init__(self, *, name: str, drop_window: float) -> None:
        self.name = name
        self.drop_window = drop_window
        self.dropped: dict[str, int] = {}
        self._last_drop: float | None = None
        self._reader_dead_since: float | None = None

    def dropped_one(self, reason: str) -> None:
        """A received message was lost (`reason`): count, metric, log (not each)."""
        count = self.dropped.get(reason, 0) + 1
        self.dropped[reason] = count
        self._last_drop = time.monotonic()
        metrics.MESSAGES_DROPPED.labels(reason).inc()
        if count == 1 or count % 1000 == 0:
            log.error(
                "received message dropped before it was stored (%s); %d so far",
                reason,
                count,
                extra={"listener": self.name},
            )

    @property
    def reader_dead(self) -> bool:
        return self._reader_dead_since is not None

    def reader_died(self) -> None:
        self._reader_dead_since = time.monotonic()
        metrics.NATS_READER_DEATHS.inc()

    def reader_back(self) -> None:
        self._reader_dead_since = None

    def problems(self) -> list[str]:
        """What makes intake unhealthy now, in words (heartbeat, health)."""
        found = []
        if self._reader_dead_since is not None:
            found.append(PROBLEM_READER_DEAD)
        recent = self._last_drop is not None and (
            time.monotonic() - self._last_drop < self.drop_window
        )
        if recent:
            counts = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items()))
            found.append(PROBLEM_DROPPED.format(counts=counts))
        return found


Batch = list[tuple[str, bytes]]
DatabaseCall = Callable[[Callable[..., Any]], Callable[..., Awaitable[Any]]]


class IntakeQueue:
    """Received messages waiting to be stored; one recorder task stores them."""

    def __init__(
        self,
        *,
        name: str,
        limit: int,
        batch: int,
        health: IntakeHealth,
        db: DatabaseCall,
        on_stored: Callable[[int], None],
    ) -> None:
        self.name = name
        self.limit = limit
        self.batch = batch
        self.health = health
        self._db = db
        self._on_stored = on_stored
        self._queue: Batch = []
        self._recorder: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, subject: str, data: bytes) -> None:
        if len(self._queue) >= self.limit:
            # Core NATS has no flow control: past the bound the only choice is
            # which message to lose. Count it; health turns red.
            self.health.dropped_one(DROP_INTAKE_FULL)
            return
        self._queue.append((subject, data))
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self._record())

    async def _record(self) -> None:
        while self._queue:
            batch = self._queue[: self.batch]
            try:
                rows: Sequence[Any] = await self._db(inbox.inbound_record_many)(
                    batch, listener=self.name
                )
            except Exception as exc:
                log.error("could not record messages: %s", exc, exc_info=True)
                # One row the database refuses must not hold back the others: store
                # them one by one, the refused ones as rejected rows with the reason.
                # If the database is down, none goes in: keep them and try again
                # (core NATS will not redeliver).
                stored = await self._db(inbox.inbound_record_each)(
                    batch, listener=self.name
                )
                if stored is None:
                    await asyncio.sleep(1)
                    continue
                rows = stored
            del self._queue[: len(batch)]
            self._on_stored(len(rows))

    async def flush(self, wait: float | None = None) -> None:
        """Wait until every message received so far is stored (shutdown; tests).

        At shutdown this waits at most `wait` seconds (the drain timeout): a database
        that stays down must not keep the process from exiting.
        """
        recorder = self._recorder
        if recorder is None or recorder.done():
            return
        await asyncio.wait([recorder], timeout=wait)
        if not recorder.done():
            log.error(
                "%d received messages could not be recorded before shutdown",
                len(self._queue),
                extra={"listener": self.name},
            )
            recorder.cancel()
            await asyncio.gather(recorder, return_exceptions=True)
