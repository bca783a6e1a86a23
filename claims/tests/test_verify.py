"""Nothing forged, misdirected or unaccepted is written on chain (issue 11).

Each attack that once got through is replayed here through the consumer, as NATS
would deliver it; the peers are the small fakes of test_pipeline.py (the same cases
on the real stand-in and anvil are in test_end_to_end.py). Each must end with no
chain write, a refusal an operator can read, and the genuine pending claim intact:
it still publishes when the real issuance arrives.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
from asgiref.sync import sync_to_async

from claims import inbox
from claims.models import ClaimRecord, ClaimStatus, InboundMessage, MessageOutcome
from claims.tests.fakes import ROLE, FakeError, make_token
from claims.tests.test_pipeline import _message, _notify_issued, _process, _requested
from evops.protocol.credentials import RejectionReason
from evops.protocol.keys import LocalKeySigner

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

OTHER_ROLE = "other.roles.tso.apps.elia.iam.ewc"


async def _genuine_issue_still_publishes(
    asset, record, integrations, cache, chain
) -> None:
    cache.issue(record.claim_id)
    await sync_to_async(InboundMessage.objects.all().delete)()  # no dedupe shortcut
    outcome = await _notify_issued(asset, record, integrations)
    assert outcome.outcome == MessageOutcome.PROCESSED
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.PUBLISHED
    assert len(chain.writes) == 1


async def test_role_type_issuer_without_proof_is_refused(make_asset, fakes):
    """Case 1: issuerType ROLE, a token self-signed by a random key."""
    integrations, cache, _, chain = fakes
    cache.definitions[ROLE] = {
        "version": 1,
        "issuer": {"issuerType": "ROLE", "roleName": "tso.roles.elia.iam.ewc"},
    }
    asset = await sync_to_async(make_asset)()
    record = await _requested(asset, integrations)
    intruder = LocalKeySigner.generate()
    forged = make_token(intruder, asset.did)
    legacy = {"id": record.claim_id, "requester": asset.did, "issuedToken": forged}
    outcome = await _process(
        await _message(f"{asset.did}.claim.exchange", legacy), integrations
    )
    assert outcome.outcome == MessageOutcome.REJECTED
    assert chain.writes == []
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.REQUESTED

    # The hub itself holding such a token: refused with the reason, nothing written.
    cache.issue(record.claim_id, token=forged)
    outcome = await _notify_issued(asset, record, integrations)
    assert outcome.outcome == MessageOutcome.REJECTED
    assert RejectionReason.ISSUER_ROLE_UNPROVEN.value in outcome.reason
    assert chain.writes == []


async def test_legacy_token_that_is_not_the_hubs_is_refused(make_asset, fakes):
    """Case 2's cousin: the hub holds the claim, the message carries another token."""
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    record = await _requested(asset, integrations)
    genuine = cache.issue(record.claim_id)
    # Validly signed by the same issuer, but not the hub's token for this claim.
    replayed = make_token(cache.issuer, asset.did, exp=int(time.time()) + 3600)
    assert replayed != genuine
    legacy = {"id": record.claim_id, "requester": asset.did, "issuedToken": replayed}
    outcome = await _process(
        await _message(f"{asset.did}.claim.exchange", legacy), integrations
    )
    assert outcome.outcome == MessageOutcome.REJECTED
    assert RejectionReason.TOKEN_MISMATCH.value in outcome.reason
    assert chain.writes == []
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.REQUESTED
    await sync_to_async(InboundMessage.objects.all().delete)()
    assert (await _notify_issued(asset, record, integrations)).outcome == (
        MessageOutcome.PROCESSED
    )
    assert len(chain.writes) == 1


async def test_a_claim_the_hub_has_not_accepted_is_not_published(make_asset, fakes):
    """Case 3: isAccepted false, but an issuedToken."""
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    record = await _requested(asset, integrations)
    token = make_token(cache.issuer, asset.did)
    cache.claims[record.claim_id] = replace(
        cache.claims[record.claim_id], issued_token=token, is_accepted=False
    )
    outcome = await _notify_issued(asset, record, integrations)
    assert outcome.outcome == MessageOutcome.REJECTED
    assert RejectionReason.CLAIM_NOT_ACCEPTED.value in outcome.reason
    assert chain.writes == []
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.REQUESTED
    await _genuine_issue_still_publishes(asset, record, integrations, cache, chain)


async def test_a_token_of_another_type_than_its_claim_is_refused(make_asset, fakes):
    """Case 4: two allowed types; the hub labels the claim Y, the token says X."""
    integrations, cache, _, chain = fakes
    integrations.allowed_claim_types = (ROLE, OTHER_ROLE)
    integrations.trust = None
    asset = await sync_to_async(make_asset)()
    record = await _requested(asset, integrations)
    token = make_token(cache.issuer, asset.did, claim_type=OTHER_ROLE)
    cache.issue(record.claim_id, token=token)  # the hub's claim is of ROLE
    outcome = await _notify_issued(asset, record, integrations)
    assert outcome.outcome == MessageOutcome.REJECTED
    assert chain.writes == []
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.REJECTED
    assert record.rejection_reason == RejectionReason.CLAIM_TYPE_MISMATCH.value
    assert record.role != OTHER_ROLE


async def test_the_hub_unreachable_is_transient_never_a_publication(
    make_asset, fakes, fast_retries
):
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    record = await _requested(asset, integrations)
    cache.issue(record.claim_id)
    cache.fail_next = [FakeError("cache server down", permanent=False)]
    outcome = await _notify_issued(asset, record, integrations)
    assert outcome.outcome == MessageOutcome.PENDING
    assert chain.writes == []
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.REQUESTED


async def test_the_stored_content_must_be_the_token(make_asset, fakes):
    """A store that answers a CID of something else: transient, nothing written."""
    integrations, cache, store, chain = fakes
    asset = await sync_to_async(make_asset)()
    record = await _requested(asset, integrations)
    cache.issue(record.claim_id)
    real_put = store.put

    async def lying_put(token):
        cid = await real_put(token)
        store.contents[cid] = token + "tampered"
        return cid

    store.put = lying_put
    await _notify_issued(asset, record, integrations)
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.ISSUED
    assert "content" in record.last_error
    assert chain.writes == []
    store.put = real_put
    from claims import pipeline
    from claims.models import LISTENER

    status = await pipeline.claim_advance(
        record_id=record.pk, integrations=integrations, actor=LISTENER
    )
    assert status == ClaimStatus.PUBLISHED
    assert len(chain.writes) == 1


async def test_a_hundred_spellings_of_one_request_file_one_claim(make_asset, fakes):
    integrations, cache, _, _ = fakes
    asset = await sync_to_async(make_asset)()
    address = asset.address
    spellings = []
    for n in range(100):
        did = [
            asset.did,
            asset.did.lower().replace("did:ethr:volta:0x", "did:ethr:volta:0x"),
            f"did:ethr:{address}",
            f"did:ethr:{address.lower()}",
        ][n % 4]
        body = json.dumps({"did": did}, indent=n % 3, separators=None)
        spellings.append((" " * (n % 5) + body + "\n" * (n % 2)).encode())
    rows = await sync_to_async(inbox.inbound_record_many)(
        [(f"tok{n % 7}.prequalification.exchange", p) for n, p in enumerate(spellings)]
    )
    pending = [r for r in rows if r.outcome == MessageOutcome.PENDING]
    assert len(pending) == 1
    assert all(
        r.reason == inbox.REASON_DUPLICATE.format(id=pending[0].pk)
        for r in rows
        if r is not pending[0]
    )
    await _process(pending[0], integrations)
    assert len(cache.requests) == 1
    assert await ClaimRecord.objects.filter(asset=asset).acount() == 1


async def test_a_legacy_message_never_suppresses_the_genuine_notice(make_asset, fakes):
    """A forged legacy message first must not make the real notice a duplicate."""
    integrations, cache, _, chain = fakes
    asset = await sync_to_async(make_asset)()
    record = await _requested(asset, integrations)
    cache.issue(record.claim_id)
    forged = make_token(LocalKeySigner.generate(), asset.did)
    legacy = {"id": record.claim_id, "requester": asset.did, "issuedToken": forged}
    first = await _message(f"{asset.did}.claim.exchange", legacy)
    notice = await _message(
        f"issue-credential.claim-exchange.{asset.did}.ewf-dev",
        {"type": "issue-credential", "claimId": record.claim_id},
    )
    assert notice.outcome == MessageOutcome.PENDING
    assert (await _process(first, integrations)).outcome == MessageOutcome.REJECTED
    assert (await _process(notice, integrations)).outcome == MessageOutcome.PROCESSED
    assert len(chain.writes) == 1
