"""The claim state machine and the inbox (transitions.py, inbox.py, batches.py)."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from assets.models import Asset
from claims import batches, failures, inbox, message_columns, retry, transitions
from claims.models import (
    LISTENER,
    RECONCILER,
    ClaimEvent,
    ClaimRecord,
    ClaimStatus,
    InboundMessage,
    MessageKind,
    MessageOutcome,
    staff_actor,
)
from claims.tests.rowlocks import row_held
from evops.protocol import messages as wire
from evops.protocol.dids import DID
from evops.protocol.keys import LocalKeySigner

pytestmark = pytest.mark.django_db


def leased_ids(*, limit: int, lease_seconds: float) -> list[int]:
    """Lease as the listener does; the ids of the leased messages."""
    leased = inbox.inbound_lease_due_with_assets(
        limit=limit, lease_seconds=lease_seconds
    )
    return [message.pk for message in leased.messages]


def _record(asset, status=ClaimStatus.STORED, **fields) -> ClaimRecord:
    return ClaimRecord.objects.create(
        asset=asset, claim_id=fields.pop("claim_id", "c-1"), status=status, **fields
    )


def test_transition_moves_only_from_the_expected_status(make_asset):
    record = _record(make_asset())
    assert transitions.claim_begin_publishing(record_id=record.pk, actor=LISTENER)
    assert not transitions.claim_begin_publishing(record_id=record.pk, actor=RECONCILER)
    record.refresh_from_db()
    assert record.status == ClaimStatus.PUBLISHING
    assert record.attempts == 1
    events = list(record.events.values_list("from_status", "to_status", "actor"))
    assert events == [("stored", "publishing", "listener")]


@pytest.mark.django_db(transaction=True)
def test_concurrent_cas_into_publishing_has_one_winner(make_asset):
    record = _record(make_asset())
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        try:
            wins.append(
                transitions.claim_begin_publishing(record_id=record.pk, actor=LISTENER)
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False] * 7 + [True]
    assert ClaimEvent.objects.filter(record=record, to_status="publishing").count() == 1


def test_issued_is_idempotent(make_asset):
    asset = make_asset()
    kwargs = dict(
        asset=asset,
        claim_id="c-9",
        token="t.o.k",
        token_sha256="a" * 64,
        issuer_did="did:ethr:volta:0x0000000000000000000000000000000000000001",
        role="r",
        role_version=1,
        actor=LISTENER,
    )
    record, moved = transitions.claim_record_issued(**kwargs)
    assert moved and record.status == ClaimStatus.ISSUED
    again, moved_again = transitions.claim_record_issued(**kwargs)
    assert again.pk == record.pk and not moved_again
    assert ClaimRecord.objects.count() == 1


def test_rejection_never_undoes_publication(make_asset):
    asset = make_asset()
    record = _record(asset, status=ClaimStatus.PUBLISHED)
    _, moved = transitions.claim_record_rejected(
        asset=asset, claim_id=record.claim_id, reason="x", message="x", actor=LISTENER
    )
    assert not moved
    record.refresh_from_db()
    assert record.status == ClaimStatus.PUBLISHED


def test_transient_failure_backs_off_then_gives_up(make_asset, settings):
    settings.MAX_ATTEMPTS = 2
    record = _record(make_asset())
    assert transitions.claim_begin_publishing(record_id=record.pk, actor=LISTENER)
    status = failures.claim_schedule_retry(
        record_id=record.pk,
        expected=ClaimStatus.PUBLISHING,
        back_to=ClaimStatus.STORED,
        error=TimeoutError("rpc timed out"),
        actor=LISTENER,
    )
    record.refresh_from_db()
    assert status == ClaimStatus.STORED
    assert record.next_retry_at is not None
    assert record.next_retry_at > timezone.now()
    assert record.last_error == "TimeoutError: rpc timed out"
    assert transitions.claim_begin_publishing(record_id=record.pk, actor=LISTENER)
    status = failures.claim_schedule_retry(
        record_id=record.pk,
        expected=ClaimStatus.PUBLISHING,
        back_to=ClaimStatus.STORED,
        error="still down",
        actor=LISTENER,
    )
    record.refresh_from_db()
    assert status == ClaimStatus.FAILED == record.status
    assert record.last_error == retry.REASON_GAVE_UP.format(
        attempts=2, error="still down"
    )


def test_retry_delay_is_jittered_exponential_and_capped(settings):
    settings.RETRY_BASE_SECONDS = 1
    settings.RETRY_MAX_SECONDS = 10
    assert 0.5 <= retry.retry_delay(1) <= 1.5
    assert 4 <= retry.retry_delay(4) <= 12
    assert retry.retry_delay(30) <= 15


def test_the_policy_follows_the_settings_at_each_call(settings):
    settings.RETRY_BASE_SECONDS = 3
    settings.RETRY_MAX_SECONDS = 7
    settings.MAX_ATTEMPTS = 4
    policy = retry.retry_policy()
    assert (policy.backoff.base, policy.backoff.cap) == (3.0, 7.0)
    assert not policy.gives_up(3) and policy.gives_up(4)
    settings.MAX_ATTEMPTS = 6
    assert not retry.retry_policy().gives_up(4)


def test_staff_retry_returns_to_the_failed_step(make_asset, admin_user):
    asset = make_asset()
    with_cid = _record(asset, status=ClaimStatus.FAILED, claim_id="a", cid="bafy")
    with_token = _record(asset, status=ClaimStatus.FAILED, claim_id="b", token="t")
    actor = staff_actor(admin_user)
    assert failures.claim_retry(record=with_cid, actor=actor)
    assert failures.claim_retry(record=with_token, actor=actor)
    with_cid.refresh_from_db()
    with_token.refresh_from_db()
    assert (with_cid.status, with_token.status) == (ClaimStatus.STORED, "issued")
    event = with_cid.events.get(kind="retry")
    assert (event.actor, event.user_id) == ("staff", admin_user.pk)
    with pytest.raises(ValueError, match="Only failed claims"):
        failures.claim_retry(record=with_cid, actor=actor)


def test_due_records_are_leased_once(make_asset):
    asset = make_asset()
    due = _record(asset, claim_id="due", next_retry_at=timezone.now())
    _record(
        asset,
        claim_id="later",
        next_retry_at=timezone.now() + timedelta(hours=1),
    )
    assert transitions.claims_lease_due(limit=10) == [due.pk]
    assert transitions.claims_lease_due(limit=10) == []


def test_stale_publishing_is_handed_back(make_asset, settings):
    settings.PUBLISH_LEASE_SECONDS = 0
    record = _record(make_asset(), status=ClaimStatus.PUBLISHING)
    assert transitions.claims_release_stale_publishing(actor=RECONCILER) == [record.pk]
    record.refresh_from_db()
    assert record.status == ClaimStatus.STORED


def test_inbound_duplicates_within_the_window_are_ignored():
    first = inbox.inbound_record(subject="a.prequalification.exchange", payload=b"{}")
    second = inbox.inbound_record(subject="a.prequalification.exchange", payload=b"{}")
    assert first.outcome == MessageOutcome.PENDING
    assert second.outcome == MessageOutcome.IGNORED
    assert second.reason == inbox.REASON_DUPLICATE.format(id=first.pk)
    assert leased_ids(limit=10, lease_seconds=60) == [first.pk]


def test_inbound_jetstream_redelivery_is_one_row():
    one = inbox.inbound_record(
        subject="s.prequalification.exchange",
        payload=b"{}",
        stream="S",
        stream_sequence=7,
    )
    two = inbox.inbound_record(
        subject="s.prequalification.exchange",
        payload=b"{}",
        stream="S",
        stream_sequence=7,
    )
    assert one.pk == two.pk
    assert InboundMessage.objects.count() == 1


def test_huge_and_binary_payloads_are_rejected_when_recorded(settings):
    settings.INBOUND_PAYLOAD_LIMIT = 1000
    huge = inbox.inbound_record(
        subject="t.prequalification.exchange", payload=b"x" * 5000
    )
    assert huge.outcome == MessageOutcome.REJECTED
    assert huge.reason.startswith(wire.REASON_TOO_LARGE)
    assert (huge.payload_size, huge.truncated, len(huge.payload)) == (5000, True, 1000)
    binary = inbox.inbound_record(
        subject="t.prequalification.exchange", payload=b"\xff\x00"
    )
    assert binary.outcome == MessageOutcome.REJECTED
    assert binary.reason == wire.REASON_NOT_UTF8


def test_inbound_defer_then_fail(settings):
    settings.MAX_ATTEMPTS = 1
    message = inbox.inbound_record(subject="t.prequalification.exchange", payload=b"{}")
    leased_ids(limit=1, lease_seconds=60)
    assert inbox.inbound_defer(message_id=message.pk, error="boom") == "failed"
    message.refresh_from_db()
    assert message.outcome == MessageOutcome.FAILED
    assert "boom" in message.reason


def _issuer_subject(kind: str = "request-credential") -> tuple[str, str]:
    issuer = DID.for_address(LocalKeySigner.generate().address).canonical
    return issuer, f"{kind}.claim-exchange.{issuer}.ewf-dev"


def test_request_notices_are_recorded_as_ignored_on_arrival():
    """Addressed to the issuers: stored, with why, and never leased to a worker."""
    issuer, subject = _issuer_subject()
    notice = {"type": "request-credential", "claimId": "c-1"}
    one = inbox.inbound_record(subject=subject, payload=json.dumps(notice).encode())
    notice["claimId"] = "c-2"
    [many] = inbox.inbound_record_many([(subject, json.dumps(notice).encode())])
    for row, claim_id in ((one, "c-1"), (many, "c-2")):
        row.refresh_from_db()
        assert (row.outcome, row.reason, row.kind) == (
            MessageOutcome.IGNORED,
            message_columns.REASON_FOR_ISSUERS,
            MessageKind.REQUEST,
        )
        assert (row.asset_did, row.claim_id) == (issuer, claim_id)
        assert row.next_attempt_at is None
        assert row.processed_at is not None
    assert leased_ids(limit=10, lease_seconds=60) == []


def test_request_notices_that_do_not_parse_are_left_for_the_worker():
    """Only a well-formed notice is settled on arrival; the rest get their reason."""
    _, subject = _issuer_subject()
    payloads = [
        b"not json",
        json.dumps({"type": "issue-credential", "claimId": "c-1"}).encode(),
        json.dumps({"type": "request-credential", "claimId": ["c-1"]}).encode(),
    ]
    rows = inbox.inbound_record_many([(subject, p) for p in payloads])
    assert [r.outcome for r in rows] == [MessageOutcome.PENDING] * 3
    issue_subject = _issuer_subject("issue-credential")[1]
    issue = inbox.inbound_record(
        subject=issue_subject,
        payload=json.dumps({"type": "issue-credential", "claimId": "c-2"}).encode(),
    )
    assert issue.outcome == MessageOutcome.PENDING
    leased = leased_ids(limit=10, lease_seconds=60)
    assert leased == [r.pk for r in rows] + [issue.pk]


def test_lease_loads_the_assets_the_messages_name(make_asset):
    ours = make_asset()
    stranger = DID.for_address(LocalKeySigner.generate().address)
    named = [
        inbox.inbound_record(
            subject="a.prequalification.exchange",
            payload=json.dumps({"did": did}).encode(),
        )
        for did in (ours.did, stranger.canonical)
    ]
    garbage = inbox.inbound_record(
        subject="a.prequalification.exchange", payload=b"nope"
    )
    leased = inbox.inbound_lease_due_with_assets(limit=10, lease_seconds=60)
    assert [m.pk for m in leased.messages] == [m.pk for m in named] + [garbage.pk]
    assert leased.assets == {ours.address: ours, stranger.address: None}
    # The sealed key came in the same query: the worker's signer reads nothing.
    loaded = leased.assets[ours.address]
    assert loaded is not None
    assert Asset.key.is_cached(loaded)
    again = inbox.inbound_lease_due_with_assets(limit=10, lease_seconds=60)
    assert (again.messages, again.assets) == ([], {})


def _requested(asset, claim_id: str) -> batches.RequestedClaim:
    return batches.RequestedClaim(
        asset=asset,
        claim_id=claim_id,
        role="r.roles.x.iam.ewc",
        role_version=1,
        actor=LISTENER,
        details={"already_existed": False},
    )


def test_requested_claims_are_recorded_together(make_asset):
    """New, already recorded, and named twice: one record and one event each."""
    one, two = make_asset(), make_asset()
    before, created = transitions.claim_record_requested(
        asset=one,
        claim_id="old",
        role="r.roles.x.iam.ewc",
        role_version=1,
        actor=LISTENER,
    )
    assert created
    results = batches.claim_record_requested_many(
        [
            _requested(one, "old"),
            _requested(one, "a"),
            _requested(two, "a"),  # the same id for another asset: its own claim
            _requested(one, "a"),
        ]
    )
    assert [created for _, created in results] == [False, True, True, False]
    assert results[0][0].pk == before.pk
    assert results[1][0].pk == results[3][0].pk != results[2][0].pk
    assert {(r.asset_id, r.claim_id) for r, _ in results} == {
        (one.pk, "old"),
        (one.pk, "a"),
        (two.pk, "a"),
    }
    assert ClaimRecord.objects.count() == 3
    for record, _ in results:
        record.refresh_from_db()
        assert record.status == ClaimStatus.REQUESTED
        events = list(ClaimEvent.objects.filter(record=record))
        assert [(e.kind, e.to_status, e.actor) for e in events] == [
            ("requested", ClaimStatus.REQUESTED, LISTENER.kind)
        ]
    assert events[0].message == "Claim request filed for r.roles.x.iam.ewc v1."
    assert batches.claim_record_requested_many([]) == []


def test_a_claim_recorded_meanwhile_sends_the_batch_one_by_one(make_asset, monkeypatch):
    """Another writer's record between our look-up and insert: no error, no double."""
    asset = make_asset()
    theirs, _ = transitions.claim_record_requested(
        asset=asset,
        claim_id="raced",
        role="r.roles.x.iam.ewc",
        role_version=1,
        actor=RECONCILER,
    )
    # Our look-up ran before their insert: it saw nothing.
    monkeypatch.setattr(batches, "_recorded_claims", lambda requests: {})
    results = batches.claim_record_requested_many(
        [_requested(asset, "fresh"), _requested(asset, "raced")]
    )
    assert [created for _, created in results] == [True, False]
    assert results[1][0].pk == theirs.pk
    assert ClaimRecord.objects.filter(asset=asset).count() == 2
    assert ClaimEvent.objects.filter(record=theirs).count() == 1


def test_outcomes_are_recorded_together(make_asset):
    rows = [
        inbox.inbound_record(
            subject=f"{n}.prequalification.exchange", payload=b'{"did": "x"}'
        )
        for n in range(3)
    ]
    leased_ids(limit=10, lease_seconds=60)
    finishes = [
        batches.Finish(
            rows[0].pk,
            MessageOutcome.PROCESSED,
            "filed",
            kind=MessageKind.PREQUALIFICATION,
            asset_did="did:ethr:a",
            record_id=None,
        ),
        batches.Finish(rows[1].pk, MessageOutcome.IGNORED, "unknown_asset"),
        batches.Finish(rows[2].pk, MessageOutcome.REJECTED, "invalid_did: x"),
    ]
    assert batches.inbound_finish_many(finishes) == [None] * 3
    for row, finish in zip(rows, finishes, strict=True):
        row.refresh_from_db()
        assert (row.outcome, row.reason) == (finish.outcome, finish.reason)
        assert row.next_attempt_at is None
        assert row.processed_at is not None
    assert rows[0].kind == MessageKind.PREQUALIFICATION
    assert rows[0].asset_did == "did:ethr:a"
    assert leased_ids(limit=10, lease_seconds=0) == []


def test_an_outcome_without_context_keeps_what_the_row_has(make_asset):
    asset = make_asset()
    record, _ = transitions.claim_record_requested(
        asset=asset, claim_id="c-9", role="r", role_version=1, actor=LISTENER
    )
    row = inbox.inbound_record(
        subject="k.prequalification.exchange", payload=b"{}", kind=MessageKind.ISSUE
    )
    inbox.inbound_finish(
        message_id=row.pk,
        outcome=MessageOutcome.PENDING,
        asset_did=asset.did,
        claim_id="c-9",
        record_id=record.pk,
    )
    inbox.inbound_finish(message_id=row.pk, outcome=MessageOutcome.FAILED)
    row.refresh_from_db()
    assert row.outcome == MessageOutcome.FAILED
    assert (row.kind, row.asset_did, row.claim_id, row.record_id) == (
        MessageKind.ISSUE,
        asset.did,
        "c-9",
        record.pk,
    )
    assert row.reason == ""


def test_a_jetstream_batch_is_stored_once_per_stream_sequence():
    """A redelivered message (its ack was lost) is its stored row, not a second one."""
    subject = "j.prequalification.exchange"
    first = inbox.inbound_record_many(
        [(subject, b'{"n": 1}'), (subject, b'{"n": 2}')],
        stream="S",
        sequences=[1, 2],
        listener="l1",
    )
    assert [(r.stream_key, r.stream_sequence) for r in first] == [
        ("S:1", 1),
        ("S:2", 2),
    ]
    again = inbox.inbound_record_many(
        [(subject, b'{"n": 2}'), (subject, b'{"n": 3}'), (subject, b'{"n": 1}')],
        stream="S",
        sequences=[2, 3, 4],
        listener="l2",
    )
    assert again[0].pk == first[1].pk  # sequence 2 redelivered
    assert again[1].outcome == MessageOutcome.PENDING
    # Sequence 4 repeats message 1's content: stored, as a duplicate of it.
    assert again[2].outcome == MessageOutcome.IGNORED
    assert again[2].reason == inbox.REASON_DUPLICATE.format(id=first[0].pk)
    assert InboundMessage.objects.count() == 4


def test_a_jetstream_batch_racing_another_listener_is_stored_one_by_one(
    monkeypatch,
):
    """Another listener stored a sequence between our check and insert: no error."""
    subject = "j.prequalification.exchange"
    [theirs] = inbox.inbound_record_many(
        [(subject, b'{"n": 1}')], stream="S", sequences=[1]
    )
    # Our check ran before their insert: it saw nothing stored.
    monkeypatch.setattr(inbox, "_stored_by_stream_key", lambda keys: {})
    rows = inbox.inbound_record_many(
        [(subject, b'{"n": 1}'), (subject, b'{"n": 5}')], stream="S", sequences=[1, 5]
    )
    assert rows[0].pk == theirs.pk
    assert (rows[1].stream_key, rows[1].outcome) == ("S:5", MessageOutcome.PENDING)
    assert InboundMessage.objects.count() == 2


def test_a_message_is_parsed_once_on_arrival_into_its_columns(make_asset):
    asset = make_asset()
    row = inbox.inbound_record(
        subject="k.prequalification.exchange",
        payload=json.dumps({"did": asset.did}).encode(),
    )
    assert (row.kind, row.asset_did, row.outcome) == (
        MessageKind.PREQUALIFICATION,
        asset.did,
        MessageOutcome.PENDING,
    )
    # Later stages read the columns, not the payload.
    InboundMessage.objects.filter(pk=row.pk).update(payload="not json")
    row.refresh_from_db()
    hint = message_columns.message_hint(row)
    assert (hint.type, hint.did.address) == (
        wire.MessageType.PREQUALIFICATION,
        asset.address,
    )
    leased = inbox.inbound_lease_due_with_assets(limit=10, lease_seconds=60)
    assert leased.assets == {asset.address: asset}


def test_a_message_that_does_not_parse_keeps_no_columns_and_waits_for_a_worker():
    row = inbox.inbound_record(subject="k.prequalification.exchange", payload=b"[1]")
    assert (row.kind, row.asset_did, row.outcome) == ("unknown", "", "pending")
    with pytest.raises(wire.MessageError) as info:
        message_columns.message_hint(row)
    assert info.value.reason == wire.REASON_NOT_OBJECT


@pytest.mark.django_db(transaction=True)
def test_a_lease_returns_messages_as_they_were_skips_held_rows_and_leases_them():
    now = timezone.now()
    rows = [
        InboundMessage.objects.create(
            subject=f"lease{n}.prequalification.exchange",
            payload=json.dumps({"n": n}),
            dedupe_key=f"lease-{n}",
            attempts=n,
            next_attempt_at=now - timedelta(seconds=10 - n),
        )
        for n in range(4)
    ]
    InboundMessage.objects.create(  # not due yet
        subject="later.prequalification.exchange",
        dedupe_key="lease-later",
        next_attempt_at=now + timedelta(hours=1),
    )
    with row_held(InboundMessage, rows[1].pk):
        leased = InboundMessage.objects.lease_due(limit=2, lease_seconds=60)
    # Oldest first, the held row skipped, at most `limit`.
    assert [m.pk for m in leased] == [rows[0].pk, rows[2].pk]
    for message in leased:
        before = next(r for r in rows if r.pk == message.pk)
        stored = InboundMessage.objects.get(pk=message.pk)
        # The instance is the row as it was before the lease, loaded whole.
        for field in InboundMessage._meta.concrete_fields:
            assert getattr(message, field.attname) == getattr(before, field.attname)
        assert not message._state.adding
        # The row itself is leased: one more attempt, due after the lease.
        assert stored.attempts == before.attempts + 1
        assert stored.next_attempt_at is not None
        assert stored.next_attempt_at >= now + timedelta(seconds=59)
    assert InboundMessage.objects.get(pk=rows[1].pk).attempts == 1  # untouched
    assert [
        m.pk for m in InboundMessage.objects.lease_due(limit=5, lease_seconds=60)
    ] == [
        rows[1].pk,
        rows[3].pk,
    ]


def test_first_stored_skips_duplicates_and_old_messages():
    now = timezone.now()
    original = InboundMessage.objects.create(subject="a.b", dedupe_key="same")
    InboundMessage.objects.create(
        subject="a.b",
        dedupe_key="same",
        outcome=MessageOutcome.IGNORED,
        reason=f"duplicate of message {original.pk}",
    )
    ignored_other = InboundMessage.objects.create(
        subject="a.c",
        dedupe_key="other",
        outcome=MessageOutcome.IGNORED,
        reason="not for this listener",
    )
    old = InboundMessage.objects.create(subject="a.d", dedupe_key="old")
    InboundMessage.objects.filter(pk=old.pk).update(
        received_at=now - timedelta(hours=1)
    )
    found = InboundMessage.objects.first_stored(
        ["same", "other", "old", "none"], now - timedelta(minutes=5)
    )
    assert found == [("same", original.pk), ("other", ignored_other.pk)]
