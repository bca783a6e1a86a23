"""What a listener process needs besides its integrations, and its periodic steps.

`ListenerConfig` is built from settings by `ListenerConfig.from_settings` for
`run_nats_listener`; tests and benchmarks build it directly. `Job` is one unit of work
a worker slot holds. `repeat` runs one of the listener's periodic steps (heartbeat,
read-loop watchdog, reconciliation, lifecycle sweep) until it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from evops.integrations import nats as nats_integration
from evops.integrations.nats import NatsOptions
from evops.protocol.messages import subjects_for

log = logging.getLogger(__name__)


@dataclass
class ListenerConfig:
    """Everything a listener needs besides its integrations; see `from_settings`."""

    nats: NatsOptions
    subjects: Sequence[str]
    name: str = ""
    queue_group: str = ""
    stream: str = ""
    durable: str = "evops-listener"
    concurrency: int = 100
    reconcile_interval: float = 900.0
    reconcile_on_start: bool = True
    reconcile_concurrency: int = 20
    heartbeat_interval: float = 5.0
    # Seconds between lifecycle sweeps (claims.lifecycle); 0: none.
    lifecycle_interval: float = 0.0
    drain_timeout: float = 30.0
    lease_seconds: float = 30.0
    # Received messages waiting to be stored, at most (core mode).
    intake_limit: int = 50000
    # How long a dropped message keeps health red, and how often the read loop is
    # checked (seconds).
    drop_window: float = 300.0
    watchdog_interval: float = 1.0
    stream_max_age: float = 7 * 24 * 3600.0
    fetch_batch: int = 100
    # Database threads for the pipeline (0: as many as workers, at most 10).
    db_threads: int = 0
    idle_poll: float = 1.0
    create_stream: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, **overrides: Any) -> ListenerConfig:
        from django.conf import settings

        name = overrides.pop("name", "") or socket.gethostname()
        values: dict[str, Any] = {
            "nats": nats_integration.nats_options_from_settings(name=f"evops-{name}"),
            "subjects": subjects_for(
                settings.NATS_PREQUALIFICATION_SUBJECT,
                settings.NATS_CLAIM_EXCHANGE_SUBJECTS,
            ),
            "name": name,
            "queue_group": settings.NATS_QUEUE_GROUP,
            "stream": settings.NATS_JETSTREAM_STREAM,
            "durable": settings.NATS_JETSTREAM_DURABLE,
            "concurrency": settings.WORKER_CONCURRENCY,
            "reconcile_interval": float(settings.RECONCILE_INTERVAL),
            "reconcile_concurrency": settings.RECONCILE_CONCURRENCY,
            "heartbeat_interval": float(settings.HEARTBEAT_INTERVAL),
            "lifecycle_interval": float(settings.LIFECYCLE_INTERVAL),
            "drain_timeout": float(settings.DRAIN_TIMEOUT),
            "lease_seconds": float(settings.INBOX_LEASE_SECONDS),
            "intake_limit": int(settings.INTAKE_QUEUE_LIMIT),
            "drop_window": float(settings.HEALTH_DROP_WINDOW),
            "stream_max_age": float(settings.NATS_JETSTREAM_MAX_AGE),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class Job:
    kind: str  # "message" or "record"
    pk: int
    row: Any = None  # the leased InboundMessage (subject, payload)
    assets: Any = None  # the assets loaded with the lease, by address


async def repeat(
    stop: asyncio.Event,
    step: Callable[[], Awaitable[Any]],
    what: str,
    every: float,
    *,
    run_first: bool = True,
) -> None:
    """Run `step` now (unless not `run_first`) and every `every` seconds until `stop`.

    An error is logged and the loop goes on: one failed heartbeat or reconciliation
    never ends the process. `every` <= 0 runs it once (if `run_first`) and returns.
    """
    due = run_first
    while not stop.is_set():
        if due:
            try:
                await step()
            except Exception as exc:
                log.warning("%s failed: %s", what, exc)
        due = True
        if every <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
