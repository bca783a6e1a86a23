"""The whole pipeline with asset keys in a PKCS#11 token (SoftHSM2), on the real peers.

As `test_end_to_end`, but the assets are made inside the session's SoftHSM2 token
(`SIGNER_BACKEND=pkcs11`) and the listener gets its signers from the real backend
(`assets.signers.signer_for_asset`): the cache-server stand-in checks the login
(identity token and SIWE) and the claim-request token, the registry checks the
asset-mode transaction (sent from the asset's address) or the relayed
`setAttributeSigned` signature. Every one of those recovers to the asset's address
or the peer refuses it.
"""

from __future__ import annotations

import json

import nats
import pytest
from asgiref.sync import sync_to_async
from eth_typing import HexStr

from assets.models import AssetKey, SignerBackend
from assets.services import asset_generate
from assets.signers import signer_for_asset
from claims import peer_calls
from claims.integrations import Integrations
from claims.listener import Listener
from claims.models import ClaimRecord, ClaimStatus
from claims.tests.test_end_to_end import ENV, ROLE, _config, _issue, _token, _until
from evops.integrations.cache_server import CacheServerClient
from evops.integrations.chain import Chain
from evops.integrations.credential_store import IpfsStore
from evops.protocol.credentials import token_sha256
from evops.protocol.keys import LocalKeySigner
from evops.sandbox import peers

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio,
    pytest.mark.peers,
]


@pytest.fixture
def env_name() -> str:
    return ENV


@pytest.fixture
async def token_pipeline(
    anvil, registry_address, ipfs_node, stand_in, token_settings, request
):
    chain_mode, login_mode = request.param
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
        cache=CacheServerClient(
            stand_in.url, block_number=chain.block_number, login_mode=login_mode
        ),
        store=IpfsStore(ipfs_node.api_url),
        chain=chain,
        signer_for=signer_for_asset,
        prequalification_role=ROLE,
        allowed_claim_types=(ROLE,),
    )
    yield integrations, chain_mode
    await integrations.aclose()


@pytest.mark.parametrize(
    "token_pipeline",
    [("asset", "identity"), ("relay", "identity"), ("asset", "siwe")],
    indirect=True,
    ids=["asset-identity", "relay-identity", "asset-siwe"],
)
async def test_pipeline_with_keys_in_the_token(
    token_pipeline, stand_in, nats_server, issuer, anvil
):
    integrations, chain_mode = token_pipeline
    assets = await sync_to_async(asset_generate)(count=2, backend=SignerBackend.PKCS11)
    for asset in assets:
        assert asset.signer_backend == SignerBackend.PKCS11
        assert not await AssetKey.objects.filter(asset=asset).aexists()
        if chain_mode == "asset":
            peers.fund(anvil.rpc_url, asset.address, 10**19)
    listener = Listener(_config(nats_server.url), integrations)
    await listener.connect()
    client = await nats.connect(nats_server.url)
    for asset in assets:
        await client.publish(
            "dashboard.prequalification.exchange",
            json.dumps({"did": asset.did}).encode(),
        )
    await client.flush()

    async def recorded(n: int) -> bool:
        return listener.recorded >= n

    await _until(lambda: recorded(2), "requests recorded")
    await listener.process_until_idle()
    records = []
    for asset in assets:
        record = await ClaimRecord.objects.select_related("asset").aget(asset=asset)
        assert record.status == ClaimStatus.REQUESTED, record.last_error
        # The stand-in accepted a login and a claim-request token signed in the token.
        assert stand_in.claims[record.claim_id]["requester"] == asset.did
        records.append(record)

    tokens = []
    for record in records:
        tokens.append(_token(issuer, record.asset))
        assert await _issue(stand_in, issuer, anvil, record, tokens[-1]) == 201
    await _until(lambda: recorded(2 + 2 * len(records)), "issue notices recorded")
    await listener.process_until_idle()
    for asset, record, token in zip(assets, records, tokens, strict=True):
        await record.arefresh_from_db()
        assert record.status == ClaimStatus.PUBLISHED, record.last_error
        document = await integrations.chain.resolve_document(asset.did)
        entry = peer_calls.find_service_by_hash(document, token_sha256(token))
        assert entry is not None and entry["serviceEndpoint"] == record.cid
        web3 = peers.chain_web3(anvil.rpc_url)
        sent = web3.eth.get_transaction(HexStr(record.tx_hash))
        if chain_mode == "asset":
            # The token signed the transaction itself: it comes from the asset.
            assert sent["from"] == asset.address
        else:
            assert sent["from"] != asset.address  # the operator sent it
            # The registry only accepts setAttributeSigned signed by the identity's
            # owner, which is the asset: the document above proves it recovered.
    await listener.shutdown()
    await client.close()
