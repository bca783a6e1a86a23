"""NATS: the connection, subscriptions and the JetStream binding (protocol.md §5).

Wraps nats-py: credentials and TLS options, reconnect forever, connection-state
callbacks, and the durable pull consumer of JetStream mode. The messages themselves
are parsed by `evops.protocol.messages`. Nothing here imports Django models.
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


async def connect(
    options: NatsOptions,
    *,
    on_state: StateCallback | None = None,
    stop: asyncio.Event | None = None,
) -> Any:
    """Connect, and reconnect forever (`max_reconnect_attempts=-1`).

    The first connect is retried too (every `reconnect_wait`) until `stop` is set,
    which raises `ConnectionAbortedError`. `on_state` hears "reconnecting" (also
    while the first connect fails), "connected" and "disconnected" (closed).
    Returns the nats-py client.
    """
    import nats

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
    attempt = asyncio.create_task(nats.connect(**kwargs))
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


async def subscribe(
    client: Any,
    subjects: Sequence[str],
    *,
    queue: str,
    cb: Callable[[Any], Awaitable[None]],
) -> list[Any]:
    """Core NATS: one subscription per subject, in `queue` when set."""
    return [await client.subscribe(subject, queue=queue, cb=cb) for subject in subjects]


async def bind_jetstream(
    client: Any,
    *,
    stream: str,
    durable: str,
    subjects: Sequence[str],
    create_stream: bool = True,
) -> Any:
    """Bind the durable pull consumer (creating stream and consumer if missing).

    A pull consumer is shared by all listeners bound to it (the JetStream form
    of a queue group) and keeps its position while they are all down.
    """
    from nats.js import api
    from nats.js.errors import NotFoundError

    js = client.jetstream()
    try:
        await js.stream_info(stream)
    except NotFoundError:
        if not create_stream:
            raise
        await js.add_stream(name=stream, subjects=list(subjects))
    await js.add_consumer(
        stream,
        config=api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=30,
            max_deliver=-1,
        ),
    )
    return await js.pull_subscribe_bind(durable, stream)
