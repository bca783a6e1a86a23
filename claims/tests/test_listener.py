"""The listener against a real NATS server (integrations faked; see test_end_to_end)."""

from __future__ import annotations

import asyncio
import gc
import json
import uuid
from typing import Any

import nats
import pytest
from asgiref.sync import sync_to_async

from claims import collector
from claims.listener import Listener
from claims.listener_config import ListenerConfig
from claims.models import (
    ClaimRecord,
    ClaimStatus,
    ConnectionState,
    InboundMessage,
    ListenerHeartbeat,
    MessageOutcome,
)
from evops.integrations.nats import NatsOptions
from evops.protocol import messages as wire

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio,
    pytest.mark.peers,
]


def _config(url: str, prefix: str, **overrides: Any) -> ListenerConfig:
    """Subjects under a unique first token, so tests never see each other's traffic."""
    values: dict[str, Any] = {
        "nats": NatsOptions(url=url),
        "subjects": [
            f"{prefix}.prequalification.exchange",
            f"{prefix}.claim-exchange.*.*",
            "*.claim.exchange",
        ],
        "name": f"test-{prefix}",
        "reconcile_on_start": False,
        "reconcile_interval": 0,
        "concurrency": 4,
    }
    values.update(overrides)
    return ListenerConfig(**values)


async def _until(predicate, what: str) -> None:
    """Wait for asynchronous delivery (not a speed assertion: generous bound)."""
    for _ in range(400):
        if await predicate():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"gave up waiting for {what}")


async def _count(**filters: Any) -> int:
    return await InboundMessage.objects.filter(**filters).acount()


@pytest.fixture
def prefix() -> str:
    return "issue-credential"


async def test_malformed_messages_are_rejected_and_the_listener_keeps_going(
    nats_server, make_asset, fakes, settings
):
    settings.INBOUND_PAYLOAD_LIMIT = 4096
    integrations, _cache, _, _ = fakes
    asset = await sync_to_async(make_asset)()
    token = uuid.uuid4().hex
    listener = Listener(_config(nats_server.url, token), integrations)
    await listener.connect()
    client = await nats.connect(nats_server.url)
    subject = f"{token}.prequalification.exchange"
    bad = [
        b"not json",
        b"[1, 2]",
        json.dumps({"did": 12}).encode(),
        json.dumps({"did": "did:ethr:volta:0xnothex"}).encode(),
        json.dumps({"did": asset.did, "pad": "x" * 10_000}).encode(),
        b"\xff\xfe\x00",
    ]
    for payload in bad:
        await client.publish(subject, payload)
    stranger = "did:ethr:volta:0x000000000000000000000000000000000000dEaD"
    await client.publish(subject, json.dumps({"did": stranger}).encode())
    await client.publish(f"{token}.claim-exchange.x", b"{}")  # not subscribed
    await client.publish(subject, json.dumps({"did": asset.did}).encode())
    await client.flush()
    await _until(lambda: _count_async(listener, 8), "8 messages recorded")
    await listener.process_until_idle()

    rows = [m async for m in InboundMessage.objects.order_by("id")]
    outcomes = [(m.outcome, m.reason.split(":")[0]) for m in rows]
    assert outcomes == [
        ("rejected", wire.REASON_NOT_JSON),
        ("rejected", wire.REASON_NOT_OBJECT),
        ("rejected", wire.REASON_BAD_FIELD),
        ("rejected", wire.REASON_INVALID_DID),
        ("rejected", wire.REASON_TOO_LARGE),
        ("rejected", wire.REASON_NOT_UTF8),
        ("ignored", "unknown_asset"),
        ("processed", "filed"),
    ]
    assert await ClaimRecord.objects.filter(asset=asset).acount() == 1
    assert listener.state == ConnectionState.CONNECTED
    await listener.shutdown()
    await client.close()
    beat = await ListenerHeartbeat.objects.aget(name=listener.config.name)
    assert beat.state == ConnectionState.STOPPED


async def _count_async(listener: Listener, n: int) -> bool:
    return listener.recorded >= n


async def test_the_same_message_three_times_writes_once(
    nats_server, make_asset, fakes, settings
):
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    token = "issue-credential"
    listener = Listener(_config(nats_server.url, token), integrations)
    await listener.connect()
    client = await nats.connect(nats_server.url)
    await client.publish("x.prequalification.exchange", b"{}")  # not ours: other prefix
    signer = integrations.signer_for(asset)
    role = await cache.role(signer, asset.did, integrations.prequalification_role)
    result = await cache.request_claim(signer, asset.did, role=role)
    cache.issue(result.claim_id)
    subject = f"issue-credential.claim-exchange.{asset.did}.ewf-{uuid.uuid4().hex[:6]}"
    notice = json.dumps({"type": "issue-credential", "claimId": result.claim_id})
    for _ in range(3):
        await client.publish(subject, notice.encode())
    await client.flush()
    await _until(lambda: _count_async(listener, 3), "3 deliveries recorded")
    await listener.process_until_idle()
    assert len(chain.writes) == 1
    record = await ClaimRecord.objects.aget(asset=asset)
    assert record.status == ClaimStatus.PUBLISHED
    assert await _count(outcome=MessageOutcome.IGNORED) == 2
    await listener.shutdown()
    await client.close()


async def test_two_listeners_in_a_queue_group_share_the_work(
    nats_server, make_asset, fakes
):
    integrations, cache, _, _ = fakes
    assets = [await sync_to_async(make_asset)() for _ in range(20)]
    token = uuid.uuid4().hex
    group = f"g-{token}"
    one = Listener(
        _config(nats_server.url, token, name="one", queue_group=group), integrations
    )
    two = Listener(
        _config(nats_server.url, token, name="two", queue_group=group), integrations
    )
    await one.connect()
    await two.connect()
    client = await nats.connect(nats_server.url)
    for asset in assets:
        await client.publish(
            f"{token}.prequalification.exchange",
            json.dumps({"did": asset.did}).encode(),
        )
    await client.flush()

    async def all_recorded() -> bool:
        return one.recorded + two.recorded >= len(assets)

    await _until(all_recorded, "all messages recorded")
    await asyncio.gather(one.process_until_idle(), two.process_until_idle())
    assert await InboundMessage.objects.acount() == len(assets)
    assert len(cache.requests) == len(assets)
    assert len({did for did, _ in cache.requests}) == len(assets)
    assert await ClaimRecord.objects.acount() == len(assets)
    assert one.recorded > 0 and two.recorded > 0
    await one.shutdown()
    await two.shutdown()
    await client.close()


async def test_jetstream_keeps_messages_while_no_listener_runs(
    nats_server, make_asset, fakes, jetstream_stream
):
    integrations, _, _, _ = fakes
    asset = await sync_to_async(make_asset)()
    token = uuid.uuid4().hex
    stream = jetstream_stream
    config = _config(nats_server.url, token, stream=stream, durable=f"d{token[:8]}")
    # This test's own subjects only: a shared wildcard would overlap the streams of
    # other tests (JetStream refuses two streams on one subject).
    config.subjects = list(config.subjects[:2])
    client = await nats.connect(nats_server.url)
    js = client.jetstream()
    await js.add_stream(name=stream, subjects=list(config.subjects))
    # Published before any listener exists: core NATS would lose these.
    for _ in range(2):
        await js.publish(
            f"{token}.prequalification.exchange",
            json.dumps({"did": asset.did}).encode(),
        )
    await js.publish(f"{token}.prequalification.exchange", b"garbage")

    listener = Listener(config, integrations)
    await listener.connect()
    fetched = 0
    for _ in range(20):
        fetched += await listener.fetch_once(wait=0.5)
        if fetched >= 3:
            break
    assert fetched == 3
    await listener.process_until_idle()
    outcomes = sorted([m.outcome async for m in InboundMessage.objects.all()])
    # Same payload twice within the window: the second is a recorded duplicate.
    assert outcomes == ["ignored", "processed", "rejected"]
    assert all([m.stream_sequence async for m in InboundMessage.objects.all()])
    # Everything was acked: a new listener on the same durable gets nothing.
    await listener.shutdown()
    again = Listener(config, integrations)
    await again.connect()
    assert await again.fetch_once(wait=0.5) == 0
    await again.shutdown()
    await client.close()


async def test_subscriptions_are_in_place_when_subscribe_returns(nats_server):
    """What `listening` rests on: the server has the SUBs when `subscribe` returns.

    Published from another connection at once: core NATS drops a message that
    reaches the server before the SUB. nats-py only queues the SUB for its flusher
    task, and its `flush()` writes the PING ahead of it, so without
    `written_and_flushed` some of these were lost (2 runs of 3 failed).
    """
    from evops.integrations import nats as nats_integration

    client = await nats.connect(nats_server.url)
    publisher = await nats.connect(nats_server.url)
    received: list[bytes] = []

    async def cb(msg: Any) -> None:
        received.append(msg.data)

    try:
        for n in range(100):
            subject = f"{uuid.uuid4().hex}.prequalification.exchange"
            await nats_integration.subscribe(client, [subject], queue="", cb=cb)
            await publisher.publish(subject, str(n).encode())
            await publisher.flush()

        async def all_received() -> bool:
            return len(received) == 100

        await _until(all_received, "every message published after subscribe")
    finally:
        await publisher.close()
        await client.close()


async def test_a_message_published_once_listening_is_received(
    nats_server, make_asset, fakes
):
    integrations, _, _, _ = fakes
    asset = await sync_to_async(make_asset)()
    publisher = await nats.connect(nats_server.url)
    try:
        prefix = uuid.uuid4().hex
        listener = Listener(_config(nats_server.url, prefix), integrations)
        await listener.connect()
        assert listener.listening.is_set()
        await publisher.publish(
            f"{prefix}.prequalification.exchange",
            json.dumps({"did": asset.did}).encode(),
        )
        await publisher.flush()

        async def recorded() -> bool:
            return listener.recorded == 1

        await _until(recorded, "the message published once listening")
        await listener.shutdown()
    finally:
        await publisher.close()


async def test_run_stops_cleanly_when_told(nats_server, fakes):
    integrations, _, _, _ = fakes
    listener = Listener(
        _config(nats_server.url, uuid.uuid4().hex, heartbeat_interval=0.05),
        integrations,
    )
    task = asyncio.create_task(listener.run())

    async def listening() -> bool:
        return listener.listening.is_set()

    await _until(listening, "subscribed")
    # Connected is not enough for a publisher to rely on; the heartbeat says when
    # the subscriptions are in place (what tests and operators wait for).
    beat = await ListenerHeartbeat.objects.aget(name=listener.config.name)
    assert beat.state == ConnectionState.CONNECTED
    assert beat.details["listening"] is True
    listener.stop.set()
    await asyncio.wait_for(task, timeout=30)
    beat = await ListenerHeartbeat.objects.aget(name=listener.config.name)
    assert beat.state == ConnectionState.STOPPED
    assert beat.details["listening"] is False


async def test_run_holds_the_collector_tuned_while_running(nats_server, fakes):
    integrations, _, _, _ = fakes
    listener = Listener(_config(nats_server.url, uuid.uuid4().hex), integrations)
    task = asyncio.create_task(listener.run())

    async def tuned() -> bool:
        return collector.holders() >= 1 and listener.listening.is_set()

    await _until(tuned, "the collector tuned")
    holding = collector.holders()
    assert gc.get_threshold() == collector.LISTENER_THRESHOLDS
    assert gc.get_freeze_count() > 0  # the start-up heap is frozen
    listener.stop.set()
    await asyncio.wait_for(task, timeout=30)
    assert collector.holders() < holding


async def test_unreachable_nats_is_retried_until_stopped(fakes):
    integrations, _, _, _ = fakes
    from evops.sandbox.peers import free_port

    listener = Listener(
        _config(f"nats://127.0.0.1:{free_port()}", "x", name="down"), integrations
    )
    task = asyncio.create_task(listener.run())

    async def reconnecting() -> bool:
        return listener.state == ConnectionState.RECONNECTING

    await _until(reconnecting, "reconnecting state")
    listener.stop.set()
    await asyncio.wait_for(task, timeout=30)
    beat = await ListenerHeartbeat.objects.aget(name="down")
    assert beat.state == ConnectionState.STOPPED


async def test_a_running_listener_takes_work_queued_in_the_console(
    nats_server, make_asset, fakes, admin_user
):
    """No NATS message: the workers find queued rows in the inbox on their own."""
    from claims import inbox
    from claims.models import ClaimEvent

    integrations, cache, _, _ = fakes
    assets = [await sync_to_async(make_asset)() for _ in range(3)]
    config = _config(nats_server.url, uuid.uuid4().hex, idle_poll=0.05)
    listener = Listener(config, integrations)
    task = asyncio.create_task(listener.run())
    try:
        await sync_to_async(inbox.inbound_enqueue)(
            kind="prequalification", dids=[a.did for a in assets], user=admin_user
        )

        async def filed() -> bool:
            return await ClaimRecord.objects.acount() == 3

        await _until(filed, "3 queued requests filed")
    finally:
        listener.stop.set()
        await task
    assert len(cache.requests) == 3
    users = {e.user_id async for e in ClaimEvent.objects.filter(kind="requested")}
    assert users == {admin_user.pk}
    assert await _count(outcome=MessageOutcome.PROCESSED, listener="console") == 3
