"""`integrations_from_settings` in relay mode: the stored operator account sends.

The last test publishes one relayed attribute on the real anvil with the real registry:
the stored asset key signs the `setAttributeSigned` digest and the stored operator key
(sealed in the database, unsealed only to sign) signs and pays for the transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from eth_typing import HexStr
from eth_utils.address import to_checksum_address

from assets.models import OperatorAccount
from assets.selectors import OPERATOR_NOT_CONFIGURED
from assets.services import asset_generate, operator_generate
from assets.signers import OperatorNotConfigured, signer_for_asset
from claims.integrations import Integrations, integrations_from_settings
from evops.integrations.chain import NO_OPERATOR, Chain, PublishResult
from evops.protocol import erc1056
from evops.protocol.keys import LocalKeySigner
from evops.sandbox import peers

pytestmark = pytest.mark.django_db


def real_chain(bundle: Integrations) -> Chain:
    assert isinstance(bundle.chain, Chain)
    return bundle.chain


@pytest.fixture
def relay(settings):
    settings.CHAIN_WRITE_MODE = "relay"
    settings.CHAIN_OPERATOR_ADDRESS = ""
    return settings


def test_relay_mode_uses_the_stored_operator(relay):
    operator = operator_generate(label="relay")
    bundle = integrations_from_settings()
    try:
        chain = real_chain(bundle)
        assert chain.mode == "relay"
        assert chain.operator is not None
        assert chain.operator.address == operator.address
    finally:
        asyncio.run(bundle.aclose())


def test_an_explicit_operator_wins(relay):
    operator_generate()
    mine = LocalKeySigner.generate()
    bundle = integrations_from_settings(operator=mine)
    try:
        assert real_chain(bundle).operator is mine
    finally:
        asyncio.run(bundle.aclose())


def test_asset_mode_needs_no_operator(settings):
    settings.CHAIN_WRITE_MODE = "asset"
    bundle = integrations_from_settings()
    try:
        assert real_chain(bundle).operator is None
    finally:
        asyncio.run(bundle.aclose())


def test_relay_mode_without_an_operator_is_a_clear_error(relay):
    with pytest.raises(OperatorNotConfigured) as info:
        integrations_from_settings()
    assert str(info.value) == OPERATOR_NOT_CONFIGURED.format(chain="volta")
    assert NO_OPERATOR not in str(info.value)  # not the chain's bare ValueError


def test_listener_start_without_an_operator_stops_with_the_error(relay):
    """The command fails before it connects anywhere, not on its first message."""
    relay.NATS_URL = "nats://127.0.0.1:1"  # nothing listens there
    with pytest.raises(CommandError) as info:
        call_command("run_nats_listener", "--no-reconcile")
    # Refused by the start-up checks, before integrations are even built.
    assert "assets.W001: " + OPERATOR_NOT_CONFIGURED.format(chain="volta") in str(
        info.value
    )


@pytest.mark.peers
def test_one_relayed_publication_signed_by_the_stored_operator(
    relay, anvil, registry_address
):
    relay.CHAIN_RPC_URL = anvil.rpc_url
    relay.CHAIN_ID = 73799
    relay.DID_REGISTRY_ADDRESS = registry_address
    relay.CHAIN_RECEIPT_TIMEOUT = 30
    operator = operator_generate(label="anvil relay")
    peers.fund(anvil.rpc_url, operator.address, 10**19)
    [asset] = asset_generate(count=1)  # stored and sealed like the operator
    asset_signer = signer_for_asset(asset)
    service_id = str(uuid.uuid4())
    sha = hashlib.sha256(b"token").hexdigest()
    cid = "Qm" + sha[:44]
    value = erc1056.service_value(service_id=service_id, cid=cid, token_sha256=sha)
    bundle = integrations_from_settings()
    w3 = peers.chain_web3(anvil.rpc_url)

    async def publish() -> tuple[PublishResult, dict[str, Any]]:
        try:
            result = await bundle.chain.publish_attribute(
                asset_signer,
                name=erc1056.attribute_name(),
                value=value,
                validity=erc1056.VALIDITY_FOREVER,
            )
            document = await bundle.chain.resolve_document(asset.did)
            return result, document
        finally:
            await bundle.aclose()

    result, document = asyncio.run(publish())
    assert result.mode == "relay"
    transaction = w3.eth.get_transaction(HexStr(result.tx_hash))
    assert transaction["from"] == operator.address
    assert (
        w3.eth.get_balance(to_checksum_address(operator.address)) < 10**19
    )  # the operator paid
    assert (
        w3.eth.get_balance(to_checksum_address(asset.address)) == 0
    )  # the asset needs no funds
    services = {entry["id"]: entry for entry in document.get("service", [])}
    assert services[service_id]["serviceEndpoint"] == cid
    assert OperatorAccount.objects.get().address == operator.address
