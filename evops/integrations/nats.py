"""NATS: the connection, subscriptions and the JetStream binding (protocol.md §5).

Wraps nats-py: credentials and TLS options, reconnect forever, connection-state
callbacks, and the durable pull consumer of JetStream mode. The messages themselves
are parsed by `evops.protocol.messages`. Nothing here imports Django models.

Two defences against nats-py 2.16 live here and nowhere else:

- `_SafeClient` decodes subjects that are not UTF-8 instead of raising. The server
  delivers such a subject to a wildcard subscriber; stock nats-py raises
  `UnicodeDecodeError` inside its read loop, which then ends silently: no error
  callback, no reconnect, `is_connected` stays true and nothing is received again.
  The subject reaches the callback with the bad bytes as lone surrogates
  (`surrogateescape`), so the inbox can refuse it with a reason (`raw_subject`).
- `ReaderWatchdog` notices a read loop that ended for any other reason while the
  client still says connected, and forces a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

ERR_STOPPED = "stopped before the NATS connection was made"
ERR_READER_DEAD = "the NATS read loop ended while connected; reconnecting"
ERR_STREAM_CONFLICT = (
    "JetStream stream {stream} exists with settings evops would not change: {what}"
)
# Messages a subscription may hold before nats-py drops them as a slow consumer.
# The listener only queues each message for the recorder, so this is a burst
# allowance, not a backlog; a drop is counted and reported (`on_slow_consumer`).
PENDING_MSGS_LIMIT = 500_000
PENDING_BYTES_LIMIT = 512 * 1024 * 1024


def raw_subject(subject: str) -> bytes:
    """The subject's bytes as they came off the wire (undoing `surrogateescape`)."""
    return subject.encode("utf-8", "surrogateescape")


def _client_class() -> type[Any]:
    from nats.aio.client import Client

    class _SafeClient(Client):
        def _build_message(
            self,
            sid: int,
            subject: bytes,
            reply: bytes,
            data: bytes,
            headers: dict[str, str] | None,
        ) -> Any:
            return self.msg_class(
                subject=subject.decode("utf-8", "surrogateescape"),
                reply=reply.decode("utf-8", "surrogateescape"),
                data=data,
                headers=headers,
                _client=self,
                _sid=sid,
            )

    return _SafeClient


# --- connection ----------------------------------------------------------------------


@dataclass(frozen=True)
class NatsOptions:
    """How to reach NATS; built from settings by `nats_options_from_settings`."""

    url: str = "nats://127.0.0.1:4222"
    user: str = ""
    password: str = ""
    creds: str = ""
    tls_ca: str = ""
    name: str = "evops"
    connect_timeout: float = 5.0
    reconnect_wait: float = 2.0

    def __repr__(self) -> str:
        return f"NatsOptions(url={self.url!r}, name={self.name!r})"


def nats_options_from_settings(name: str = "evops") -> NatsOptions:
    from django.conf import settings

    return NatsOptions(
        url=settings.NATS_URL,
        user=settings.NATS_USER,
        password=settings.NATS_PASSWORD,
        creds=settings.NATS_CREDS,
        tls_ca=settings.NATS_TLS_CA,
        name=name,
    )


StateCallback = Callable[[str], Awaitable[None]]
SlowConsumerCallback = Callable[[str], None]


async def connect(
    options: NatsOptions,
    *,
    on_state: StateCallback | None = None,
    stop: asyncio.Event | None = None,
    on_slow_consumer: SlowConsumerCallback | None = None,
) -> Any:
    """Connect, and reconnect forever (`max_reconnect_attempts=-1`).

    The first connect is retried too (every `reconnect_wait`) until `stop` is set,
    which raises `ConnectionAbortedError`. `on_state` hears "reconnecting" (also
    while the first connect fails), "connected" and "disconnected" (closed).
    `on_slow_consumer(subject)` hears every message nats-py dropped because a
    subscription's pending limits were reached. Returns the nats-py client.
    """
    from nats.errors import SlowConsumerError

    async def notify(state: str) -> None:
        if on_state is not None:
            await on_state(state)

    async def disconnected() -> None:
        await notify("reconnecting")

    async def reconnected() -> None:
        await notify("connected")

    async def closed() -> None:
        await notify("disconnected")

    connected = False

    async def error(exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError):
            # nats-py dropped a message; the listener counts it and reports it.
            if on_slow_consumer is not None:
                on_slow_consumer(str(getattr(exc, "subject", "")))
            return
        log.warning("nats error: %s", exc, extra={"nats_url": options.url})
        if not connected:
            await notify("reconnecting")

    kwargs: dict[str, Any] = {
        "servers": [options.url],
        "name": options.name,
        "connect_timeout": options.connect_timeout,
        "reconnect_time_wait": options.reconnect_wait,
        "max_reconnect_attempts": -1,
        "allow_reconnect": True,
        "disconnected_cb": disconnected,
        "reconnected_cb": reconnected,
        "closed_cb": closed,
        "error_cb": error,
    }
    if options.user:
        kwargs["user"] = options.user
        kwargs["password"] = options.password
    if options.creds:
        kwargs["user_credentials"] = options.creds
    if options.tls_ca:
        kwargs["tls"] = ssl.create_default_context(cafile=options.tls_ca)
    # With reconnect allowed, nats-py keeps retrying the first connect by itself;
    # run it as a task so that `stop` can interrupt the wait.
    client = _client_class()()
    attempt = asyncio.create_task(_connected(client, kwargs))
    if stop is None:
        client = await attempt
    else:
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait(
            {attempt, stopped}, return_when=asyncio.FIRST_COMPLETED
        )
        if attempt not in done:
            attempt.cancel()
            with contextlib.suppress(BaseException):
                await attempt
            raise ConnectionAbortedError(ERR_STOPPED)
        stopped.cancel()
        client = attempt.result()
    connected = True
    await notify("connected")
    return client


async def _connected(client: Any, kwargs: dict[str, Any]) -> Any:
    await client.connect(**kwargs)
    return client


class ReaderWatchdog:
    """Notices a dead nats-py read loop and forces a reconnect.

    nats-py's read loop ends on any exception it does not expect (it logs
    "encountered error" and breaks) without telling anyone: the client keeps saying
    connected while nothing is read. `check()` looks at the loop's task; if it has
    ended while the client is connected, it reports `ERR_READER_DEAD` and hands the
    client to its own error path, which reconnects (with the parser reset) and
    resubscribes. `deaths` counts how often that happened.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.deaths = 0

    def reader_alive(self) -> bool:
        task = getattr(self.client, "_reading_task", None)
        if not self.client.is_connected:
            return True  # reconnecting or closed: not the watchdog's business
        return task is not None and not task.done()

    async def check(self) -> bool:
        """True if the reader is alive; else force a reconnect and return False."""
        if self.reader_alive():
            return True
        self.deaths += 1
        log.error(ERR_READER_DEAD)
        from nats.errors import ProtocolError

        # The client's own recovery path: close the transport, reset the parser,
        # reconnect and replay the subscriptions.
        await self.client._process_op_err(ProtocolError())
        return False


async def subscribe(
    client: Any,
    subjects: Sequence[str],
    *,
    queue: str,
    cb: Callable[[Any], Awaitable[None]],
) -> list[Any]:
    """Core NATS: one subscription per subject, in `queue` when set.

    Returns once the server has them (`written_and_flushed`): a message another
    connection publishes from then on is delivered. Otherwise it may reach the
    server before the SUBs and be lost, and the caller would say "listening" too
    early.
    """
    subscriptions = [
        await client.subscribe(
            subject,
            queue=queue,
            cb=cb,
            pending_msgs_limit=PENDING_MSGS_LIMIT,
            pending_bytes_limit=PENDING_BYTES_LIMIT,
        )
        for subject in subjects
    ]
    await written_and_flushed(client)
    return subscriptions


FLUSH_SECONDS = 10


async def written_and_flushed(client: Any) -> None:
    """Wait until the server has processed every command queued so far.

    nats-py 2.16's `flush()` is not enough: it writes its PING straight to the
    socket while queued commands (SUB, PUB) wait for the client's flusher task, so
    the PONG can come back before they are even written. So first wait for the
    flusher to write what is queued (the future `_flush_pending(force_flush=True)`
    awaits), then PING: the server answers it after the commands before it.
    """
    # Bounded: should the connection drop meanwhile, the flusher may never take
    # the future (nats-py waits forever without a `flush_timeout`).
    await asyncio.wait_for(client._flush_pending(force_flush=True), FLUSH_SECONDS)
    await client.flush(timeout=FLUSH_SECONDS)


@dataclass(frozen=True)
class StreamSpec:
    """What evops needs of its JetStream stream (protocol.md §5 subjects, kept)."""

    name: str
    subjects: tuple[str, ...]
    max_age: float = 7 * 24 * 3600.0  # seconds; what a long outage may hold
    max_bytes: int = -1
    replicas: int = 1


async def ensure_stream(js: Any, spec: StreamSpec, *, create: bool = True) -> list[str]:
    """Create the stream, or check an existing one and fix what evops may fix.

    Returns what was changed, in words (the listener logs it): created; subjects
    added; max age raised. Retention other than limits, or memory storage, would
    lose messages evops counts on (work-queue retention deletes on the first ack
    of another consumer; memory storage dies with the server): those are refused
    with `ERR_STREAM_CONFLICT` rather than silently changed.
    """
    from nats.js import api
    from nats.js.errors import BadRequestError, NotFoundError

    wanted = api.StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        max_age=spec.max_age,
        max_bytes=spec.max_bytes,
        num_replicas=spec.replicas,
        discard=api.DiscardPolicy.OLD,
    )
    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        if not create:
            raise
        await js.add_stream(config=wanted)
        return [f"created stream {spec.name} on {', '.join(spec.subjects)}"]
    config = info.config
    problems = []
    retention = _value(config.retention)
    storage = _value(config.storage)
    if retention not in (None, api.RetentionPolicy.LIMITS.value):
        problems.append(f"retention {retention}, needs limits")
    if storage not in (None, api.StorageType.FILE.value):
        problems.append(f"storage {storage}, needs file")
    if problems:
        raise RuntimeError(
            ERR_STREAM_CONFLICT.format(stream=spec.name, what="; ".join(problems))
        )
    changes = []
    have = list(config.subjects or [])
    missing = [subject for subject in spec.subjects if subject not in have]
    if missing:
        config.subjects = have + missing
        changes.append(f"added subjects {', '.join(missing)} to stream {spec.name}")
    if config.max_age and config.max_age < spec.max_age:
        changes.append(
            f"raised max age of stream {spec.name} from {config.max_age:.0f}s "
            f"to {spec.max_age:.0f}s"
        )
        config.max_age = spec.max_age
    if changes:
        try:
            await js.update_stream(config=config)
        except BadRequestError as exc:
            # Typically another stream already holds one of the subjects.
            raise RuntimeError(
                ERR_STREAM_CONFLICT.format(
                    stream=spec.name, what=f"{'; '.join(changes)} refused: {exc}"
                )
            ) from exc
    return changes


def _value(option: Any) -> Any:
    """nats-py gives stream options as enums or, depending on the path, strings."""
    return getattr(option, "value", option)


async def bind_jetstream(
    client: Any,
    *,
    stream: str,
    durable: str,
    subjects: Sequence[str],
    create_stream: bool = True,
    max_age: float = StreamSpec.max_age,
    ack_wait: float = 30.0,
) -> tuple[Any, list[str]]:
    """Ensure the stream, bind the durable pull consumer; return it and the changes.

    A pull consumer is shared by all listeners bound to it (the JetStream form
    of a queue group) and keeps its position while they are all down.
    """
    from nats.js import api

    js = client.jetstream()
    changes = await ensure_stream(
        js,
        StreamSpec(name=stream, subjects=tuple(subjects), max_age=max_age),
        create=create_stream,
    )
    await js.add_consumer(
        stream,
        config=api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_deliver=-1,
        ),
    )
    return await js.pull_subscribe_bind(durable, stream), changes
