"""Pipeline, consumer and reconciliation against small fakes of the integrations.

The same behaviours run against the real peers in test_end_to_end.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from claims import consumer, inbox, pipeline, reconcile, transitions
from claims.models import (
    LISTENER,
    RECONCILER,
    ClaimEvent,
    ClaimRecord,
    ClaimStatus,
    InboundMessage,
    MessageOutcome,
)
from claims.tests.fakes import ROLE, FakeError, make_token
from evops.protocol.credentials import token_sha256
from evops.protocol.dids import DID
from evops.protocol.keys import LocalKeySigner

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def leased_ids(*, limit: int, lease_seconds: float) -> list[int]:
    """Lease as the listener does; the ids of the leased messages."""
    leased = inbox.inbound_lease_due_with_assets(
        limit=limit, lease_seconds=lease_seconds
    )
    return [message.pk for message in leased.messages]


async def _message(subject: str, payload) -> InboundMessage:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return await sync_to_async(inbox.inbound_record)(subject=subject, payload=raw)


async def _process(message: InboundMessage, integrations: Any) -> pipeline.Outcome:
    return await consumer.inbound_process(
        message_id=message.pk, integrations=integrations, actor=LISTENER
    )


def _issue_subject(asset) -> str:
    return f"issue-credential.claim-exchange.{asset.did}.ewf-dev"


async def _requested(asset, integrations: Any) -> ClaimRecord:
    """Process a prequalification request for `asset`; the claim it filed."""
    await _process(
        await _message("t.prequalification.exchange", {"did": asset.did}), integrations
    )
    return await ClaimRecord.objects.aget(asset=asset)


async def _notify_issued(
    asset, record: ClaimRecord, integrations: Any
) -> pipeline.Outcome:
    """Process the cache server's issue-credential notice for `record`."""
    notice = {"type": "issue-credential", "claimId": record.claim_id}
    return await _process(await _message(_issue_subject(asset), notice), integrations)


async def test_request_then_issue_publishes_once(make_asset, fakes):
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    request = await _message("tok.prequalification.exchange", {"did": asset.did})
    outcome = await _process(request, integrations)
    assert outcome.outcome == MessageOutcome.PROCESSED
    record = await ClaimRecord.objects.aget(asset=asset)
    assert record.status == ClaimStatus.REQUESTED
    assert cache.requests == [(asset.did, integrations.prequalification_role)]

    token = cache.issue(record.claim_id)
    outcome = await _notify_issued(asset, record, integrations)
    assert outcome.outcome == MessageOutcome.PROCESSED
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.PUBLISHED
    assert record.token_sha256 == token_sha256(token)
    assert record.tx_hash and record.cid and record.service_id
    assert len(chain.writes) == 1
    kinds = [e.kind async for e in record.events.order_by("id")]
    assert kinds == [
        "requested",
        "issued",
        "stored",
        "publishing",
        "written",
        "published",
    ]


async def test_duplicate_and_racing_notices_write_once(make_asset, fakes, settings):
    settings.DUPLICATE_WINDOW_SECONDS = 0  # defeat the inbox shortcut: test the CAS
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    record = await _requested(asset, integrations)
    cache.issue(record.claim_id)
    notice = {"type": "issue-credential", "claimId": record.claim_id}
    messages = [await _message(_issue_subject(asset), notice) for _ in range(3)]
    await asyncio.gather(
        *(_process(m, integrations) for m in messages),
        reconcile.reconcile_assets(
            assets=[asset], integrations=integrations, actor=RECONCILER, concurrency=2
        ),
    )
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.PUBLISHED
    assert len(chain.writes) == 1


async def test_reconcile_publishes_missing_and_marks_present(make_asset, fakes):
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    signer = integrations.signer_for(asset)
    await cache.request_claim(signer, asset.did, role=await cache.role(None, None, "r"))
    claim_id = next(iter(cache.claims))
    cache.issue(claim_id)
    result = await reconcile.reconcile_assets(
        assets=[asset], integrations=integrations, actor=RECONCILER, concurrency=1
    )
    assert (result.published, result.already_present, result.errors) == (1, 0, [])
    again = await reconcile.reconcile_assets(
        assets=[asset], integrations=integrations, actor=RECONCILER, concurrency=1
    )
    assert (again.published, again.already_present) == (0, 1)
    assert len(chain.writes) == 1


async def test_reconcile_finds_entry_written_before_a_crash(make_asset, fakes):
    """A record stuck in publishing after its write landed: no second write."""
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    record = await _requested(asset, integrations)
    cache.issue(record.claim_id)
    chain.fail_resolve = [None]  # placeholder replaced below

    # First attempt: written, then the confirming resolve fails (transient).
    calls = {"n": 0}
    real_resolve = chain.resolve_document

    async def flaky(did):
        calls["n"] += 1
        if calls["n"] == 2:
            raise FakeError("rpc down", permanent=False)
        return await real_resolve(did)

    chain.fail_resolve = []
    chain.resolve_document = flaky
    await _notify_issued(asset, record, integrations)
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.STORED
    assert record.tx_hash  # kept for the operator
    status = await pipeline.claim_advance(
        record_id=record.pk, integrations=integrations, actor=LISTENER
    )
    assert status == ClaimStatus.PUBLISHED
    assert len(chain.writes) == 1


async def test_transient_failures_retry_until_published(
    make_asset, fakes, fast_retries
):
    integrations, cache, store, chain = fakes
    asset = await sync_to_async(make_asset)()
    record = await _requested(asset, integrations)
    cache.issue(record.claim_id)
    store.fail_next = [FakeError("store 503", permanent=False)]
    chain.fail_next = [FakeError("rpc unreachable", permanent=False)] * 2
    await _notify_issued(asset, record, integrations)
    for _ in range(5):
        for pk in await sync_to_async(transitions.claims_lease_due)(limit=10):
            await pipeline.claim_process_due(
                record_id=pk, integrations=integrations, actor=LISTENER
            )
        await record.arefresh_from_db()
        if record.status == ClaimStatus.PUBLISHED:
            break
    assert record.status == ClaimStatus.PUBLISHED
    assert len(chain.writes) == 1
    assert await record.events.filter(kind="retry_scheduled").acount() == 3


async def test_permanent_chain_error_fails_with_reason(make_asset, fakes):
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    record = await _requested(asset, integrations)
    cache.issue(record.claim_id)
    chain.fail_next = [FakeError("transaction reverted: not owner", permanent=True)]
    await _notify_issued(asset, record, integrations)
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.FAILED
    assert "transaction reverted: not owner" in record.last_error


async def test_cache_server_outage_defers_the_message(make_asset, fakes, fast_retries):
    integrations, cache, _, _ = fakes
    asset = await sync_to_async(make_asset)()
    cache.fail_next = [FakeError("502", permanent=False)]
    message = await _message("t.prequalification.exchange", {"did": asset.did})
    await sync_to_async(leased_ids)(limit=10, lease_seconds=60)
    outcome = await _process(message, integrations)
    assert outcome.outcome == MessageOutcome.PENDING
    ids = await sync_to_async(leased_ids)(limit=10, lease_seconds=60)
    assert ids == [message.pk]
    outcome = await _process(message, integrations)
    assert outcome.outcome == MessageOutcome.PROCESSED


@pytest.mark.parametrize(
    "case", ["forged", "tampered", "expired", "wrong_subject", "unauthorised"]
)
async def test_bad_tokens_are_never_published(make_asset, fakes, case):
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    other = await sync_to_async(make_asset)()
    record = await _requested(asset, integrations)
    good = make_token(cache.issuer, asset.did)
    token = {
        "forged": make_token(LocalKeySigner.generate(), asset.did).replace(
            make_token(LocalKeySigner.generate(), asset.did).split(".")[0], "x", 0
        ),
        "tampered": good[:-10] + ("A" if good[-10] != "A" else "B") + good[-9:],
        "expired": make_token(cache.issuer, asset.did, exp=int(time.time()) - 10),
        "wrong_subject": make_token(cache.issuer, other.did),
        "unauthorised": make_token(LocalKeySigner.generate(), asset.did),
    }[case]
    cache.issue(record.claim_id, token=token)
    outcome = await _notify_issued(asset, record, integrations)
    assert outcome.outcome == MessageOutcome.REJECTED
    assert outcome.reason.startswith(pipeline.REASON_CREDENTIAL_REJECTED)
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.REJECTED
    assert record.rejection_reason
    assert chain.writes == []


async def test_forged_legacy_message_does_not_touch_the_claim(make_asset, fakes):
    integrations, _, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    record = await _requested(asset, integrations)
    forged = make_token(LocalKeySigner.generate(), asset.did)
    legacy = {"id": record.claim_id, "requester": asset.did, "issuedToken": forged}
    outcome = await _process(
        await _message(f"{asset.did}.claim.exchange", legacy), integrations
    )
    assert outcome.outcome == MessageOutcome.REJECTED
    # The hub has not accepted the claim: the message's word counts for nothing.
    assert "claim_not_accepted" in outcome.reason
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.REQUESTED
    assert chain.writes == []


async def test_legacy_message_with_a_good_token_is_published(make_asset, fakes):
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    record = await _requested(asset, integrations)
    token = cache.issue(record.claim_id)
    legacy = {"id": record.claim_id, "requester": asset.did, "issuedToken": token}
    outcome = await _process(
        await _message(f"{asset.did}.claim.exchange", legacy), integrations
    )
    assert outcome.outcome == MessageOutcome.PROCESSED
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.PUBLISHED
    assert len(chain.writes) == 1


async def test_legacy_message_for_a_claim_the_hub_does_not_know_is_refused(
    make_asset, fakes
):
    """A validly signed token on a claim id the cache server never heard of."""
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    token = make_token(cache.issuer, asset.did)
    legacy = {"id": "legacy-1", "requester": asset.did, "issuedToken": token}
    outcome = await _process(
        await _message(f"{asset.did}.claim.exchange", legacy), integrations
    )
    assert outcome.outcome == MessageOutcome.REJECTED
    assert "claim_unknown" in outcome.reason
    assert not await ClaimRecord.objects.filter(claim_id="legacy-1").aexists()
    assert chain.writes == []


async def test_rejection_notice_is_checked_with_the_cache_server(make_asset, fakes):
    integrations, cache, _, _ = fakes
    asset = await sync_to_async(make_asset)()
    record = await _requested(asset, integrations)
    subject = f"reject-credential.claim-exchange.{asset.did}.ewf-dev"
    notice = {"type": "reject-credential", "claimId": record.claim_id}
    early = await _process(await _message(subject, notice), integrations)
    assert early.reason == pipeline.REASON_CLAIM_NOT_REJECTED
    cache.reject(record.claim_id, "missing documents")
    await sync_to_async(InboundMessage.objects.all().delete)()
    outcome = await _process(await _message(subject, notice), integrations)
    assert outcome.outcome == MessageOutcome.PROCESSED
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.REJECTED
    assert "missing documents" in record.last_error


async def test_rejection_notice_on_an_issuer_subject_reaches_our_claim(
    make_asset, fakes
):
    """The cache server sends reject-credential to the issuers, not the asset."""
    integrations, cache, _, _ = fakes
    asset = await sync_to_async(make_asset)()
    record = await _requested(asset, integrations)
    cache.reject(record.claim_id, "meter not certified")
    issuer_subject = (
        "reject-credential.claim-exchange."
        "did:ethr:volta:0x0000000000000000000000000000000000000000.ewf-dev"
    )
    notice = {"type": "reject-credential", "claimId": record.claim_id}
    outcome = await _process(await _message(issuer_subject, notice), integrations)
    assert outcome.outcome == MessageOutcome.PROCESSED
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.REJECTED
    assert "meter not certified" in record.last_error

    stranger = {"type": "reject-credential", "claimId": "not-one-of-ours"}
    ignored = await _process(await _message(issuer_subject, stranger), integrations)
    assert ignored.outcome == MessageOutcome.IGNORED
    assert ignored.reason == consumer.REASON_UNKNOWN_ASSET


async def test_unknown_and_inactive_assets_are_ignored(make_asset, fakes):
    integrations, cache, _, _ = fakes
    inactive = await sync_to_async(make_asset)(active=False)
    stranger = LocalKeySigner.generate()
    unknown = await _process(
        await _message(
            "t.prequalification.exchange",
            {"did": f"did:ethr:volta:{stranger.address}"},
        ),
        integrations,
    )
    assert (unknown.outcome, unknown.reason) == (
        "ignored",
        consumer.REASON_UNKNOWN_ASSET,
    )
    off = await _process(
        await _message("t.prequalification.exchange", {"did": inactive.did}),
        integrations,
    )
    assert off.reason == consumer.REASON_INACTIVE_ASSET
    assert cache.requests == []


async def test_the_assets_loaded_with_the_lease_are_the_ones_used(make_asset, fakes):
    """The worker acts on the asset row leased with the message, read once."""
    integrations, cache, _, _ = fakes
    asset = await sync_to_async(make_asset)()
    message = await _message("t.prequalification.exchange", {"did": asset.did})
    # Leased before it was deactivated: the lease's row says active, so it is
    # filed; a lease that found no asset for the address ignores the message.
    await sync_to_async(type(asset).objects.filter(pk=asset.pk).update)(active=False)
    filed = await consumer.inbound_process(
        message_id=message.pk,
        integrations=integrations,
        actor=LISTENER,
        assets={asset.address: asset},
    )
    assert (filed.outcome, filed.reason) == ("processed", pipeline.REASON_FILED)
    assert len(cache.requests) == 1
    other = await _message("u.prequalification.exchange", {"did": asset.did})
    none = await consumer.inbound_process(
        message_id=other.pk,
        integrations=integrations,
        actor=LISTENER,
        assets={asset.address: None},
    )
    assert (none.outcome, none.reason) == ("ignored", consumer.REASON_UNKNOWN_ASSET)
    # Without a lease's assets, the asset is read: now inactive.
    third = await _message("v.prequalification.exchange", {"did": asset.did})
    read = await _process(third, integrations)
    assert read.reason == consumer.REASON_INACTIVE_ASSET
    assert len(cache.requests) == 1


async def test_second_credential_of_the_same_role_gets_its_own_service_id(
    make_asset, fakes, settings
):
    # A published credential's entry is removed by the lifecycle sweep once its
    # replacement is on chain (claims.lifecycle): the replacement must not reuse
    # its id, or a reader keyed by id would lose both with the removal.
    settings.DUPLICATE_WINDOW_SECONDS = 0
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    for n in range(2):
        await _process(
            await _message("t.prequalification.exchange", {"did": asset.did}),
            integrations,
        )
        record = await ClaimRecord.objects.filter(asset=asset).afirst()
        assert record is not None
        cache.issue(record.claim_id, exp=int(time.time()) + 3600 + n)
        await _notify_issued(asset, record, integrations)
    assert len(chain.writes) == 2
    assert chain.writes[0][1]["id"] != chain.writes[1][1]["id"]
    assert chain.writes[0][1]["hash"] != chain.writes[1][1]["hash"]


# --- work queued in the console ------------------------------------------------------


async def _queued(kind: str, assets: list[Any], user: Any) -> list[InboundMessage]:
    return await sync_to_async(inbox.inbound_enqueue)(
        kind=kind, dids=[a.did for a in assets], user=user
    )


async def test_queued_prequalification_is_filed_in_the_users_name(
    make_asset, fakes, admin_user
):
    integrations, cache, _, _ = fakes
    asset = await sync_to_async(make_asset)()
    [message] = await _queued("prequalification", [asset], admin_user)
    outcome = await _process(message, integrations)
    assert (outcome.outcome, outcome.reason) == ("processed", pipeline.REASON_FILED)
    record = await ClaimRecord.objects.aget(asset=asset)
    event = await ClaimEvent.objects.aget(record=record)
    assert (event.kind, event.actor, event.actor_label, event.user_id) == (
        "requested",
        "staff",
        admin_user.get_username(),
        admin_user.pk,
    )
    assert len(cache.requests) == 1


async def test_queued_reconciliation_publishes_in_the_users_name(
    make_asset, fakes, admin_user
):
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    signer = integrations.signer_for(asset)
    await cache.request_claim(signer, asset.did, role=await cache.role(None, None, "r"))
    cache.issue(next(iter(cache.claims)))
    [message] = await _queued("reconcile", [asset], admin_user)
    # A lease loads the asset a queued reconciliation names, as for any message.
    leased = await sync_to_async(inbox.inbound_lease_due_with_assets)(
        limit=10, lease_seconds=60
    )
    assert leased.assets == {asset.address: asset}
    outcome = await consumer.inbound_process(
        message_id=message.pk,
        integrations=integrations,
        actor=LISTENER,
        message=leased.messages[0],
        assets=leased.assets,
    )
    assert outcome.outcome == "processed"
    assert outcome.reason == ("published 1, already on chain 0, pending 0, rejected 0")
    assert len(chain.writes) == 1
    record = await ClaimRecord.objects.aget(asset=asset)
    assert record.status == ClaimStatus.PUBLISHED
    actors = {
        (e.actor, e.user_id) async for e in ClaimEvent.objects.filter(record=record)
    }
    assert actors == {("staff", admin_user.pk)}
    await message.arefresh_from_db()
    assert (message.outcome, message.kind, message.asset_did) == (
        "processed",
        "reconcile",
        asset.did,
    )


async def test_queued_reconciliation_of_a_failing_peer_is_retried(
    make_asset, fakes, admin_user, fast_retries
):
    integrations, cache, _, _ = fakes
    asset = await sync_to_async(make_asset)()
    cache.fail_next = [FakeError("502 Bad Gateway", permanent=False)]
    [message] = await _queued("reconcile", [asset], admin_user)
    await sync_to_async(leased_ids)(limit=10, lease_seconds=60)
    outcome = await _process(message, integrations)
    assert outcome.outcome == MessageOutcome.PENDING
    assert "502 Bad Gateway" in outcome.reason
    await message.arefresh_from_db()
    assert message.outcome == MessageOutcome.PENDING
    assert "502 Bad Gateway" in message.reason
    outcome = await _process(message, integrations)
    assert outcome.outcome == MessageOutcome.PROCESSED


async def test_queued_reconciliations_that_cannot_run_say_why(
    make_asset, fakes, admin_user
):
    integrations, cache, _, _ = fakes
    stranger = DID.for_address(LocalKeySigner.generate().address).canonical
    inactive = await sync_to_async(make_asset)(active=False)
    unknown, off = await sync_to_async(inbox.inbound_enqueue)(
        kind="reconcile", dids=[stranger, inactive.did], user=admin_user
    )
    garbage = await sync_to_async(inbox.inbound_record)(
        subject="console.reconcile", payload=b'{"did": 7}', kind="reconcile"
    )
    results = [await _process(m, integrations) for m in (unknown, off, garbage)]
    assert [(r.outcome, r.reason) for r in results] == [
        ("ignored", consumer.REASON_UNKNOWN_ASSET),
        ("ignored", consumer.REASON_INACTIVE_ASSET),
        ("rejected", "bad_field: did must be a string"),
    ]
    assert cache.requests == []


# --- credentials signed by an issuer's delegate ---------------------------------------


def _delegate_token(issuer: LocalKeySigner, delegate: LocalKeySigner, subject: str):
    """An issued token naming `issuer` but signed with `delegate`'s key."""
    from evops.protocol.jwt import issued_token

    return issued_token(
        delegate,
        issuer_did=DID.for_address(issuer.address),
        subject=subject,
        claim_data={"claimType": ROLE, "claimTypeVersion": 1},
    )


async def test_a_credential_signed_by_the_issuers_verikey_delegate_is_published(
    make_asset, fakes
):
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    record = await _requested(asset, integrations)
    delegate = LocalKeySigner.generate()
    issuer_did = DID.for_address(cache.issuer.address)
    chain.delegates[issuer_did.address] = [delegate.address]
    cache.issue(
        record.claim_id, token=_delegate_token(cache.issuer, delegate, asset.did)
    )
    outcome = await _notify_issued(asset, record, integrations)
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.PUBLISHED, (outcome, record.last_error)
    assert len(chain.writes) == 1
    assert issuer_did.canonical in chain.resolved


async def test_a_key_that_is_not_the_issuers_delegate_is_refused(make_asset, fakes):
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    record = await _requested(asset, integrations)
    stranger = LocalKeySigner.generate()
    chain.delegates[DID.for_address(cache.issuer.address).address] = [
        LocalKeySigner.generate().address
    ]
    cache.issue(
        record.claim_id, token=_delegate_token(cache.issuer, stranger, asset.did)
    )
    outcome = await _notify_issued(asset, record, integrations)
    assert outcome.reason == f"{pipeline.REASON_CREDENTIAL_REJECTED}: bad_signature"
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.REJECTED
    assert chain.writes == []


async def test_the_issuers_own_signature_needs_no_chain_lookup(make_asset, fakes):
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    record = await _requested(asset, integrations)
    cache.issue(record.claim_id)
    await _notify_issued(asset, record, integrations)
    issuer_did = DID.for_address(cache.issuer.address).canonical
    assert issuer_did not in chain.resolved
    assert len(chain.writes) == 1
