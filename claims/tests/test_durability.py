"""Never lost, never silently stuck: poison input, crashes and takeovers.

Against a real NATS server (raw sockets publish what nats-py refuses to) and
PostgreSQL; the peers behind the pipeline are the small fakes of test_pipeline.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import nats
import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.utils import timezone

from claims import failures, inbox, pipeline, transitions
from claims.intake import DROP_INTAKE_FULL, PROBLEM_DROPPED, PROBLEM_READER_DEAD
from claims.listener import Listener
from claims.listener_config import ListenerConfig
from claims.models import (
    LISTENER,
    ClaimRecord,
    ClaimStatus,
    InboundMessage,
    ListenerHeartbeat,
    MessageOutcome,
)
from claims.tests.rowlocks import row_held
from evops.integrations import nats as nats_integration
from evops.integrations.nats import NatsOptions, StreamSpec
from evops.protocol import messages as wire

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio,
    pytest.mark.peers,
]


def _config(url: str, prefix: str, **overrides: Any) -> ListenerConfig:
    values: dict[str, Any] = {
        "nats": NatsOptions(url=url, reconnect_wait=0.1),
        "subjects": [
            # A wildcard subscriber receives whatever subject a publisher sends
            # (this one also covers the prequalification subject).
            f"{prefix}.>",
            f"issue-credential.claim-exchange.*.{prefix}",
        ],
        "name": f"test-{prefix}",
        "reconcile_on_start": False,
        "reconcile_interval": 0,
        "concurrency": 4,
    }
    values.update(overrides)
    return ListenerConfig(**values)


async def _until(predicate, what: str) -> None:
    """Wait for a condition (a generous bound, not a speed assertion)."""
    for _ in range(800):
        if await predicate():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"gave up waiting for {what}")


def _raw_publish(url: str, subject: bytes, payload: bytes) -> None:
    """Publish with the bare protocol: nats-py itself refuses such subjects."""
    address = urlparse(url)
    assert address.port is not None
    with socket.create_connection((address.hostname, address.port)) as sock:
        sock.recv(4096)  # INFO
        sock.sendall(
            b'CONNECT {"verbose":false,"pedantic":false}\r\n'
            + b"PUB "
            + subject
            + b" "
            + str(len(payload)).encode()
            + b"\r\n"
            + payload
            + b"\r\nPING\r\n"
        )
        assert b"PONG" in sock.recv(4096)


async def _rows() -> list[InboundMessage]:
    return [m async for m in InboundMessage.objects.order_by("id")]


async def _running(listener: Listener) -> asyncio.Task[None]:
    task = asyncio.create_task(listener.run())
    await _until(lambda: _true(listener.listening.is_set()), "subscribed")
    return task


async def _true(value: bool) -> bool:
    return value


async def _stop(listener: Listener, task: asyncio.Task[None]) -> None:
    listener.stop.set()
    await asyncio.wait_for(task, timeout=60)


async def test_a_subject_that_is_not_utf8_is_rejected_and_intake_goes_on(
    nats_server, make_asset, fakes
):
    integrations, cache, _, _ = fakes
    asset = await sync_to_async(make_asset)()
    prefix = uuid.uuid4().hex[:12]
    listener = Listener(_config(nats_server.url, prefix), integrations)
    task = await _running(listener)
    client = await nats.connect(nats_server.url)
    try:
        await sync_to_async(_raw_publish)(
            nats_server.url, f"{prefix}.\xff\xfe".encode("latin-1"), b"{}"
        )
        await client.publish(
            f"{prefix}.prequalification.exchange",
            json.dumps({"did": asset.did}).encode(),
        )
        await client.flush()

        async def filed() -> bool:
            return await ClaimRecord.objects.filter(asset=asset).aexists()

        await _until(filed, "the valid request after the poison to be filed")
    finally:
        await client.close()
        await _stop(listener, task)
    poison, valid = await _rows()
    assert poison.outcome == MessageOutcome.REJECTED
    assert poison.reason == (
        f"{wire.REASON_BAD_SUBJECT}: {wire.DETAIL_SUBJECT_NOT_UTF8}"
    )
    assert poison.subject == f"{prefix}.\\xff\\xfe"
    assert valid.outcome == MessageOutcome.PROCESSED
    assert cache.requests == [(asset.did, integrations.prequalification_role)]


async def test_nul_in_subject_and_fields_poison_nothing_else(
    nats_server, make_asset, fakes
):
    integrations, _, _, _ = fakes
    asset = await sync_to_async(make_asset)()
    prefix = uuid.uuid4().hex[:12]
    listener = Listener(_config(nats_server.url, prefix), integrations)
    task = await _running(listener)
    try:
        await sync_to_async(_raw_publish)(
            nats_server.url, f"{prefix}.a\x00b".encode(), b"{}"
        )
        issue = f"issue-credential.claim-exchange.{asset.did}.{prefix}"
        for payload in (
            {"type": "issue-credential\u0000", "claimId": "c1"},
            {"type": "issue-credential", "claimId": "c\u00002"},
        ):
            await sync_to_async(_raw_publish)(
                nats_server.url, issue.encode(), json.dumps(payload).encode()
            )
        await sync_to_async(_raw_publish)(
            nats_server.url,
            f"{prefix}.prequalification.exchange".encode(),
            json.dumps({"did": asset.did}).encode(),
        )

        async def settled() -> bool:
            outcomes = [m.outcome for m in await _rows()]  # one query
            return len(outcomes) == 4 and MessageOutcome.PENDING not in outcomes

        await _until(settled, "all four messages settled")
    finally:
        await _stop(listener, task)
    # Two subscriptions deliver independently: find each row by what it is.
    rows = await _rows()
    [nul_subject] = [r for r in rows if r.subject.startswith(prefix + ".a")]
    [valid] = [r for r in rows if r.subject.endswith("prequalification.exchange")]
    [bad_type] = [r for r in rows if "issue-credential\\u0000" in r.payload]
    [bad_id] = [r for r in rows if "c\\u00002" in r.payload]
    assert nul_subject.outcome == MessageOutcome.REJECTED
    assert nul_subject.subject == f"{prefix}.a\\x00b"
    assert wire.DETAIL_CONTROL_CHARACTERS in nul_subject.reason
    assert bad_type.outcome == MessageOutcome.REJECTED
    assert bad_type.reason.startswith(wire.REASON_UNKNOWN_TYPE)
    assert "\x00" not in bad_type.reason and "\\x00" in bad_type.reason
    assert bad_id.outcome == MessageOutcome.REJECTED
    assert bad_id.reason.startswith(wire.REASON_BAD_FIELD)
    assert valid.outcome == MessageOutcome.PROCESSED


async def test_fuzzed_payloads_never_stop_intake(nats_server, make_asset, fakes):
    """1,000 hostile payloads on every subject family, then a valid request."""
    import random

    integrations, _, _, _ = fakes
    asset = await sync_to_async(make_asset)()
    prefix = uuid.uuid4().hex[:12]
    listener = Listener(_config(nats_server.url, prefix), integrations)
    task = await _running(listener)
    rng = random.Random(1056)
    fragments = [
        b"{",
        b"}",
        b'"type"',
        b'"claimId"',
        b'"did"',
        b":",
        b",",
        b"\x00",
        b"\xff",
        b"\\u0000",
        b"null",
        b"[",
        b"1e999",
        asset.did.encode(),
        b'"issue-credential"',
    ]
    subjects = [
        f"{prefix}.prequalification.exchange",
        f"issue-credential.claim-exchange.{asset.did}.{prefix}",
        f"{prefix}.x",
    ]
    client = await nats.connect(nats_server.url)
    try:
        for _ in range(1000):
            payload = b"".join(rng.choice(fragments) for _ in range(rng.randint(0, 12)))
            await client.publish(rng.choice(subjects), payload)
        await client.publish(
            f"{prefix}.prequalification.exchange",
            json.dumps({"did": asset.did, "after": "fuzz"}).encode(),
        )
        await client.flush()

        async def filed() -> bool:
            return await ClaimRecord.objects.filter(asset=asset).aexists()

        await _until(filed, "the valid request after the fuzz to be filed")
        await _until(lambda: _true(listener.recorded >= 1001), "all recorded")

        async def settled() -> bool:
            return not await InboundMessage.objects.filter(
                outcome=MessageOutcome.PENDING
            ).aexists()

        await _until(settled, "every message settled")
    finally:
        await client.close()
        await _stop(listener, task)
    assert await InboundMessage.objects.acount() == 1001
    assert not await InboundMessage.objects.filter(
        outcome=MessageOutcome.PENDING
    ).aexists()


async def test_a_dead_read_loop_is_reported_and_reconnected(
    nats_server, make_asset, fakes
):
    integrations, _, _, _ = fakes
    asset = await sync_to_async(make_asset)()
    prefix = uuid.uuid4().hex[:12]
    listener = Listener(_config(nats_server.url, prefix), integrations)
    await listener.connect()
    try:
        # What nats-py does on an exception it did not expect: the read loop ends,
        # nothing else notices.
        listener.client._reading_task.cancel()
        await asyncio.gather(listener.client._reading_task, return_exceptions=True)
        assert listener.client.is_connected
        assert await listener.watch_once() is False
        assert PROBLEM_READER_DEAD in listener.health.problems()
        beat = await ListenerHeartbeat.objects.aget(name=listener.config.name)
        assert PROBLEM_READER_DEAD in beat.details["problems"]
        with pytest.raises(SystemExit):
            await sync_to_async(call_command)(
                "listener_health", name=listener.config.name
            )

        async def recovered() -> bool:
            return bool(
                listener.client.is_connected
                and not listener.client._reading_task.done()
                and await listener.watch_once()
                and not listener.health.problems()
            )

        await _until(recovered, "the reconnect")
        # nats-py says connected before the server has answered the replayed SUBs;
        # a message from another connection could otherwise overtake them.
        await nats_integration.written_and_flushed(listener.client)
        client = await nats.connect(nats_server.url)
        await client.publish(
            f"{prefix}.prequalification.exchange",
            json.dumps({"did": asset.did}).encode(),
        )
        await client.flush()
        await client.close()
        await _until(lambda: _true(listener.recorded >= 1), "intake after reconnect")
        beat = await ListenerHeartbeat.objects.aget(name=listener.config.name)
        assert beat.details["problems"] == []
        assert beat.details["reader_deaths"] == 1
    finally:
        await listener.shutdown()


async def test_a_full_intake_drops_counts_and_turns_health_red(
    nats_server, make_asset, fakes
):
    integrations, _, _, _ = fakes
    prefix = uuid.uuid4().hex[:12]
    listener = Listener(_config(nats_server.url, prefix, intake_limit=3), integrations)
    listener._taking = True

    class Msg:
        def __init__(self, n: int) -> None:
            self.subject = f"{prefix}.prequalification.exchange"
            self.data = json.dumps({"n": n}).encode()

    # The recorder task is not allowed to run between these: the queue fills.
    for n in range(5):
        await listener.on_message(Msg(n))
    assert listener.health.dropped == {DROP_INTAKE_FULL: 2}
    assert listener.health.problems() == [
        PROBLEM_DROPPED.format(counts=f"2 {DROP_INTAKE_FULL}")
    ]
    await listener.flush_intake()
    assert await InboundMessage.objects.acount() == 3
    await listener.heartbeat_once()
    beat = await ListenerHeartbeat.objects.aget(name=listener.config.name)
    assert beat.details["dropped"] == {DROP_INTAKE_FULL: 2}
    await listener.close_db_threads()


async def test_a_batch_the_database_refuses_is_stored_message_by_message(
    monkeypatch,
):
    """Whatever else the database refuses in a row: the others still go in."""
    from django.db import DataError

    real = inbox.inbound_record_many

    def refusing(messages, **kwargs):
        if any(subject.startswith("hostile") for subject, _ in messages):
            raise DataError("invalid byte sequence")
        return real(messages, **kwargs)

    monkeypatch.setattr(inbox, "inbound_record_many", refusing)
    good = ("t.prequalification.exchange", b'{"did": "x"}')
    other = ("u.prequalification.exchange", b'{"did": "y"}')
    rows = await sync_to_async(inbox.inbound_record_each)(
        [good, ("hostile.a", b"\x01"), other], listener="t"
    )
    assert rows is not None
    assert sorted(r.subject for r in rows) == sorted(
        ["t.prequalification.exchange", "u.prequalification.exchange", "hostile.a"]
    )
    refused = await InboundMessage.objects.aget(subject="hostile.a")
    assert refused.outcome == MessageOutcome.REJECTED
    assert refused.reason == inbox.REASON_UNSTORABLE.format(
        error="DataError: invalid byte sequence"
    )
    assert refused.payload == "" and refused.payload_size == 1


async def test_the_database_down_stores_nothing_and_says_so(monkeypatch):
    from django.db import OperationalError

    def down(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(inbox, "inbound_record_many", down)
    monkeypatch.setattr(InboundMessage.objects, "create", down)
    stored = await sync_to_async(inbox.inbound_record_each)(
        [("a.b", b"{}")], listener="t"
    )
    assert stored is None


async def test_a_crashed_listeners_publishing_record_is_resumed_once(
    make_asset, fakes, settings
):
    """The holder died after its write landed: taken over, found, not written again."""
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    await sync_to_async(inbox.inbound_record)(
        subject="t.prequalification.exchange",
        payload=json.dumps({"did": asset.did}).encode(),
    )
    from claims.tests.test_pipeline import _notify_issued, _process

    [request] = [m async for m in InboundMessage.objects.all()]
    await _process(request, integrations)
    record = await ClaimRecord.objects.aget(asset=asset)
    cache.issue(record.claim_id)
    # The dying worker: wrote to chain, then died before confirming.
    real_resolve = chain.resolve_document
    calls = {"n": 0}

    async def resolve_then_die(did: str) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the confirmation after the write
            raise asyncio.CancelledError
        return await real_resolve(did)

    chain.resolve_document = resolve_then_die
    with pytest.raises(asyncio.CancelledError):
        await _notify_issued(asset, record, integrations)
    chain.resolve_document = real_resolve
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.PUBLISHING
    assert len(chain.writes) == 1

    # Nobody renews the lease: once it runs out, the next lease takes it over.
    assert await sync_to_async(transitions.claims_lease_due)(limit=10) == []
    await ClaimRecord.objects.filter(pk=record.pk).aupdate(
        next_retry_at=timezone.now() - timedelta(seconds=1)
    )
    assert await sync_to_async(transitions.claims_lease_due)(limit=10) == [record.pk]
    status = await pipeline.claim_process_due(
        record_id=record.pk, integrations=integrations, actor=LISTENER
    )
    assert status == ClaimStatus.PUBLISHED
    assert len(chain.writes) == 1
    kinds = [e.kind async for e in record.events.order_by("id")]
    assert kinds[-2:] == ["resumed", "published"]


async def test_a_live_listener_renews_what_it_holds(make_asset, settings):
    settings.PUBLISH_LEASE_SECONDS = 30
    settings.INBOX_LEASE_SECONDS = 30
    asset = await sync_to_async(make_asset)()
    message = await sync_to_async(inbox.inbound_record)(
        subject="t.prequalification.exchange",
        payload=json.dumps({"did": asset.did}).encode(),
    )
    record = await ClaimRecord.objects.acreate(
        asset=asset,
        claim_id="c-held",
        status=ClaimStatus.PUBLISHING,
        next_retry_at=timezone.now() + timedelta(seconds=1),
    )
    soon = timezone.now() + timedelta(seconds=1)
    await InboundMessage.objects.filter(pk=message.pk).aupdate(next_attempt_at=soon)
    await sync_to_async(transitions.leases_renew)(
        message_ids=[message.pk], record_ids=[record.pk]
    )
    await record.arefresh_from_db()
    await message.arefresh_from_db()
    floor = timezone.now() + timedelta(seconds=20)
    assert record.next_retry_at is not None and record.next_retry_at > floor
    assert message.next_attempt_at is not None and message.next_attempt_at > floor


async def test_a_notice_that_gives_up_fails_its_claim_and_a_retry_publishes(
    make_asset, fakes, fast_retries
):
    """The chain (and so every login) down past MAX_ATTEMPTS, then back."""
    from claims.tests.fakes import FakeError
    from claims.tests.test_pipeline import _notify_issued, _process

    fast_retries.MAX_ATTEMPTS = 2
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    request = await sync_to_async(inbox.inbound_record)(
        subject="t.prequalification.exchange",
        payload=json.dumps({"did": asset.did}).encode(),
    )
    await _process(request, integrations)
    record = await ClaimRecord.objects.aget(asset=asset)
    cache.issue(record.claim_id)
    cache.fail_next = [FakeError("chain RPC down", permanent=False)] * 2
    outcome = await _notify_issued(asset, record, integrations)
    assert outcome.outcome == MessageOutcome.PENDING
    notice = await InboundMessage.objects.aget(pk__gt=request.pk)
    # Its last lease (the lease counts the attempts).
    await InboundMessage.objects.filter(pk=notice.pk).aupdate(
        next_attempt_at=timezone.now(), attempts=2
    )
    from claims import consumer

    outcome = await consumer.inbound_process(
        message_id=notice.pk, integrations=integrations, actor=LISTENER
    )
    assert outcome.outcome == MessageOutcome.FAILED
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.FAILED
    assert "chain RPC down" in record.last_error

    # The chain is back: the staff retry (what retry_claims and the console call)
    # reads the claim again from the cache server and publishes it.
    from claims.selectors import claims_for_retry

    [failed] = await sync_to_async(claims_for_retry)(
        statuses=[ClaimStatus.FAILED], asset_dids=[asset.did], claim_ids=[]
    )
    assert await sync_to_async(failures.claim_retry)(record=failed, actor=LISTENER)
    assert await sync_to_async(transitions.claims_lease_due)(limit=5) == [record.pk]
    status = await pipeline.claim_process_due(
        record_id=record.pk, integrations=integrations, actor=LISTENER
    )
    assert status == ClaimStatus.PUBLISHED
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.PUBLISHED
    assert len(chain.writes) == 1
    await notice.arefresh_from_db()
    assert notice.outcome == MessageOutcome.PROCESSED
    assert notice.reason == transitions.REASON_SETTLED.format(record=record.pk)


async def test_retry_claims_requeues_failed_requests(make_asset):
    asset = await sync_to_async(make_asset)()
    failed = await InboundMessage.objects.acreate(
        subject="t.prequalification.exchange",
        payload=json.dumps({"did": asset.did}),
        dedupe_key="k1",
        kind="prequalification",
        asset_did=asset.did,
        outcome=MessageOutcome.FAILED,
        reason="gave up after 10 attempts: chain RPC down",
        attempts=10,
    )
    out = await sync_to_async(_call, thread_sensitive=False)(
        "retry_claims", "--requests", "--asset", asset.did, "--schedule-only"
    )
    assert "1 failed prequalification requests requeued" in out
    await failed.arefresh_from_db()
    assert (failed.outcome, failed.attempts) == (MessageOutcome.PENDING, 0)


def _call(*args: str) -> str:
    from io import StringIO

    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


async def test_a_rejection_sent_while_down_is_found_by_reconciliation(
    make_asset, fakes
):
    from claims import reconcile
    from claims.models import RECONCILER
    from claims.tests.test_pipeline import _process

    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    request = await sync_to_async(inbox.inbound_record)(
        subject="t.prequalification.exchange",
        payload=json.dumps({"did": asset.did}).encode(),
    )
    await _process(request, integrations)
    record = await ClaimRecord.objects.aget(asset=asset)
    cache.reject(record.claim_id, "meter not certified")  # no notice reaches us
    result = await reconcile.reconcile_assets(
        assets=[asset], integrations=integrations, actor=RECONCILER, concurrency=1
    )
    assert result.rejected == 1
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.REJECTED
    assert "meter not certified" in record.last_error
    assert chain.writes == []
    again = await reconcile.reconcile_assets(
        assets=[asset], integrations=integrations, actor=RECONCILER, concurrency=1
    )
    assert again.rejected == 0


async def test_jetstream_stream_is_created_then_fixed_and_conflicts_refused(
    nats_server,
):
    client = await nats.connect(nats_server.url)
    js = client.jetstream()
    name = f"EVOPS_{uuid.uuid4().hex[:8]}"
    try:
        spec = StreamSpec(name=name, subjects=(f"{name}.a",), max_age=3600)
        created = await nats_integration.ensure_stream(js, spec)
        assert created == [f"created stream {name} on {name}.a"]
        assert await nats_integration.ensure_stream(js, spec) == []
        wider = StreamSpec(name=name, subjects=(f"{name}.a", f"{name}.b"), max_age=7200)
        changes = await nats_integration.ensure_stream(js, wider)
        assert changes == [
            f"added subjects {name}.b to stream {name}",
            f"raised max age of stream {name} from 3600s to 7200s",
        ]
        info = await js.stream_info(name)
        assert info.config.subjects == [f"{name}.a", f"{name}.b"]

        from nats.js import api

        memory = f"{name}_MEM"
        await js.add_stream(
            config=api.StreamConfig(
                name=memory, subjects=[f"{memory}.a"], storage=api.StorageType.MEMORY
            )
        )
        with pytest.raises(RuntimeError, match="storage memory, needs file"):
            await nats_integration.ensure_stream(
                js, StreamSpec(name=memory, subjects=(f"{memory}.a",))
            )
        await js.delete_stream(memory)
    finally:
        await js.delete_stream(name)
        await client.close()


async def test_renewing_leases_skips_a_row_being_finished(make_asset, settings):
    """The heartbeat never waits for a row another transaction holds (no deadlock)."""
    settings.INBOX_LEASE_SECONDS = 30
    soon = timezone.now() + timedelta(seconds=1)
    held, free = [
        await InboundMessage.objects.acreate(
            subject=f"t{n}.prequalification.exchange",
            dedupe_key=f"renew-{n}",
            next_attempt_at=soon,
        )
        for n in range(2)
    ]
    # A worker finishing `held` holds its row meanwhile.
    with row_held(InboundMessage, held.pk):
        await sync_to_async(transitions.leases_renew, thread_sensitive=False)(
            message_ids=[held.pk, free.pk], record_ids=[]
        )
    await held.arefresh_from_db()
    await free.arefresh_from_db()
    floor = timezone.now() + timedelta(seconds=20)
    assert free.next_attempt_at is not None and free.next_attempt_at > floor
    assert held.next_attempt_at == soon
