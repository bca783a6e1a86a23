"""The issuerType ROLE path end to end, on the real local peers.

anvil with the real ERC-1056 registry holds the issuers' DID documents (each with a
service entry for its role credential), the cache-server stand-in holds the role
definitions, the claims and the credential contents (`/v1/store`), and the verifier
reads them through evops' own clients, as the claims side will wire it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from evops.integrations.cache_server import (
    CacheServerClient,
    RoleClaim,
    UnknownRoleError,
)
from evops.integrations.chain import Chain
from evops.integrations.credential_store import CacheServerStore
from evops.protocol import erc1056
from evops.protocol.cids import sha256_hex
from evops.protocol.credentials import AcceptedCredential, RejectedCredential
from evops.protocol.credentials import RejectionReason as R
from evops.protocol.dids import DID
from evops.protocol.jwt import issued_token
from evops.protocol.keys import LocalKeySigner
from evops.protocol.policy import TrustPolicy
from evops.protocol.roles import RoleChainVerifier, RoleSources
from evops.protocol.verification import HubClaim, verify_for_publication
from evops.sandbox.cache_server import (
    CacheServerStandIn,
    eth_block_number,
    issue_claim,
    role_json,
)
from evops.sandbox.peers import fund

pytestmark = pytest.mark.peers

PREQ = "prequalified.roles.tso.apps.elia.iam.ewc"
TSO = "tso.roles.elia.iam.ewc"
GRID = "grid.roles.elia.iam.ewc"


def did_of(signer: LocalKeySigner) -> str:
    return DID.for_address(signer.address).canonical


def credential(issuer: LocalKeySigner, subject: str, role: str) -> str:
    return issued_token(
        issuer,
        issuer_did=did_of(issuer),
        subject=subject,
        claim_data={"claimType": role, "claimTypeVersion": 1},
    )


def hub_claim(claim: RoleClaim) -> HubClaim:
    return HubClaim(
        id=claim.id,
        subject=claim.subject,
        claim_type=claim.claim_type,
        issued_token=claim.issued_token,
        is_accepted=claim.is_accepted,
        is_rejected=claim.is_rejected,
        rejection_reason=claim.rejection_reason,
    )


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


@pytest.fixture
def root() -> LocalKeySigner:
    return LocalKeySigner.generate()


@pytest.fixture
def hub(make_stand_in: Any, registry_address: str, root: LocalKeySigner) -> Any:
    stand_in: CacheServerStandIn = make_stand_in(
        roles=[
            role_json(PREQ, issuer_role=TSO),
            role_json(TSO, issuer_role=GRID),
            role_json(GRID, issuer_dids=[did_of(root)]),
        ],
        registry_address=registry_address,
    )
    return stand_in


async def grant(
    hub: CacheServerStandIn,
    chain: Chain,
    rpc_url: str,
    *,
    issuer: LocalKeySigner,
    holder: LocalKeySigner,
    role: str,
) -> None:
    """`issuer` grants `role` to `holder`: the hub's claim, the store, the chain."""
    token = credential(issuer, did_of(holder), role)
    hub.add_accepted_claim(
        subject=did_of(holder),
        claim_type=role,
        issued_token=token,
        accepted_by=did_of(issuer),
    )
    cid = hub.put_content(token)
    fund(rpc_url, holder.address, 10**18)
    value = erc1056.service_value(
        service_id=str(uuid.uuid4()),
        cid=cid,
        token_sha256=sha256_hex(token),
    )
    await chain.publish_attribute(
        holder,
        name=erc1056.attribute_name(),
        value=value,
        validity=erc1056.VALIDITY_FOREVER,
    )


def sources_for(
    client: CacheServerClient, chain: Chain, asset: LocalKeySigner
) -> RoleSources:
    """How the claims side wires the lookups: the asset's own hub session."""
    asset_did = did_of(asset)
    store = CacheServerStore(client.store_requester(asset, asset_did))

    async def fetch_role(namespace: str) -> Mapping[str, Any] | None:
        try:
            return (await client.role(asset, asset_did, namespace)).raw
        except UnknownRoleError:
            return None

    async def resolve(did: DID) -> Mapping[str, Any]:
        return await chain.resolve_document(did.canonical)

    return RoleSources(fetch_role, resolve, store.get)


async def issued_claim(
    hub: CacheServerStandIn,
    client: CacheServerClient,
    rpc_url: str,
    *,
    asset: LocalKeySigner,
    issuer: LocalKeySigner,
) -> str:
    """The asset requests PREQ, `issuer` issues it through the hub's HTTP API."""
    role = await client.role(asset, did_of(asset), PREQ)
    requested = await client.request_claim(asset, did_of(asset), role=role)
    assert requested.claim_id is not None
    status = await issue_claim(
        hub.url,
        issuer,
        issuer_did=did_of(issuer),
        claim_id=requested.claim_id,
        requester=did_of(asset),
        issued_token=credential(issuer, did_of(asset), PREQ),
        block_number=await eth_block_number(rpc_url),
    )
    assert status == 201, status
    return requested.claim_id


async def test_role_chain_two_levels_deep_on_real_peers(hub, chain, rpc_url, root):
    tso, grid, asset = (LocalKeySigner.generate() for _ in range(3))
    # GRID is held by `grid` (issued by the DID-listed root); TSO by `tso` (issued
    # by `grid`, a GRID holder); PREQ is issued by TSO holders.
    await grant(hub, chain, rpc_url, issuer=root, holder=grid, role=GRID)
    await grant(hub, chain, rpc_url, issuer=grid, holder=tso, role=TSO)

    async def block() -> int:
        return await eth_block_number(rpc_url)

    async with CacheServerClient(hub.url, block_number=block) as client:
        claim_id = await issued_claim(hub, client, rpc_url, asset=asset, issuer=tso)
        claim = await client.get_claim(asset, did_of(asset), claim_id)
        assert claim is not None
        sources = sources_for(client, chain, asset)
        policy = TrustPolicy.build(allowed_claim_types=[PREQ])
        now = datetime.now(UTC)

        deep_enough = RoleChainVerifier(max_depth=3)
        result = await verify_for_publication(
            hub_claim(claim),
            claim_id=claim_id,
            asset_did=did_of(asset),
            policy=policy,
            now=now,
            roles=deep_enough,
            sources=sources,
        )
        assert isinstance(result, AcceptedCredential), result
        assert result.issuer == did_of(tso)
        assert len(result.issuer_proof) == 3  # tso holds TSO, grid holds GRID, root

        too_shallow = RoleChainVerifier(max_depth=1)
        result = await verify_for_publication(
            hub_claim(claim),
            claim_id=claim_id,
            asset_did=did_of(asset),
            policy=policy,
            now=now,
            roles=too_shallow,
            sources=sources,
        )
        assert isinstance(result, RejectedCredential)
        assert result.reason is R.ROLE_CHAIN_TOO_DEEP

        # A hub that holds a claim issued by someone holding no role (a lenient or
        # compromised hub): refused, with the reason an operator reads.
        mallory = LocalKeySigner.generate()
        forged_id = hub.add_accepted_claim(
            subject=did_of(asset),
            claim_type=PREQ,
            issued_token=credential(mallory, did_of(asset), PREQ),
            accepted_by=did_of(mallory),
        )
        forged = await client.get_claim(asset, did_of(asset), forged_id)
        assert forged is not None
        result = await verify_for_publication(
            hub_claim(forged),
            claim_id=forged_id,
            asset_did=did_of(asset),
            policy=policy,
            now=now,
            roles=deep_enough,
            sources=sources,
        )
        assert isinstance(result, RejectedCredential)
        assert result.reason is R.ISSUER_ROLE_UNPROVEN
        assert did_of(mallory) in result.detail
