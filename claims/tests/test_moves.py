"""Many compare-and-set moves in one transaction (claims/moves.py) and through the
listener's database threads (claims.batches.BATCHED)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from claims import batches, moves, transitions
from claims.dbthreads import DatabaseThreads, db, using
from claims.models import (
    LISTENER,
    RECONCILER,
    ClaimRecord,
    ClaimStatus,
    InboundMessage,
    MessageOutcome,
)

pytestmark = pytest.mark.django_db


def _record(asset, claim_id: str, status: str) -> ClaimRecord:
    return ClaimRecord.objects.create(asset=asset, claim_id=claim_id, status=status)


def _history(record: ClaimRecord) -> list[tuple[str, str, str, str]]:
    return list(
        record.events.order_by("id").values_list(
            "kind", "from_status", "to_status", "message"
        )
    )


def test_only_records_in_the_expected_status_move_and_get_an_event(make_asset):
    asset = make_asset()
    one, two = (_record(asset, f"c-{i}", ClaimStatus.ISSUED) for i in (1, 2))
    ahead = _record(asset, "c-3", ClaimStatus.PUBLISHING)
    calls = [
        {"record_id": one.pk, "cid": "cid-1", "actor": LISTENER},
        {"record_id": two.pk, "cid": "cid-2", "actor": LISTENER},
        {"record_id": ahead.pk, "cid": "cid-3", "actor": LISTENER},
        # The same record twice: the second finds it stored already.
        {"record_id": one.pk, "cid": "cid-9", "actor": RECONCILER},
        {"record_id": 10**9, "cid": "cid-0", "actor": LISTENER},  # no such record
    ]
    assert moves.claim_record_stored_many(calls) == [True, True, False, False, False]
    for record, cid in ((one, "cid-1"), (two, "cid-2")):
        record.refresh_from_db()
        assert (record.status, record.cid) == (ClaimStatus.STORED, cid)
        assert record.next_retry_at is not None  # leased, as the single move does
        assert _history(record) == [
            ("stored", "issued", "stored", f"Token stored as {cid}.")
        ]
    ahead.refresh_from_db()
    assert (ahead.status, ahead.cid) == (ClaimStatus.PUBLISHING, "")
    assert _history(ahead) == []


def test_the_batched_moves_write_what_the_single_ones_write(make_asset):
    asset = make_asset()
    single, batched = (_record(asset, f"c-{i}", ClaimStatus.STORED) for i in (1, 2))
    assert transitions.claim_begin_publishing(record_id=single.pk, actor=LISTENER)
    assert moves.claim_begin_publishing_many(
        [{"record_id": batched.pk, "actor": LISTENER}]
    ) == [True]
    published: dict[str, Any] = {
        "actor": LISTENER,
        "service_id": "svc",
        "tx_hash": "0xabc",
        "block_number": 7,
        "message": "Published in block 7; confirmed from chain.",
    }
    assert transitions.claim_mark_published(record_id=single.pk, **published)
    assert moves.claim_mark_published_many(
        [{"record_id": batched.pk, **published}]
    ) == [True]
    columns = ("status", "attempts", "service_id", "tx_hash", "block_number")
    rows = ClaimRecord.objects.filter(pk__in=[single.pk, batched.pk])
    assert len({row for row in rows.values_list(*columns)}) == 1
    assert _history(single) == _history(batched)
    assert [e.details for e in single.events.order_by("id")] == [
        e.details for e in batched.events.order_by("id")
    ]
    assert all(r.published_at is not None for r in rows)
    # A second publication of either is refused: it is no longer publishing.
    assert moves.claim_mark_published_many(
        [{"record_id": batched.pk, **published}]
    ) == [False]
    assert batched.events.count() == 2


def test_publishing_many_settles_failed_messages_of_the_moved_only(make_asset):
    asset = make_asset()
    moving = _record(asset, "c-1", ClaimStatus.PUBLISHING)
    staying = _record(asset, "c-2", ClaimStatus.STORED)

    def failed(claim_id: str, record: ClaimRecord | None) -> InboundMessage:
        return InboundMessage.objects.create(
            subject="s",
            payload="{}",
            outcome=MessageOutcome.FAILED,
            asset_did=asset.did,
            claim_id=claim_id,
            record=record,
        )

    by_claim, by_record = failed("c-1", None), failed("", moving)
    other = failed("c-2", staying)
    result = moves.claim_mark_published_many(
        [
            {"record_id": moving.pk, "actor": LISTENER, "service_id": "a"},
            {"record_id": staying.pk, "actor": LISTENER, "service_id": "b"},
        ]
    )
    assert result == [True, False]
    for message in (by_claim, by_record):
        message.refresh_from_db()
        assert message.outcome == MessageOutcome.PROCESSED
        assert message.reason == transitions.REASON_SETTLED.format(record=moving.pk)
    other.refresh_from_db()
    assert other.outcome == MessageOutcome.FAILED


@pytest.mark.django_db(transaction=True)
async def test_the_listeners_pool_gathers_a_burst_of_moves(make_asset):
    asset = await sync_to_async(make_asset)()
    records = [
        await sync_to_async(_record)(asset, f"c-{i}", ClaimStatus.STORED)
        for i in range(12)
    ]
    pool = DatabaseThreads(3, name="evops-db-test", batched=batches.BATCHED)
    try:
        with using(pool):
            # Every record twice at once: exactly one of each pair wins.
            results = await asyncio.gather(
                *(
                    db(transitions.claim_begin_publishing)(
                        record_id=record.pk, actor=LISTENER
                    )
                    for record in records + records
                )
            )
    finally:
        await pool.aclose()
    assert [a + b for a, b in zip(results[:12], results[12:], strict=True)] == [1] * 12
    for record in records:
        await record.arefresh_from_db()
        assert (record.status, record.attempts) == (ClaimStatus.PUBLISHING, 1)
        assert await record.events.acount() == 1


def test_any_of_binds_the_ids_as_one_array(make_asset):
    from django.db import connection
    from django.db.models import F
    from django.test.utils import CaptureQueriesContext

    from claims.querysets import AnyOf

    asset = make_asset()
    records = [_record(asset, f"c-{i}", ClaimStatus.STORED) for i in range(3)]
    wanted = [records[0].pk, records[2].pk, 10**9]
    with CaptureQueriesContext(connection) as queries:
        found = list(
            ClaimRecord.objects.filter(AnyOf(F("pk"), wanted)).values_list(
                "pk", flat=True
            )
        )
    assert sorted(found) == wanted[:2]
    assert "= ANY(" in queries.captured_queries[0]["sql"]
    assert list(ClaimRecord.objects.filter(AnyOf(F("pk"), []))) == []


def _verified(asset, claim_id: str, sha: str) -> dict[str, Any]:
    return {
        "asset": asset,
        "claim_id": claim_id,
        "token": f"token-{sha}",
        "token_sha256": sha,
        "issuer_did": "did:ethr:0x" + "ab" * 20,
        "role": "role.ns",
        "role_version": 1,
        "actor": LISTENER,
        "details": {"source": "test"},
    }


_SOON = 2_000_000_000
_STATUS_URL = "https://hub/v1/status-list/urn:uuid:7"


def _signed_token(**payload: Any) -> str:
    from evops.protocol.dids import DID
    from evops.protocol.jwt import HEADER_ES256K, sign_token
    from evops.protocol.keys import LocalKeySigner

    signer = LocalKeySigner.generate()
    did = DID.for_address(signer.address).canonical
    body = {"claimData": {"claimType": "r", "claimTypeVersion": 1}, "did": did}
    return sign_token(HEADER_ES256K, {**body, **payload, "iss": did}, signer)


# Tokens whose facts differ: an expiry and a status entry, an entry that cannot be
# used (noted on the record), and no token at all to read.
_TOKENS = {
    "a1": _signed_token(
        exp=_SOON,
        credentialStatus={
            "type": "StatusList2021Entry",
            "statusListIndex": "4",
            "statusListCredential": _STATUS_URL,
        },
    ),
    "a2": _signed_token(credentialStatus={"type": "Nope"}),
}


def _burst_scene(asset) -> list[dict[str, Any]]:
    """A requested claim, another, a published one re-issued, an unknown one, and
    a requested claim whose token cannot be read."""
    _record(asset, "c-1", ClaimStatus.REQUESTED)
    _record(asset, "c-2", ClaimStatus.REQUESTED)
    ClaimRecord.objects.create(
        asset=asset, claim_id="c-3", status=ClaimStatus.PUBLISHED, token_sha256="old"
    )
    _record(asset, "c-5", ClaimStatus.REQUESTED)
    scene = [
        _verified(asset, "c-1", "a1"),
        _verified(asset, "c-2", "a2"),
        _verified(asset, "c-3", "a3"),
        _verified(asset, "c-4", "a4"),
        _verified(asset, "c-1", "a1"),  # the same notice again
        _verified(asset, "c-5", "a5"),
    ]
    for call in scene:
        call["token"] = _TOKENS.get(call["token_sha256"], call["token"])
    scene[0]["hub_expiry"] = str((_SOON - 60) * 1000)  # the hub's earlier expiry
    return scene


def _outcome(asset) -> list[Any]:
    return [
        (
            r.claim_id.split("@")[0],  # a set-aside record's name carries its pk
            r.status,
            r.token_sha256,
            r.lifecycle_checked_at is not None,
            r.expires_at,
            r.status_list_url,
            r.status_list_index,
            [(*e[:3], e[3].split(":")[0]) for e in _history(r)],
        )
        for r in ClaimRecord.objects.filter(asset=asset).order_by("claim_id")
    ]


def test_a_burst_of_verified_credentials_is_recorded_as_one_by_one(make_asset):
    from claims import issued

    one_by_one, together = make_asset(), make_asset()
    singles = [issued.claim_record_verified(**c) for c in _burst_scene(one_by_one)]
    batched = issued.claim_record_verified_many(_burst_scene(together))
    assert [(r.claim_id, r.status) for r in batched] == [
        (r.claim_id, r.status) for r in singles
    ]
    assert [r.status for r in batched] == [ClaimStatus.ISSUED] * 6
    assert _outcome(one_by_one) == _outcome(together)
    facts = {r.claim_id: r for r in batched}
    # The facts written with the move are those of the token (and the hub's expiry).
    assert facts["c-1"].expires_at == datetime.fromtimestamp(_SOON - 60, tz=UTC)
    assert (facts["c-1"].status_list_url, facts["c-1"].status_list_index) == (
        _STATUS_URL,
        4,
    )
    stored = ClaimRecord.objects.filter(asset=together, status=ClaimStatus.ISSUED)
    assert all(r.lifecycle_checked_at is not None for r in stored)
    kinds = list(facts["c-2"].events.values_list("kind", flat=True))
    assert kinds == ["issued", "status_entry_unusable"]
    names = ClaimRecord.objects.filter(asset=together).values_list("claim_id")
    assert any(n.startswith("c-3@") for (n,) in names)  # the earlier one set aside


def test_written_notes_of_a_burst_are_those_of_one_by_one(make_asset):
    from evops.integrations.chain import PublishResult

    asset = make_asset()
    single, batched = (_record(asset, f"c-{i}", ClaimStatus.PUBLISHING) for i in (1, 2))

    def written(record: ClaimRecord) -> dict[str, Any]:
        return {
            "record_id": record.pk,
            "actor": LISTENER,
            "service_id": f"svc-{record.pk}",
            "result": PublishResult("0xfeed", 9, 50_000, "asset"),
            "attribute_value": b"value",
        }

    transitions.claim_record_written(**written(single))
    assert moves.claim_record_written_many([written(batched)]) == [None]
    columns = ("tx_hash", "block_number", "attribute_name", "attribute_value")
    rows = ClaimRecord.objects.filter(pk__in=[single.pk, batched.pk])
    assert len({bytes(r[3]) and r for r in rows.values_list(*columns)}) == 1
    for record in (single, batched):
        (event,) = record.events.all()
        assert (event.kind, event.details["tx_hash"]) == ("written", "0xfeed")
        assert event.message == f"Service entry svc-{record.pk} written in 0xfeed."
