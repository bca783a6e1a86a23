"""The batched moves' fixed statements (claims/querysets.py) return and write what
the ORM queries they stand for do (those queries are their SQLite path, run here
on PostgreSQL by hiding the vendor), and lock what those lock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models import F

from claims import querysets
from claims.models import (
    ClaimEvent,
    ClaimRecord,
    ClaimStatus,
    InboundMessage,
    MessageOutcome,
)
from claims.tests.rowlocks import locked_elsewhere

pytestmark = pytest.mark.django_db(transaction=True)


class _Elsewhere:
    """Django's connection, claiming another vendor: the ORM path is taken."""

    vendor = "elsewhere"

    def __getattr__(self, name: str) -> Any:
        return getattr(connection, name)


@pytest.fixture
def orm_path(monkeypatch):
    def run(call):
        with monkeypatch.context() as patch:
            patch.setattr(querysets, "connection", _Elsewhere())
            return call()

    return run


def _records(asset, count: int, **fields: Any) -> list[ClaimRecord]:
    return [
        ClaimRecord.objects.create(asset=asset, claim_id=f"c-{i}", **fields)
        for i in range(count)
    ]


def test_lock_statuses_reads_what_the_orm_reads_and_locks_the_rows(
    make_asset, orm_path
):
    asset = make_asset()
    one, two, three = _records(asset, 3, status=ClaimStatus.ISSUED)
    ClaimRecord.objects.filter(pk=two.pk).update(status=ClaimStatus.STORED)
    ids = [three.pk, one.pk, two.pk, one.pk, 10**9]
    expected = {
        one.pk: ClaimStatus.ISSUED,
        two.pk: ClaimStatus.STORED,
        three.pk: ClaimStatus.ISSUED,
    }
    with transaction.atomic():
        assert ClaimRecord.objects.lock_statuses(ids) == expected
        assert locked_elsewhere(ClaimRecord, two.pk)
    assert not locked_elsewhere(ClaimRecord, two.pk)
    with transaction.atomic():
        assert orm_path(lambda: ClaimRecord.objects.lock_statuses(ids)) == expected
    assert ClaimRecord.objects.lock_statuses([]) == {}


def test_lock_named_reads_what_the_orm_reads_and_locks_the_rows(make_asset, orm_path):
    asset, other = make_asset(), make_asset()
    mine = _records(asset, 2)
    ClaimRecord.objects.filter(pk=mine[1].pk).update(token_sha256="ab" * 32)
    _records(other, 1)  # the same claim id, another asset
    named = ([asset.pk, asset.pk], ["c-1", "c-0", "c-9"])
    expected = [
        (mine[0].pk, asset.pk, "c-0", ""),
        (mine[1].pk, asset.pk, "c-1", "ab" * 32),
    ]
    with transaction.atomic():
        assert ClaimRecord.objects.lock_named(*named) == expected
        assert locked_elsewhere(ClaimRecord, mine[0].pk)
    with transaction.atomic():
        assert orm_path(lambda: ClaimRecord.objects.lock_named(*named)) == expected


def _fields(record: ClaimRecord) -> dict[str, Any]:
    return {
        f.attname: getattr(record, f.attname) for f in ClaimRecord._meta.concrete_fields
    }


def test_loaded_records_are_what_the_orm_loads(make_asset, orm_path):
    asset = make_asset()
    bare, full = _records(asset, 2)
    ClaimRecord.objects.filter(pk=full.pk).update(
        status=ClaimStatus.PUBLISHED,
        token="t" * 50,
        block_number=2**40,
        issued_at=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        expires_at=datetime(2027, 1, 1, tzinfo=UTC),
        status_list_index=7,
        attribute_name=b"\x00did/svc",
        attribute_value=b"\xff" * 40,
        superseded_by=bare,
    )
    ours = ClaimRecord.objects.loaded([full.pk, bare.pk, 10**9])
    theirs = orm_path(lambda: ClaimRecord.objects.loaded([full.pk, bare.pk]))
    assert [r.pk for r in ours] == [bare.pk, full.pk]
    assert [_fields(r) for r in ours] == [_fields(r) for r in theirs]
    assert all(not r._state.adding and r._state.db == "default" for r in ours)
    assert ours[1].attribute_value is not None
    assert bytes(ours[1].attribute_value) == b"\xff" * 40


def test_a_model_with_a_database_converter_is_not_loaded_raw():
    # ClaimEvent.details is a JSONField: `from_db` alone would skip its decoding.
    assert querysets._plain_select_sql(ClaimEvent) is None
    assert querysets._plain_select_sql(ClaimRecord) is not None


def test_update_together_writes_what_the_orm_writes(make_asset, orm_path):
    asset = make_asset()
    ours, theirs = _records(asset, 2, status=ClaimStatus.STORED, attempts=2)
    lease = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
    values = {
        "status": ClaimStatus.PUBLISHING,
        "attempts": F("attempts") + 1,
        "next_retry_at": lease,
        "last_error": "",
        "block_number": None,
    }
    ClaimRecord.objects.update_together([ours.pk], values)
    orm_path(lambda: ClaimRecord.objects.update_together([theirs.pk], values))
    ours.refresh_from_db()
    theirs.refresh_from_db()
    assert (ours.status, ours.attempts, ours.next_retry_at) == (
        ClaimStatus.PUBLISHING,
        3,
        lease,
    )
    same = {"id", "claim_id", "created_at", "updated_at"}
    assert {k: v for k, v in _fields(ours).items() if k not in same} == {
        k: v for k, v in _fields(theirs).items() if k not in same
    }


def test_update_together_hands_other_expressions_to_the_orm(make_asset):
    asset = make_asset()
    (record,) = _records(asset, 1, attempts=3)
    ClaimRecord.objects.update_together(
        [record.pk], {"attempts": F("attempts") * 2, "status": ClaimStatus.ISSUED}
    )
    record.refresh_from_db()
    assert (record.attempts, record.status) == (6, ClaimStatus.ISSUED)
    # An increment of another column is not the column's own: the ORM's too.
    ClaimRecord.objects.filter(pk=record.pk).update(role_version=40)
    ClaimRecord.objects.update_together(
        [record.pk], {"attempts": F("role_version") + 1}
    )
    record.refresh_from_db()
    assert record.attempts == 41
    assert querysets._own_increment("attempts", F("role_version") + 1) is None
    assert querysets._own_increment("attempts", F("attempts") + 1) == 1


def test_update_together_hands_a_model_instance_to_the_orm(make_asset):
    asset = make_asset()
    old, new = _records(asset, 2)
    ClaimRecord.objects.update_together([old.pk], {"superseded_by": new})
    old.refresh_from_db()
    assert old.superseded_by_id == new.pk


def _message(outcome: str, **fields: Any) -> InboundMessage:
    return InboundMessage.objects.create(
        subject="s", payload="{}", outcome=outcome, **fields
    )


def test_failed_naming_finds_the_failed_messages_about_the_records(
    make_asset, orm_path
):
    asset, other = make_asset(), make_asset()
    one, two = _records(asset, 2)
    (elsewhere,) = _records(other, 1)
    failed = MessageOutcome.FAILED
    by_record = _message(failed, record=one)
    by_name = _message(failed, claim_id="c-1", asset_did=asset.did)
    # Named by id and by the other record's name: its id wins.
    both = _message(failed, record=one, claim_id="c-1", asset_did=asset.did)
    _message(MessageOutcome.PROCESSED, record=one)  # settled already
    _message(failed, claim_id="c-1", asset_did=other.did)  # another asset's c-1
    _message(failed, claim_id="c-0", asset_did=other.did)  # elsewhere's own claim
    _message(failed, record=elsewhere)
    _message(failed, claim_id="c-9", asset_did=asset.did)  # no such claim
    expected = [(by_record.pk, one.pk), (by_name.pk, two.pk), (both.pk, one.pk)]
    ids = [two.pk, one.pk, 10**9]
    assert InboundMessage.objects.failed_naming(ids) == expected
    assert orm_path(lambda: InboundMessage.objects.failed_naming(ids)) == expected
    assert InboundMessage.objects.failed_naming([]) == []
