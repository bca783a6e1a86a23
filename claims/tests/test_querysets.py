"""`insert_rows`: the listener's batched inserts write what `bulk_create` writes."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from claims.history import event_row
from claims.models import (
    Actor,
    ClaimEvent,
    ClaimRecord,
    ClaimStatus,
    EventActor,
    InboundMessage,
)
from claims.querysets import insert_rows

pytestmark = pytest.mark.django_db

ACTOR = Actor(EventActor.LISTENER, "test")


def _records(asset, prefix: str, count: int) -> list[ClaimRecord]:
    return [
        ClaimRecord(
            asset=asset,
            claim_id=f"{prefix}-{i}",
            role="role.roles.app.apps.org.iam.ewc",
            role_version=1,
            status=ClaimStatus.REQUESTED,
        )
        for i in range(count)
    ]


def _columns(row) -> dict[str, object]:
    skip = {"id", "created_at", "updated_at"}
    return {
        f.attname: getattr(row, f.attname)
        for f in type(row)._meta.concrete_fields
        if f.attname not in skip
    }


def test_rows_get_their_ids_and_the_values_bulk_create_writes(make_asset):
    asset = make_asset()
    ours = insert_rows(_records(asset, "ours", 3))
    theirs = ClaimRecord.objects.bulk_create(_records(asset, "theirs", 3))
    assert all(row.pk and not row._state.adding for row in ours)
    stored = {r.claim_id: r for r in ClaimRecord.objects.filter(asset=asset)}
    for mine, other in zip(ours, theirs, strict=True):
        saved = stored[mine.claim_id]
        assert saved.pk == mine.pk
        assert saved.created_at is not None and saved.updated_at is not None
        expected = _columns(stored[other.claim_id]) | {"claim_id": mine.claim_id}
        assert _columns(saved) == expected
    events = insert_rows(
        [
            event_row(
                row.pk,
                actor=ACTOR,
                kind="requested",
                to_status=ClaimStatus.REQUESTED,
                details={"already_existed": False, "nested": [1, "ü"]},
            )
            for row in ours
        ]
    )
    saved_event = ClaimEvent.objects.get(pk=events[0].pk)
    assert saved_event.record_id == ours[0].pk
    assert saved_event.details == {"already_existed": False, "nested": [1, "ü"]}
    assert saved_event.actor_label == "test"


def test_an_inbound_message_gets_its_arrival_time():
    (row,) = insert_rows(
        [InboundMessage(subject="a.prequalification.exchange", payload="{}")]
    )
    saved = InboundMessage.objects.get(pk=row.pk)
    assert saved.received_at is not None
    assert saved.received_at == row.received_at


def test_a_refused_row_raises_djangos_integrity_error_and_inserts_nothing(
    make_asset,
):
    asset = make_asset()
    insert_rows(_records(asset, "dup", 1))
    with pytest.raises(IntegrityError), transaction.atomic():
        insert_rows(_records(asset, "new", 2) + _records(asset, "dup", 1))
    assert ClaimRecord.objects.filter(asset=asset).count() == 1


def test_nothing_to_insert_is_no_query(django_assert_num_queries):
    with django_assert_num_queries(0):
        assert insert_rows([]) == []


def test_values_sent_as_they_are_match_what_bulk_create_writes(make_asset):
    # Plain str / int / bool values skip the fields' preparation; a choices member
    # (a str subclass), a lazy string, a big integer, None in a nullable column and
    # a row given its foreign key as an object must all come out as bulk_create's.
    from django.utils.functional import lazy

    from claims.models import MessageKind, MessageOutcome

    asset = make_asset()
    (record,) = insert_rows(_records(asset, "fk", 1))
    lazy_text = lazy(lambda: "lazy listener", str)()

    def messages(tag: str) -> list[InboundMessage]:
        return [
            InboundMessage(
                subject=f"{tag}.prequalification.exchange",
                payload='{"did": "ü"}',
                payload_size=2**31 - 1,
                truncated=True,
                dedupe_key=f"{tag}-1",
                stream_key=f"{tag}:1",
                stream_sequence=2**62,
                kind=MessageKind.PREQUALIFICATION,
                outcome=MessageOutcome.PENDING,
                listener=lazy_text,
                record=record,
            ),
            InboundMessage(
                subject=f"{tag}.x",
                payload="",
                dedupe_key=f"{tag}-2",
                stream_sequence=None,
                kind="unknown",
                attempts=0,
                record_id=None,
            ),
        ]

    ours = insert_rows(messages("ours"))
    theirs = InboundMessage.objects.bulk_create(messages("theirs"))
    skip = {"id", "received_at", "subject", "dedupe_key", "stream_key"}
    for mine, other in zip(ours, theirs, strict=True):
        saved, expected = (
            InboundMessage.objects.get(pk=mine.pk),
            InboundMessage.objects.get(pk=other.pk),
        )
        assert {k: v for k, v in _columns(saved).items() if k not in skip} == {
            k: v for k, v in _columns(expected).items() if k not in skip
        }
    assert InboundMessage.objects.get(pk=ours[0].pk).listener == "lazy listener"
    assert InboundMessage.objects.get(pk=ours[0].pk).record_id == record.pk
