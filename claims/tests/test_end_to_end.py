"""The pipeline end to end on the real local peers.

PostgreSQL, a private nats-server, anvil with the real ERC-1056 registry, js-ipfs as
the credential store, and the cache-server stand-in over real HTTP, which as the TSO
issues credentials and publishes the NATS `issue-credential` messages itself.
Only the asset signer lookup is a dict of test keys (the signer backends have their
own tests).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import nats
import pytest
from asgiref.sync import sync_to_async

from claims import peer_calls, pipeline, reconcile
from claims.integrations import Integrations
from claims.listener import Listener
from claims.listener_config import ListenerConfig
from claims.models import LISTENER, RECONCILER, ClaimRecord, ClaimStatus, InboundMessage
from claims.tests.conftest import E2E_ROLE
from claims.transitions import claims_lease_due
from evops.integrations.cache_server import CacheServerClient
from evops.integrations.chain import Chain
from evops.integrations.credential_store import IpfsStore
from evops.integrations.nats import NatsOptions
from evops.protocol.credentials import token_sha256
from evops.protocol.dids import DID
from evops.protocol.jwt import issued_token
from evops.protocol.keys import LocalKeySigner
from evops.sandbox import peers
from evops.sandbox.cache_server import issue_claim

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio,
    pytest.mark.peers,
]

ROLE = E2E_ROLE
ENV = "ewf-e2e"


@pytest.fixture
def env_name() -> str:
    """One fixed environment: the listener here subscribes by wildcard to it."""
    return ENV


@pytest.fixture(params=["asset", "relay"])
def chain_mode(request) -> str:
    return str(request.param)


@pytest.fixture
async def real(anvil, registry_address, ipfs_node, stand_in, signers, chain_mode):
    operator = LocalKeySigner.generate()
    peers.fund(anvil.rpc_url, operator.address, 10**20)
    chain = Chain(
        anvil.rpc_url,
        chain_id=73799,
        registry_address=registry_address,
        mode=chain_mode,
        operator=operator if chain_mode == "relay" else None,
        max_fee_gwei=100,
        receipt_timeout=30,
        poll_interval=0.05,
    )
    integrations = Integrations(
        cache=CacheServerClient(stand_in.url, block_number=chain.block_number),
        store=IpfsStore(ipfs_node.api_url),
        chain=chain,
        signer_for=lambda asset: signers[asset.pk],
        prequalification_role=ROLE,
        allowed_claim_types=(ROLE,),
    )
    yield integrations
    await integrations.aclose()


@pytest.fixture
def funded_asset(make_asset, signers, anvil):
    def make():
        asset = make_asset()
        peers.fund(anvil.rpc_url, signers[asset.pk].address, 10**19)
        return asset

    return make


def _config(url: str, **overrides: Any) -> ListenerConfig:
    values: dict[str, Any] = {
        "nats": NatsOptions(url=url),
        "subjects": [
            "*.prequalification.exchange",
            f"*.claim-exchange.*.{ENV}",
        ],
        "name": f"e2e-{uuid.uuid4().hex[:6]}",
        "reconcile_on_start": False,
        "reconcile_interval": 0,
        "concurrency": 8,
    }
    values.update(overrides)
    return ListenerConfig(**values)


async def _until(predicate, what: str, rounds: int = 600) -> None:
    for _ in range(rounds):
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


async def _request(asset, integrations: Integrations) -> ClaimRecord:
    """File `asset`'s prequalification request; its record, with the asset loaded."""
    outcome = await pipeline.claim_request_prequalification(
        asset=asset, integrations=integrations, actor=LISTENER
    )
    return await ClaimRecord.objects.select_related("asset").aget(
        pk=outcome.record_id or 0
    )


async def _issue(stand_in, issuer, anvil, record: ClaimRecord, token: str) -> int:
    # Off the event loop: web3's sync and async providers share one class-level
    # session lock, which an async call on this loop may be holding (deadlock).
    block = await asyncio.to_thread(
        lambda: peers.chain_web3(anvil.rpc_url).eth.block_number
    )
    return await issue_claim(
        stand_in.url,
        issuer,
        issuer_did=DID.for_address(issuer.address).canonical,
        claim_id=record.claim_id,
        requester=record.asset.did,
        issued_token=token,
        block_number=block,
    )


def _token(issuer, asset, **extra) -> str:
    return issued_token(
        issuer,
        issuer_did=DID.for_address(issuer.address),
        subject=asset.did,
        claim_data={"claimType": ROLE, "claimTypeVersion": 1},
        **extra,
    )


async def test_request_issue_publish_end_to_end(
    real, stand_in, nats_server, funded_asset, issuer, anvil, chain_mode
):
    asset = await sync_to_async(funded_asset)()
    listener = Listener(_config(nats_server.url), real)
    await listener.connect()
    client = await nats.connect(nats_server.url)
    await client.publish(
        "dashboard.prequalification.exchange", json.dumps({"did": asset.did}).encode()
    )
    await client.flush()

    async def recorded(n: int) -> bool:
        return listener.recorded >= n

    await _until(lambda: recorded(1), "request recorded")
    await listener.process_until_idle()
    record = await ClaimRecord.objects.select_related("asset").aget(asset=asset)
    assert record.status == ClaimStatus.REQUESTED
    assert stand_in.claims[record.claim_id]["requester"] == asset.did

    token = _token(issuer, asset)
    assert await _issue(stand_in, issuer, anvil, record, token) == 201
    # The stand-in, like the real server, announces it once per DID in
    # [requester, token subject]: the same message twice.
    await _until(lambda: recorded(3), "issue notices recorded")
    await listener.process_until_idle()
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.PUBLISHED, record.last_error
    assert record.tx_hash and record.cid
    document = await real.chain.resolve_document(asset.did)
    entry = peer_calls.find_service_by_hash(document, token_sha256(token))
    assert entry is not None and entry["serviceEndpoint"] == record.cid
    assert await real.store.get(record.cid) == token
    writes = await record.events.filter(kind="written").acount()
    assert writes == 1
    await listener.shutdown()
    await client.close()


async def test_issued_while_listener_down_is_published_by_reconciliation(
    real, stand_in, funded_asset, issuer, anvil, chain_mode
):
    assets = [await sync_to_async(funded_asset)() for _ in range(3)]
    records = [await _request(asset, real) for asset in assets]
    tokens = []
    for record in records:  # no listener: the NATS messages are lost
        tokens.append(_token(issuer, record.asset))
        assert await _issue(stand_in, issuer, anvil, record, tokens[-1]) == 201
    result, racing = await asyncio.gather(
        reconcile.reconcile_assets(
            assets=assets,
            integrations=real,
            actor=RECONCILER,
            concurrency=4,
        ),
        reconcile.reconcile_assets(
            assets=assets,
            integrations=real,
            actor=LISTENER,
            concurrency=4,
        ),
    )
    assert result.errors == [] and racing.errors == []
    for asset, record, token in zip(assets, records, tokens, strict=True):
        await record.arefresh_from_db()
        assert record.status == ClaimStatus.PUBLISHED
        assert await record.events.filter(kind="written").acount() == 1
        document = await real.chain.resolve_document(asset.did)
        assert peer_calls.find_service_by_hash(document, token_sha256(token))
    again = await reconcile.reconcile_assets(
        assets=assets, integrations=real, actor=RECONCILER, concurrency=4
    )
    assert (again.published, again.already_present) == (0, 3)


@pytest.mark.parametrize("chain_mode", ["asset"], indirect=True)
@pytest.mark.parametrize(
    "case", ["tampered", "expired", "wrong_subject", "unauthorised"]
)
async def test_bad_credentials_are_not_published(
    real, stand_in, nats_server, funded_asset, issuer, anvil, case
):
    asset = await sync_to_async(funded_asset)()
    other = await sync_to_async(funded_asset)()
    record = await _request(asset, real)
    good = _token(issuer, asset)
    token = {
        "tampered": good[:-6] + ("A" if good[-6] != "A" else "B") + good[-5:],
        "expired": _token(issuer, asset, exp=int(time.time()) - 60),
        "wrong_subject": _token(issuer, other),
        "unauthorised": _token(LocalKeySigner.generate(), asset),
    }[case]
    # The stand-in checks what the real server checks (signature by the issuing
    # DID, issuer allowed); what it accepts, evops must still refuse.
    stand_in.claims[record.claim_id].update(
        {"issuedToken": token, "isAccepted": True, "acceptedBy": "x"}
    )
    listener = Listener(_config(nats_server.url), real)
    await listener.connect()
    client = await nats.connect(nats_server.url)
    notice = {"type": "issue-credential", "claimId": record.claim_id}
    await client.publish(
        f"issue-credential.claim-exchange.{asset.did}.{ENV}",
        json.dumps(notice).encode(),
    )
    await client.flush()

    async def recorded() -> bool:
        return listener.recorded >= 1

    await _until(recorded, "notice recorded")
    await listener.process_until_idle()
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.REJECTED
    assert record.rejection_reason
    message = await InboundMessage.objects.aget()
    assert message.outcome == "rejected" and record.rejection_reason in message.reason
    document = await real.chain.resolve_document(asset.did)
    assert document.get("service") in (None, [])
    await listener.shutdown()
    await client.close()


@pytest.mark.parametrize("chain_mode", ["asset"], indirect=True)
async def test_flaky_cache_server_and_chain_outage_still_publish_everything(
    real, stand_in, funded_asset, issuer, anvil, fast_retries, settings
):
    settings.MAX_ATTEMPTS = 50
    assets = [await sync_to_async(funded_asset)() for _ in range(4)]
    for asset in assets:
        await pipeline.claim_request_prequalification(
            asset=asset, integrations=real, actor=LISTENER
        )
    records = [r async for r in ClaimRecord.objects.select_related("asset")]
    tokens = {}
    for record in records:
        tokens[record.pk] = _token(issuer, record.asset)
        assert await _issue(stand_in, issuer, anvil, record, tokens[record.pk]) == 201
    stand_in.set_faults(fail_rate=0.3)
    working_chain = real.chain
    real.chain = Chain(  # the RPC is down for the first round
        f"http://127.0.0.1:{peers.free_port()}",
        chain_id=73799,
        registry_address=working_chain.registry_address,
        max_fee_gwei=100,
        request_timeout=0.5,
    )
    await reconcile.reconcile_assets(
        assets=assets, integrations=real, actor=RECONCILER, concurrency=4
    )
    assert not await ClaimRecord.objects.filter(status=ClaimStatus.PUBLISHED).aexists()
    await real.chain.aclose()
    real.chain = working_chain
    for _ in range(30):
        for pk in await sync_to_async(claims_lease_due)(limit=100):
            await pipeline.claim_process_due(
                record_id=pk, integrations=real, actor=LISTENER
            )
        await reconcile.reconcile_assets(
            assets=assets, integrations=real, actor=RECONCILER, concurrency=4
        )
        published = await ClaimRecord.objects.filter(
            status=ClaimStatus.PUBLISHED
        ).acount()
        if published == len(assets):
            break
    stand_in.set_faults(fail_rate=0.0)
    assert published == len(assets)
    for record in records:
        assert await record.events.filter(kind="written").acount() == 1


@pytest.mark.parametrize("chain_mode", ["asset"], indirect=True)
async def test_cache_server_store_mode_writes_through_the_assets_session(
    real, stand_in, funded_asset, issuer, anvil
):
    """CREDENTIAL_STORE=cache-server: /v1/store needs each asset's own session."""
    from evops.integrations.credential_store import CacheServerStore

    cache = real.cache
    assert isinstance(cache, CacheServerClient)
    per_asset = Integrations(
        cache=cache,
        store=None,
        store_factory=lambda signer, did: CacheServerStore(
            cache.store_requester(signer, did)
        ),
        chain=real.chain,
        signer_for=real.signer_for,
        prequalification_role=ROLE,
        allowed_claim_types=(ROLE,),
    )
    asset = await sync_to_async(funded_asset)()
    record = await _request(asset, per_asset)
    token = _token(issuer, asset)
    assert await _issue(stand_in, issuer, anvil, record, token) == 201
    result = await reconcile.reconcile_assets(
        assets=[asset], integrations=per_asset, actor=RECONCILER, concurrency=1
    )
    assert result.errors == [] and result.published == 1
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.PUBLISHED, record.last_error
    store = CacheServerStore(cache.store_requester(real.signer_for(asset), asset.did))
    assert await store.get(record.cid) == token
    document = await real.chain.resolve_document(asset.did)
    entry = peer_calls.find_service_by_hash(document, token_sha256(token))
    assert entry is not None and entry["serviceEndpoint"] == record.cid


def _add_verikey_delegate(anvil, registry: str, identity: str, delegate: str) -> None:
    """The issuer lists `delegate` as a veriKey in its DID document (addDelegate)."""
    from eth_utils.address import to_checksum_address
    from web3.types import RPCEndpoint

    from evops.integrations.registry import registry_abi
    from evops.protocol.erc1056 import attribute_name

    w3 = peers.chain_web3(anvil.rpc_url)
    peers.fund(anvil.rpc_url, identity, 10**18)
    w3.manager.request_blocking(RPCEndpoint("anvil_impersonateAccount"), [identity])
    try:
        contract = w3.eth.contract(
            address=to_checksum_address(registry), abi=registry_abi()
        )
        tx = contract.functions.addDelegate(
            identity, attribute_name("veriKey"), delegate, 86400
        ).transact({"from": identity, "gas": 300_000})
        assert w3.eth.wait_for_transaction_receipt(tx)["status"] == 1
    finally:
        w3.manager.request_blocking(
            RPCEndpoint("anvil_stopImpersonatingAccount"), [identity]
        )


async def test_credential_signed_by_an_issuer_delegate_is_published(
    real, stand_in, funded_asset, issuer, anvil, registry_address, chain_mode
):
    """The TSO signs with a veriKey delegate registered on chain: both the cache
    server and evops accept it; a key that is no delegate is refused by both."""
    asset = await sync_to_async(funded_asset)()
    record = await _request(asset, real)
    delegate = LocalKeySigner.generate()
    await asyncio.to_thread(
        _add_verikey_delegate, anvil, registry_address, issuer.address, delegate.address
    )
    token = issued_token(
        delegate,
        issuer_did=DID.for_address(issuer.address),
        subject=asset.did,
        claim_data={"claimType": ROLE, "claimTypeVersion": 1},
    )
    impostor = issued_token(
        LocalKeySigner.generate(),
        issuer_did=DID.for_address(issuer.address),
        subject=asset.did,
        claim_data={"claimType": ROLE, "claimTypeVersion": 1},
    )
    assert await _issue(stand_in, issuer, anvil, record, impostor) == 403
    assert await _issue(stand_in, issuer, anvil, record, token) == 201
    outcome = await pipeline.claim_accept_issued(
        asset=record.asset,
        claim_id=record.claim_id,
        integrations=real,
        actor=LISTENER,
    )
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.PUBLISHED, (outcome, record.last_error)
    document = await real.chain.resolve_document(asset.did)
    assert peer_calls.find_service_by_hash(document, token_sha256(token)) is not None
