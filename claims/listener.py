"""The NATS listener: records every message, and workers that act on the records.

`Listener` is what `manage.py run_nats_listener` runs. Its parts are single steps the
tests call one at a time:

- `on_message` / `fetch_once`: the NATS side. A message is only *recorded* (an
  `InboundMessage` row); in JetStream mode it is acked after that row is committed,
  so a crash before the commit means a redelivery, never a loss.
- `work_once`: leases due inbound messages and due claim records (SKIP LOCKED) up
  to the free worker slots and starts one task per item; `wait_idle` awaits them.
- `heartbeat_once`, `reconcile_once`: the heartbeat row and metrics, reconciliation.

`run()` strings them together until `stop` is set (SIGTERM/SIGINT): then it stops
taking messages, lets in-flight work finish for up to `DRAIN_TIMEOUT`, hands back what
did not finish, drains the NATS connection and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from asgiref.sync import sync_to_async
from django.utils import timezone

from assets.signers import signer_health
from claims import (
    consumer,
    inbox,
    leases,
    metrics,
    pipeline,
    reconcile,
    selectors,
    transitions,
)
from claims.batches import BATCHED
from claims.collector import collector_tuned
from claims.dbthreads import DatabaseThreads, using
from claims.intake import DROP_SLOW_CONSUMER, IntakeHealth, IntakeQueue
from claims.integrations import Integrations
from claims.listener_config import Job, ListenerConfig, repeat
from claims.models import (
    LIFECYCLE,
    LISTENER,
    RECONCILER,
    ConnectionState,
    ListenerHeartbeat,
)
from evops.integrations import nats as nats_integration

log = logging.getLogger(__name__)


class Listener:
    """One listener process: NATS intake, workers, heartbeat, reconciliation."""

    def __init__(self, config: ListenerConfig, integrations: Integrations) -> None:
        self.config = config
        self.integrations = integrations
        self.stop = asyncio.Event()
        self.wake = asyncio.Event()
        self.state = ConnectionState.STARTING
        self.client: Any = None
        self._subscriptions: list[Any] = []
        self._pull: Any = None
        self._inflight: dict[asyncio.Task[Any], Job] = {}
        self._taking = True
        self.recorded = 0
        self.started_at = timezone.now()
        self._db_threads: DatabaseThreads | None = None
        # Records carried into `publishing` by this process's workers (their leases
        # are renewed with the heartbeat; see `claims.leases`).
        self._held_records: set[int] = set()
        self.watchdog: nats_integration.ReaderWatchdog | None = None
        # What makes intake unhealthy: messages lost before they were stored (red
        # for `drop_window` after a loss), a dead NATS read loop.
        self.health = IntakeHealth(name=config.name, drop_window=config.drop_window)
        self.intake = IntakeQueue(
            name=config.name,
            limit=config.intake_limit,
            batch=config.fetch_batch,
            health=self.health,
            db=lambda fn: self.db_threads.wrap(fn),
            on_stored=self._stored,
        )
        self.stream_changes: list[str] = []
        # Set once the subscriptions are in place (or the durable is bound): what
        # is published from then on reaches this listener. Being connected is not
        # enough: a message published between connecting and subscribing is lost.
        self.listening = asyncio.Event()

    @property
    def db_threads(self) -> DatabaseThreads:
        """The pipeline's database threads (started on first use; see shutdown)."""
        if self._db_threads is None or self._db_threads.closed:
            size = self.config.db_threads or min(self.config.concurrency, 10)
            self._db_threads = DatabaseThreads(
                size, name=f"evops-db-{self.config.name}", batched=BATCHED
            )
        return self._db_threads

    async def close_db_threads(self) -> None:
        """Close the database threads' connections (shutdown; also safe if unused)."""
        if self._db_threads is not None:
            await self._db_threads.aclose()

    @property
    def mode(self) -> str:
        return "jetstream" if self.config.stream else "core"

    # --- connection and intake --------------------------------------------------------

    async def _on_state(self, state: str) -> None:
        self.state = ConnectionState(state)
        metrics.NATS_CONNECTED.set(1 if state == ConnectionState.CONNECTED else 0)
        log.info("nats %s", state, extra={"listener": self.config.name})
        await self.heartbeat_once()

    async def connect(self) -> None:
        """Connect (retrying until `stop`) and subscribe to the configured subjects."""
        self.client = await nats_integration.connect(
            self.config.nats,
            on_state=self._on_state,
            stop=self.stop,
            on_slow_consumer=self._on_slow_consumer,
        )
        self.watchdog = nats_integration.ReaderWatchdog(self.client)
        if self.config.stream:
            self._pull, self.stream_changes = await nats_integration.bind_jetstream(
                self.client,
                stream=self.config.stream,
                durable=self.config.durable,
                subjects=self.config.subjects,
                create_stream=self.config.create_stream,
                max_age=self.config.stream_max_age,
            )
            for change in self.stream_changes:
                log.warning(
                    "jetstream: %s", change, extra={"listener": self.config.name}
                )
        else:
            self._subscriptions += await nats_integration.subscribe(
                self.client,
                self.config.subjects,
                queue=self.config.queue_group,
                cb=self.on_message,
            )
        self.listening.set()
        await self.heartbeat_once()
        log.info(
            "listening",
            extra={
                "listener": self.config.name,
                "mode": self.mode,
                "subjects": ",".join(self.config.subjects),
                "queue_group": self.config.queue_group,
            },
        )

    async def on_message(self, msg: Any) -> None:
        """Core NATS callback: have the message recorded, nothing else.

        Messages are queued and stored in batches by the intake's recorder task
        (`claims.intake.IntakeQueue`); workers only ever see stored rows.
        """
        if self._taking:
            self.intake.put(msg.subject, bytes(msg.data))

    def _on_slow_consumer(self, subject: str) -> None:
        self.health.dropped_one(DROP_SLOW_CONSUMER)

    async def watch_once(self) -> bool:
        """Check the NATS read loop; a dead one is reported and reconnected."""
        if self.watchdog is None:
            return True
        if await self.watchdog.check():
            if self.health.reader_dead and self.client.is_connected:
                self.health.reader_back()
                await self.heartbeat_once()
            return True
        self.health.reader_died()
        await self.heartbeat_once()
        return False

    def _stored(self, count: int) -> None:
        """`count` received messages are in the inbox: count them, wake the workers."""
        self.recorded += count
        metrics.MESSAGES_RECEIVED.inc(count)
        self.wake.set()

    async def flush_intake(self, wait: float | None = None) -> None:
        """Wait until every message received so far is recorded (shutdown; tests)."""
        await self.intake.flush(wait)

    async def fetch_once(self, wait: float = 1.0) -> int:
        """JetStream: fetch a batch, store it in one transaction, ack after commit."""
        import nats.errors

        if self._pull is None or not self._taking:
            return 0
        try:
            messages = await self._pull.fetch(self.config.fetch_batch, timeout=wait)
        except (TimeoutError, nats.errors.TimeoutError):
            return 0
        if not messages:
            return 0
        try:
            rows = await self.db_threads.wrap(inbox.inbound_record_many)(
                [(msg.subject, bytes(msg.data)) for msg in messages],
                stream=self.config.stream,
                sequences=[msg.metadata.sequence.stream for msg in messages],
                listener=self.config.name,
            )
        except Exception as exc:
            # Not recorded: let JetStream redeliver them later.
            log.error("could not record messages: %s", exc, exc_info=True)
            for msg in messages:
                await msg.nak(delay=5)
            return len(messages)
        self._stored(len(rows))
        # Acked only now that the rows are committed.
        for msg in messages:
            await msg.ack()
        return len(messages)

    # --- workers ----------------------------------------------------------------------

    async def work_once(self) -> int:
        """Lease due messages and records into free worker slots; return how many."""
        free = self.config.concurrency - len(self._inflight)
        if free <= 0 or not self._taking:
            return 0
        leased = await self.db_threads.wrap(inbox.inbound_lease_due_with_assets)(
            limit=free, lease_seconds=self.config.lease_seconds
        )
        jobs = [
            Job("message", message.pk, message, leased.assets)
            for message in leased.messages
        ]
        if len(jobs) < free:
            records = await self.db_threads.wrap(transitions.claims_lease_due)(
                limit=free - len(jobs)
            )
            jobs += [Job("record", pk) for pk in records]
        for job in jobs:
            task = asyncio.create_task(self._run_job(job))
            self._inflight[task] = job
            task.add_done_callback(self._job_done)
        return len(jobs)

    def _job_done(self, task: asyncio.Task[Any]) -> None:
        self._inflight.pop(task, None)
        self.wake.set()

    async def _run_job(self, job: Job) -> None:
        with using(self.db_threads), leases.collecting(self._held_records):
            await self._run_job_here(job)

    async def _run_job_here(self, job: Job) -> None:
        try:
            if job.kind == "message":
                await consumer.inbound_process(
                    message_id=job.pk,
                    integrations=self.integrations,
                    actor=LISTENER,
                    message=job.row,
                    assets=job.assets,
                )
            else:
                await pipeline.claim_process_due(
                    record_id=job.pk, integrations=self.integrations, actor=LISTENER
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # One bad item never stops the loop; its lease expires and it comes back.
            log.exception(
                "worker error on %s %s: %s",
                job.kind,
                job.pk,
                exc,
                extra={"listener": self.config.name},
            )

    async def wait_idle(self) -> None:
        """Await the tasks in flight now (tests; shutdown)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    async def process_until_idle(self, *, max_rounds: int = 100) -> None:
        """Run work_once/wait_idle until nothing is due (tests and one-shot use)."""
        for _ in range(max_rounds):
            if not await self.work_once() and not self._inflight:
                return
            await self.wait_idle()

    # --- heartbeat, reconciliation ----------------------------------------------------

    async def heartbeat_once(self) -> None:
        held_messages = [j.pk for j in self._inflight.values() if j.kind == "message"]
        held_records = {j.pk for j in self._inflight.values() if j.kind == "record"}
        held_records |= self._held_records
        if held_messages or held_records:
            await sync_to_async(transitions.leases_renew)(
                message_ids=held_messages, record_ids=held_records
            )
        # The signer backend's state (a PKCS#11 token unplugged or locked shows here
        # and in `listener_health`); asked off the loop, a token call may block.
        signer = await asyncio.to_thread(signer_health)
        await sync_to_async(ListenerHeartbeat.objects.beat)(
            name=self.config.name,
            state=self.state,
            mode=self.mode,
            started_at=self.started_at,
            details={
                "subjects": list(self.config.subjects),
                "queue_group": self.config.queue_group,
                "stream": self.config.stream,
                "listening": self.listening.is_set(),
                "inflight": len(self._inflight),
                "recorded": self.recorded,
                "intake_queue": len(self.intake),
                "dropped": dict(self.health.dropped),
                "reader_deaths": self.watchdog.deaths if self.watchdog else 0,
                "stream_changes": self.stream_changes,
                "problems": self.health.problems(),
                "signer": signer,
            },
        )
        backlog, oldest = await sync_to_async(selectors.inbox_backlog)()
        metrics.INBOX_BACKLOG.set(backlog)
        metrics.INBOX_OLDEST_AGE.set(oldest)
        for status, count in (
            await sync_to_async(selectors.claims_by_status)()
        ).items():
            metrics.CLAIMS_BY_STATUS.labels(status).set(count)

    async def reconcile_once(self) -> reconcile.ReconcileResult:
        with using(self.db_threads):
            result = await reconcile.reconcile_active_assets(
                integrations=self.integrations,
                actor=RECONCILER,
                concurrency=self.config.reconcile_concurrency,
            )
        log.info(
            "reconciliation done",
            extra={
                "assets": result.assets,
                "published": result.published,
                "already_present": result.already_present,
                "errors": len(result.errors),
            },
        )
        return result

    # --- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Run until `stop` is set, then shut down cleanly."""
        await self.heartbeat_once()
        try:
            await self.connect()
        except Exception:
            if self.stop.is_set():
                await self._set_state(ConnectionState.STOPPED)
                return
            raise
        config, stop = self.config, self.stop
        loops = [
            asyncio.create_task(self._worker_loop()),
            asyncio.create_task(
                repeat(
                    stop, self.heartbeat_once, "heartbeat", config.heartbeat_interval
                )
            ),
            asyncio.create_task(
                repeat(stop, self.watch_once, "watchdog", config.watchdog_interval)
            ),
            asyncio.create_task(
                repeat(
                    stop,
                    self.reconcile_once,
                    "reconciliation",
                    config.reconcile_interval,
                    run_first=config.reconcile_on_start,
                )
            ),
        ]
        if config.stream:
            loops.append(asyncio.create_task(self._fetch_loop()))
        if config.lifecycle_interval > 0:
            loops.append(
                asyncio.create_task(
                    repeat(
                        stop,
                        self.lifecycle_once,
                        "lifecycle sweep",
                        config.lifecycle_interval,
                        run_first=False,
                    )
                )
            )
        with collector_tuned():  # the loops run from here until `stop`
            await self.stop.wait()
        await self.shutdown(loops)

    async def _worker_loop(self) -> None:
        while not self.stop.is_set():
            try:
                await self.work_once()
            except Exception as exc:
                log.error("worker loop error: %s", exc, exc_info=True)
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=self.config.idle_poll)

    async def _fetch_loop(self) -> None:
        while not self.stop.is_set():
            try:
                await self.fetch_once()
            except Exception as exc:
                log.warning("jetstream fetch failed: %s", exc)
                await asyncio.sleep(1)

    async def lifecycle_once(self) -> Any:
        """One lifecycle sweep (claims.lifecycle) on this listener's threads."""
        from claims import lifecycle

        config = lifecycle.lifecycle_from_settings(self.integrations)
        try:
            with using(self.db_threads):
                return await lifecycle.lifecycle_sweep(
                    integrations=self.integrations, config=config, actor=LIFECYCLE
                )
        finally:
            await config.aclose()

    async def shutdown(self, loops: Sequence[asyncio.Task[Any]] = ()) -> None:
        """Stop taking messages, finish or hand back in-flight work, drain NATS."""
        log.info("shutting down", extra={"listener": self.config.name})
        self._taking = False
        self.listening.clear()
        await self._set_state(ConnectionState.DRAINING)
        for subscription in self._subscriptions:
            try:
                await subscription.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribe: %s", exc)
        await self.flush_intake(wait=self.config.drain_timeout)
        for task in loops:
            if task.get_name() and not task.done():
                task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        if self._inflight:
            _done, pending = await asyncio.wait(
                list(self._inflight), timeout=self.config.drain_timeout
            )
            handed_back = [self._inflight[t] for t in pending if t in self._inflight]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await sync_to_async(_hand_back)(handed_back)
        if self.client is not None and not self.client.is_closed:
            try:
                await self.client.drain()
            except Exception as exc:
                log.debug("drain: %s", exc)
        await self._set_state(ConnectionState.STOPPED)
        await self.close_db_threads()

    async def _set_state(self, state: str) -> None:
        self.state = ConnectionState(state)
        metrics.NATS_CONNECTED.set(1 if state == ConnectionState.CONNECTED else 0)
        try:
            await self.heartbeat_once()
        except Exception as exc:
            # A heartbeat that fails (database restarting) must not stop a start or
            # a shutdown half-way; the next beat writes the state.
            log.warning(
                "heartbeat failed: %s", exc, extra={"listener": self.config.name}
            )


def _hand_back(jobs: Sequence[Job]) -> None:
    from claims.models import ClaimRecord

    inbox.inbound_release(message_ids=[job.pk for job in jobs if job.kind == "message"])
    ClaimRecord.objects.filter(
        pk__in=[job.pk for job in jobs if job.kind == "record"]
    ).update(next_retry_at=timezone.now())
