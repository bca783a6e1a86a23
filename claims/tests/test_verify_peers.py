"""Verification wired through the pipeline, on the real local peers (issue 11).

anvil with the real ERC-1056 registry holds the issuers' DID documents, the
cache-server stand-in the role definitions, claims and credential contents, and the
pipeline reads them through evops' own clients. An issuer of an `issuerType: ROLE`
role is accepted only when it holds the role through a chain the verifier can follow
within its depth limit; a legacy message is never the proof.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from web3.types import RPCEndpoint

from claims import consumer, inbox, pipeline
from claims.integrations import Integrations
from claims.models import LISTENER, ClaimRecord, ClaimStatus, MessageOutcome
from evops.integrations.cache_server import CacheServerClient
from evops.integrations.chain import Chain
from evops.integrations.credential_store import CacheServerStore
from evops.protocol.credentials import RejectionReason, token_sha256
from evops.protocol.keys import LocalKeySigner
from evops.protocol.roles import RoleChainVerifier
from evops.sandbox import peers
from evops.sandbox.cache_server import (
    CacheServerStandIn,
    eth_block_number,
    issue_claim,
    role_json,
)
from evops.sandbox.peers import fund
from evops.sandbox.tests.test_role_chain_peers import (
    GRID,
    PREQ,
    TSO,
    credential,
    did_of,
    grant,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio,
    pytest.mark.peers,
]


@pytest.fixture
def root() -> LocalKeySigner:
    return LocalKeySigner.generate()


@pytest.fixture
def rpc_url(anvil: Any) -> str:
    # Login freshness looks a few blocks back: make sure there are some.
    peers.chain_web3(anvil.rpc_url).manager.request_blocking(
        RPCEndpoint("anvil_mine"), ["0x20"]
    )
    return str(anvil.rpc_url)


@pytest.fixture
def hub(
    rpc_url: str, nats_server: Any, registry_address: str, root: LocalKeySigner
) -> Iterator[CacheServerStandIn]:
    """PREQ is issued by TSO holders, TSO by GRID holders, GRID by `root`."""
    server = CacheServerStandIn(
        rpc_url,
        nats_server.url,
        roles=[
            role_json(PREQ, issuer_role=TSO),
            role_json(TSO, issuer_role=GRID),
            role_json(GRID, issuer_dids=[did_of(root)]),
        ],
        env=f"e2e{uuid.uuid4().hex[:8]}",
        registry_address=registry_address,
    ).start()
    yield server
    server.stop()


@pytest.fixture
async def chain(rpc_url: str, registry_address: str) -> AsyncIterator[Chain]:
    node = Chain(
        rpc_url,
        chain_id=73799,
        registry_address=registry_address,
        max_fee_gwei=100,
        receipt_timeout=30,
        poll_interval=0.05,
    )
    try:
        yield node
    finally:
        await node.aclose()


def _integrations(
    hub: Any, chain: Chain, rpc_url: str, signers: dict[int, Any], depth: int
) -> Integrations:
    async def block() -> int:
        return await eth_block_number(rpc_url)

    cache = CacheServerClient(hub.url, block_number=block)
    return Integrations(
        cache=cache,
        store=None,
        store_factory=lambda signer, did: CacheServerStore(
            cache.store_requester(signer, did)
        ),
        chain=chain,
        signer_for=lambda asset: signers[asset.pk],
        prequalification_role=PREQ,
        allowed_claim_types=(PREQ,),
        verifier=RoleChainVerifier(max_depth=depth),
    )


async def _issued(hub: Any, rpc_url: str, record: ClaimRecord, tso: Any) -> str:
    token = credential(tso, record.asset.did, PREQ)
    status = await issue_claim(
        hub.url,
        tso,
        issuer_did=did_of(tso),
        claim_id=record.claim_id,
        requester=record.asset.did,
        issued_token=token,
        block_number=await eth_block_number(rpc_url),
    )
    assert status == 201, status
    return token


async def _requested(asset: Any, integrations: Integrations) -> ClaimRecord:
    outcome = await pipeline.claim_request_prequalification(
        asset=asset, integrations=integrations, actor=LISTENER
    )
    return await ClaimRecord.objects.select_related("asset").aget(
        pk=outcome.record_id or 0
    )


@pytest.mark.parametrize(("depth", "published"), [(3, True), (1, False)])
async def test_a_role_chain_issuer_within_the_depth_limit_publishes(
    hub, chain, rpc_url, root, make_asset, signers, depth, published
):
    grid, tso = LocalKeySigner.generate(), LocalKeySigner.generate()
    await grant(hub, chain, rpc_url, issuer=root, holder=grid, role=GRID)
    await grant(hub, chain, rpc_url, issuer=grid, holder=tso, role=TSO)
    asset = await sync_to_async(make_asset)()
    fund(rpc_url, signers[asset.pk].address, 10**19)
    integrations = _integrations(hub, chain, rpc_url, signers, depth)
    try:
        record = await _requested(asset, integrations)
        token = await _issued(hub, rpc_url, record, tso)
        outcome = await pipeline.claim_accept_issued(
            asset=asset,
            claim_id=record.claim_id,
            integrations=integrations,
            actor=LISTENER,
        )
        await record.arefresh_from_db()
        document = await chain.resolve_document(asset.did)
        hashes = [entry.get("hash") for entry in document.get("service", [])]
        if published:
            assert record.status == ClaimStatus.PUBLISHED, record.last_error
            assert token_sha256(token) in hashes
            proof = await record.events.filter(kind="issued").afirst()
            assert proof is not None and len(proof.details["issuer_proof"]) >= 2
        else:
            assert outcome.outcome == MessageOutcome.REJECTED
            assert record.status == ClaimStatus.REJECTED
            assert record.rejection_reason == (
                RejectionReason.ROLE_CHAIN_TOO_DEEP.value
            )
            assert "longer than 1" in record.last_error
            assert hashes == []
    finally:
        await integrations.aclose()


async def test_a_legacy_message_for_an_unknown_claim_writes_nothing(
    hub, chain, rpc_url, root, make_asset, signers
):
    """A validly signed token from a DID-listed issuer, on a claim the hub lacks."""
    asset = await sync_to_async(make_asset)()
    fund(rpc_url, signers[asset.pk].address, 10**19)
    integrations = _integrations(hub, chain, rpc_url, signers, 3)
    try:
        token = credential(root, asset.did, PREQ)
        legacy = {"id": "no-such-claim", "requester": asset.did, "issuedToken": token}
        message = await sync_to_async(inbox.inbound_record)(
            subject=f"{asset.did}.claim.exchange", payload=json.dumps(legacy).encode()
        )
        outcome = await consumer.inbound_process(
            message_id=message.pk, integrations=integrations, actor=LISTENER
        )
        assert outcome.outcome == MessageOutcome.REJECTED
        assert RejectionReason.CLAIM_UNKNOWN.value in outcome.reason
        document = await chain.resolve_document(asset.did)
        assert document.get("service", []) == []
        assert not await ClaimRecord.objects.filter(asset=asset).aexists()
    finally:
        await integrations.aclose()
