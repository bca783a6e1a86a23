"""evops.integrations.chain against anvil running the real 0.0.3 registry bytecode."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from evops.integrations import chain as chain_module
from evops.integrations.chain import (
    CHAIN_ID_MISMATCH,
    FEE_ABOVE_CAP,
    INSUFFICIENT_FUNDS,
    OUT_OF_GAS,
    PREVIOUS_PENDING,
    RECEIPT_TIMEOUT,
    REVERTED,
    RPC_TIMEOUT,
    RPC_UNREACHABLE,
    Chain,
    ChainError,
    PublishResult,
    chain_from_settings,
)
from evops.integrations.registry import VOLTA_CHAIN_ID, VOLTA_REGISTRY_ADDRESS
from evops.protocol import erc1056
from evops.protocol.keys import LocalKeySigner
from evops.sandbox import peers
from evops.sandbox.peers import Anvil, deploy_registry

# --- local peers ----------------------------------------------------------------------

CHAIN_ID = VOLTA_CHAIN_ID
# anvil's well-known account 0 for the development mnemonic (a public test key).
OPERATOR_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


class FlaggedAnvil(Anvil):
    """The shared anvil peer plus flags some tests need (--no-mining, --hardfork)."""

    def __init__(self, *flags: str, block_time: float | None = None) -> None:
        super().__init__(block_time=block_time)
        self.flags = flags

    def _command(self, port: int) -> list[str]:
        return [*super()._command(port), *self.flags]


@contextlib.asynccontextmanager
async def start_anvil(
    *flags: str, block_time: float | None = None
) -> AsyncIterator[Anvil]:
    anvil = FlaggedAnvil(*flags, block_time=block_time)
    await asyncio.to_thread(anvil.start)
    try:
        yield anvil
    finally:
        await asyncio.to_thread(anvil.stop)


class RPCError(Exception):
    """A JSON-RPC error answer to one of the test's own calls."""


async def rpc(url: str, method: str, params: list[Any]) -> Any:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        )
    body = response.json()
    if "error" in body:
        raise RPCError(body["error"].get("message", ""))
    return body["result"]


async def deploy(url: str, *, set_code: bool = False) -> str:
    """The real 0.0.3 registry, deployed by a transaction, or (`set_code`, for chains
    that do not mine or lack EIP-1559) placed at the Volta address with anvil_setCode.

    The chain is then moved past block 0: at block 0 `changed = block.number` writes
    0 over 0, so every estimate there is the gas trap's 20,000-gas cousin.
    """
    at = VOLTA_REGISTRY_ADDRESS if set_code else None
    address = str(await asyncio.to_thread(deploy_registry, url, at=at))
    if set_code:
        await rpc(url, "evm_mine", [])
    return address


async def fund(url: str, address: str, wei: int) -> None:
    await asyncio.to_thread(peers.fund, url, address, wei)


async def _send_raw(
    url: str,
    sender: LocalKeySigner,
    to: str | None,
    data: bytes,
    value: int = 0,
    *,
    mine: bool = False,
) -> dict[str, Any]:
    nonce = int(
        await rpc(url, "eth_getTransactionCount", [sender.address, "pending"]), 16
    )
    gas_price = int(await rpc(url, "eth_gasPrice", []), 16) * 2
    tx = {
        "chainId": CHAIN_ID,
        "nonce": nonce,
        "gas": 3_000_000 if data else 21_000,
        "gasPrice": gas_price,
        "value": value,
        "data": "0x" + data.hex(),
    }
    if to is not None:
        tx["to"] = to
    raw = sender.sign_transaction(tx)
    tx_hash = await rpc(url, "eth_sendRawTransaction", ["0x" + raw.hex()])
    if mine:
        await rpc(url, "evm_mine", [])
    for _ in range(200):
        receipt = await rpc(url, "eth_getTransactionReceipt", [tx_hash])
        if receipt is not None:
            assert receipt["status"] == "0x1", receipt
            return dict(receipt)
        await asyncio.sleep(0.05)
    raise AssertionError("helper transaction not mined")


async def _change_owner(
    url: str, registry: str, identity: LocalKeySigner, new_owner: str
) -> None:
    """`changeOwner(identity, newOwner)` sent by the identity itself."""
    data = (
        bytes.fromhex("f00d4b5d")
        + bytes(12)
        + bytes.fromhex(identity.address[2:])
        + bytes(12)
        + bytes.fromhex(new_owner[2:])
    )
    await _send_raw(url, identity, registry, data)


async def _pool(url: str) -> list[str]:
    """Hashes of the transactions waiting in anvil's pool."""
    content = await rpc(url, "txpool_content", [])
    return [
        tx["hash"]
        for by_nonce in content["pending"].values()
        for tx in by_nonce.values()
    ]


async def _pool_size(url: str) -> int:
    return len(await _pool(url))


async def _wait_pool_size(url: str, size: int) -> list[str]:
    for _ in range(400):
        hashes = await _pool(url)
        if len(hashes) == size:
            return hashes
        await asyncio.sleep(0.025)
    raise AssertionError(f"pool never held {size} transactions")


pytestmark = pytest.mark.peers

NAME = erc1056.attribute_name()
GWEI = 10**9


def _service(token: str = "token") -> tuple[str, str, str, bytes]:
    service_id = str(uuid.uuid4())
    cid = "Qm" + hashlib.sha256(token.encode()).hexdigest()[:44]
    sha = hashlib.sha256(token.encode()).hexdigest()
    value = erc1056.service_value(service_id=service_id, cid=cid, token_sha256=sha)
    return service_id, cid, sha, value


def _did(signer: LocalKeySigner) -> str:
    return f"did:ethr:volta:{signer.address}"


def _services(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["id"]: entry for entry in document.get("service", [])}


def _chain(url: str, registry: str, **overrides) -> Chain:
    options: dict[str, Any] = {
        "chain_id": CHAIN_ID,
        "registry_address": registry,
        "max_fee_gwei": 100,
        "receipt_timeout": 30,
        "poll_interval": 0.05,
    }
    options.update(overrides)
    return Chain(url, **options)


class ForeignSigner:
    """Claims one address but signs with another key (a non-owner / forged writer)."""

    def __init__(self, address: str, key: LocalKeySigner) -> None:
        self._address = address
        self._key = key

    @property
    def address(self) -> str:
        return self._address

    def sign_message(self, message: bytes) -> bytes:
        return self._key.sign_message(message)

    def sign_hash(self, digest: bytes) -> bytes:
        return self._key.sign_hash(digest)

    def sign_transaction(self, transaction) -> bytes:
        return self._key.sign_transaction(transaction)


class ReplayingSigner(ForeignSigner):
    """Signs the first digest it sees and replays that signature afterwards."""

    def __init__(self, key: LocalKeySigner) -> None:
        super().__init__(key.address, key)
        self.first: bytes | None = None

    def sign_hash(self, digest: bytes) -> bytes:
        if self.first is None:
            self.first = self._key.sign_hash(digest)
        return self.first


@pytest.fixture
def local_chain(anvil: Anvil, registry_address: str) -> tuple[str, str]:
    """The shared automining anvil with the registry: (rpc url, registry address).

    Tests that change chain-wide state (base fee, mining mode) start their own.
    """
    return anvil.rpc_url, registry_address


@pytest.fixture
def operator() -> LocalKeySigner:
    return LocalKeySigner(OPERATOR_KEY)


async def _tx_count(url: str, address: str, tag: str = "latest") -> int:
    return int(await rpc(url, "eth_getTransactionCount", [address, tag]), 16)


# --- publication in both modes --------------------------------------------------------


async def test_asset_mode_publication_resolves_from_chain(local_chain):
    url, registry = local_chain
    asset = LocalKeySigner.generate()
    await fund(url, asset.address, 10**18)
    chain = _chain(url, registry, mode="asset")
    service_id, cid, sha, value = _service()
    try:
        result = await chain.publish_attribute(
            asset, name=NAME, value=value, validity=erc1056.VALIDITY_FOREVER
        )
        assert isinstance(result, PublishResult)
        assert result.mode == "asset"
        assert result.gas_used > 21_000
        assert await chain.changed(asset.address) == result.block_number
        assert await chain.balance(asset.address) < 10**18  # the asset paid
        entry = _services(await chain.resolve_document(_did(asset)))[service_id]
        assert entry["serviceEndpoint"] == cid
        assert entry["hash"] == sha
    finally:
        await chain.aclose()


async def test_relay_mode_publication_needs_no_asset_funds(local_chain, operator):
    url, registry = local_chain
    asset = LocalKeySigner.generate()
    chain = _chain(url, registry, mode="relay", operator=operator)
    service_id, cid, sha, value = _service()
    try:
        before = await chain.balance(operator.address)
        result = await chain.publish_attribute(
            asset, name=NAME, value=value, validity=erc1056.VALIDITY_FOREVER
        )
        assert result.mode == "relay"
        assert await chain.balance(asset.address) == 0
        assert await chain.balance(operator.address) < before
        assert await chain.registry_nonce(asset.address) == 1
        assert await chain.identity_owner(asset.address) == asset.address
        entry = _services(await chain.resolve_document(_did(asset)))[service_id]
        assert entry["serviceEndpoint"] == cid
        assert entry["hash"] == sha
    finally:
        await chain.aclose()


async def test_shipped_bytecode_signs_over_nonce_of_identity_not_owner(
    local_chain, operator
):
    """0.0.3's setAttributeSigned uses nonce[identity]; pin it on the real bytecode.

    Identity A hands ownership to B; B first bumps its own registry nonce, so
    nonce(A) = 0 and nonce(B) = 1 differ. B signing for A over nonce(A) must work.
    """
    url, registry = local_chain
    a, b = LocalKeySigner.generate(), LocalKeySigner.generate()
    await fund(url, a.address, 10**18)
    chain = _chain(url, registry, mode="relay", operator=operator)
    try:
        await chain.publish_attribute(
            b, name=NAME, value=_service()[3], validity=erc1056.VALIDITY_FOREVER
        )
        await _change_owner(url, registry, a, b.address)
        assert await chain.identity_owner(a.address) == b.address
        assert await chain.registry_nonce(a.address) == 0
        assert await chain.registry_nonce(b.address) == 1

        # Signing over the owner's nonce (the other build's rule) is rejected ...
        stale = erc1056.set_attribute_signed_digest(
            registry=registry,
            nonce=1,
            identity=a.address,
            name=NAME,
            value=b"x",
            validity=100,
        )
        v, r, s = erc1056.split_signature(b.sign_hash(stale))
        data = erc1056.set_attribute_signed_calldata(
            a.address, v, r, s, NAME, b"x", 100
        )
        with pytest.raises(RPCError, match="revert"):
            await rpc(
                url,
                "eth_estimateGas",
                [{"from": operator.address, "to": registry, "data": "0x" + data.hex()}],
            )
        # ... while the chain module's nonce(identity) rule is accepted.
        service_id, _, _, value = _service("for-a")
        await chain.publish_attribute(
            ForeignSigner(a.address, b),
            name=NAME,
            value=value,
            validity=erc1056.VALIDITY_FOREVER,
        )
        assert await chain.registry_nonce(a.address) == 1
        assert await chain.registry_nonce(b.address) == 1
        assert service_id in _services(await chain.resolve_document(_did(a)))
    finally:
        await chain.aclose()


# --- ordering: one change per identity per block --------------------------------------


async def test_two_publications_in_consecutive_blocks_both_succeed(local_chain):
    """Automine puts each write in its own block: the second runs into the gas trap
    (its estimate sees changed == latest block) and must still succeed."""
    url, registry = local_chain
    asset = LocalKeySigner.generate()
    await fund(url, asset.address, 10**18)
    chain = _chain(url, registry, mode="asset")
    first_id, _, _, first = _service("one")
    second_id, _, _, second = _service("two")
    try:
        one = await chain.publish_attribute(
            asset, name=NAME, value=first, validity=erc1056.VALIDITY_FOREVER
        )
        assert await chain.changed(asset.address) == await chain.block_number()
        two = await chain.publish_attribute(
            asset, name=NAME, value=second, validity=erc1056.VALIDITY_FOREVER
        )
        assert two.block_number == one.block_number + 1
        services = _services(await chain.resolve_document(_did(asset)))
        assert {first_id, second_id} <= set(services)
    finally:
        await chain.aclose()


async def test_without_gas_margin_the_gas_trap_is_a_permanent_status_0(
    local_chain, monkeypatch
):
    """The failure path the margin exists for: status 0 is reported, not retried."""
    url, registry = local_chain
    monkeypatch.setattr(chain_module, "GAS_MARGIN_FLOOR", 0)
    asset = LocalKeySigner.generate()
    await fund(url, asset.address, 10**18)
    chain = _chain(url, registry, mode="asset", gas_margin=0)
    try:
        await chain.publish_attribute(
            asset, name=NAME, value=_service()[3], validity=erc1056.VALIDITY_FOREVER
        )
        sent_before = await _tx_count(url, asset.address)
        with pytest.raises(ChainError) as caught:
            await chain.publish_attribute(
                asset, name=NAME, value=_service()[3], validity=erc1056.VALIDITY_FOREVER
            )
        assert caught.value.permanent
        assert caught.value.reason.startswith(OUT_OF_GAS)
        assert caught.value.tx_hash is not None
        receipt = await rpc(url, "eth_getTransactionReceipt", [caught.value.tx_hash])
        assert receipt["status"] == "0x0"
        assert await _tx_count(url, asset.address) == sent_before + 1  # sent once
    finally:
        await chain.aclose()


async def test_two_quick_publications_for_one_identity_land_in_different_blocks(
    operator,
):
    async with start_anvil(block_time=1) as anvil:
        registry = await deploy(anvil.url)
        chain = _chain(anvil.url, registry, mode="relay", operator=operator)
        asset = LocalKeySigner.generate()
        (first_id, _, _, first), (second_id, _, _, second) = (
            _service("a"),
            _service("b"),
        )
        try:
            one, two = await asyncio.gather(
                chain.publish_attribute(
                    asset, name=NAME, value=first, validity=erc1056.VALIDITY_FOREVER
                ),
                chain.publish_attribute(
                    asset, name=NAME, value=second, validity=erc1056.VALIDITY_FOREVER
                ),
            )
            assert one.block_number != two.block_number
            for result in (one, two):
                assert len(await chain.logs(asset.address, result.block_number)) == 1
            services = _services(await chain.resolve_document(_did(asset)))
            assert {first_id, second_id} <= set(services)
        finally:
            await chain.aclose()


async def test_a_change_pending_from_elsewhere_delays_ours_to_a_later_block(operator):
    """Another sender's change for the identity sits in the pending block: ours must
    not join it in that block."""
    async with start_anvil("--no-mining") as anvil:
        registry = await deploy(anvil.url, set_code=True)
        asset = LocalKeySigner.generate()
        chain = _chain(anvil.url, registry, mode="relay", operator=operator)
        other = _chain(anvil.url, registry, mode="asset", receipt_timeout=30)
        try:
            await fund(anvil.url, asset.address, 10**18)
            elsewhere = asyncio.create_task(
                other.publish_attribute(
                    asset, name=NAME, value=_service()[3], validity=100
                )
            )
            await _wait_pool_size(anvil.url, 1)
            ours = asyncio.create_task(
                chain.publish_attribute(
                    asset, name=NAME, value=_service()[3], validity=100
                )
            )
            await asyncio.sleep(0.5)
            assert await _pool_size(anvil.url) == 1  # ours waits for the next block
            await rpc(anvil.url, "evm_mine", [])
            first = await elsewhere
            await _wait_pool_size(anvil.url, 1)
            await rpc(anvil.url, "evm_mine", [])
            second = await ours
            assert second.block_number == first.block_number + 1
        finally:
            await chain.aclose()
            await other.aclose()


# --- nonces ---------------------------------------------------------------------------


async def test_fifty_concurrent_relayed_publications_land_without_nonce_errors(
    operator,
):
    async with start_anvil(block_time=1) as anvil:
        registry = await deploy(anvil.url)
        chain = _chain(anvil.url, registry, mode="relay", operator=operator)
        assets = [LocalKeySigner.generate() for _ in range(50)]
        services = [_service(f"token-{i}") for i in range(50)]
        start_nonce = await _tx_count(anvil.url, operator.address)
        try:
            results = await asyncio.gather(
                *(
                    chain.publish_attribute(
                        asset,
                        name=NAME,
                        value=service[3],
                        validity=erc1056.VALIDITY_FOREVER,
                    )
                    for asset, service in zip(assets, services, strict=True)
                )
            )
            assert len({r.tx_hash for r in results}) == 50
            assert await _tx_count(anvil.url, operator.address) == start_nonce + 50
            for asset, (service_id, cid, sha, _) in zip(assets, services, strict=True):
                assert await chain.balance(asset.address) == 0
                entry = _services(await chain.resolve_document(_did(asset)))[service_id]
                assert (entry["serviceEndpoint"], entry["hash"]) == (cid, sha)
        finally:
            await chain.aclose()


async def test_nonce_used_outside_evops_is_recovered(local_chain, operator):
    url, registry = local_chain
    chain = _chain(url, registry, mode="relay", operator=operator)
    try:
        await chain.publish_attribute(
            LocalKeySigner.generate(), name=NAME, value=b"1", validity=100
        )
        # The operator key sends something by hand: evops' local nonce is now stale.
        await _send_raw(url, operator, LocalKeySigner.generate().address, b"", value=1)
        result = await chain.publish_attribute(
            LocalKeySigner.generate(), name=NAME, value=b"2", validity=100
        )
        assert result.gas_used > 0
    finally:
        await chain.aclose()


async def test_dropped_transaction_is_sent_again(operator):
    async with start_anvil("--no-mining") as anvil:
        registry = await deploy(anvil.url, set_code=True)
        chain = _chain(anvil.url, registry, mode="relay", operator=operator)
        asset = LocalKeySigner.generate()
        try:
            task = asyncio.create_task(
                chain.publish_attribute(asset, name=NAME, value=b"v", validity=100)
            )
            (dropped,) = await _wait_pool_size(anvil.url, 1)
            await rpc(anvil.url, "anvil_dropTransaction", [dropped])
            assert await _pool_size(anvil.url) == 0
            # Same nonce, same fields: the node gets the identical transaction back.
            assert await _wait_pool_size(anvil.url, 1) == [dropped]
            await rpc(anvil.url, "evm_mine", [])
            result = await task
            assert result.tx_hash == dropped
            assert await chain.registry_nonce(asset.address) == 1
        finally:
            await chain.aclose()


async def test_receipt_timeout_is_transient_and_the_retry_adopts_the_mined_tx(
    operator,
):
    async with start_anvil("--no-mining") as anvil:
        registry = await deploy(anvil.url, set_code=True)
        chain = _chain(
            anvil.url, registry, mode="relay", operator=operator, receipt_timeout=0.5
        )
        asset = LocalKeySigner.generate()
        try:
            with pytest.raises(ChainError) as timed_out:
                await chain.publish_attribute(asset, name=NAME, value=b"v", validity=1)
            assert not timed_out.value.permanent
            assert timed_out.value.reason == RECEIPT_TIMEOUT
            assert timed_out.value.tx_hash is not None
            # Still pending: a second change for the identity must not be sent.
            with pytest.raises(ChainError) as pending:
                await chain.publish_attribute(asset, name=NAME, value=b"v", validity=1)
            assert not pending.value.permanent
            assert pending.value.reason == PREVIOUS_PENDING
            assert await _pool_size(anvil.url) == 1
            await rpc(anvil.url, "evm_mine", [])
            adopted = await chain.publish_attribute(
                asset, name=NAME, value=b"v", validity=1
            )
            assert adopted.tx_hash == timed_out.value.tx_hash
            assert await chain.registry_nonce(asset.address) == 1
        finally:
            await chain.aclose()


# --- failures -------------------------------------------------------------------------


async def test_non_owner_asset_mode_write_is_a_permanent_revert(local_chain):
    """The asset handed its identity to another owner: its own write must revert."""
    url, registry = local_chain
    asset, new_owner = LocalKeySigner.generate(), LocalKeySigner.generate()
    await fund(url, asset.address, 10**18)
    await _change_owner(url, registry, asset, new_owner.address)
    chain = _chain(url, registry, mode="asset")
    try:
        sent = await _tx_count(url, asset.address)
        with pytest.raises(ChainError) as caught:
            await chain.publish_attribute(asset, name=NAME, value=b"v", validity=1)
        assert caught.value.permanent
        assert caught.value.reason.startswith(REVERTED)
        assert await _tx_count(url, asset.address) == sent  # nothing was sent
    finally:
        await chain.aclose()


async def test_replayed_signature_is_a_permanent_revert_not_retried(
    local_chain, operator
):
    url, registry = local_chain
    chain = _chain(url, registry, mode="relay", operator=operator)
    asset = ReplayingSigner(LocalKeySigner.generate())
    try:
        await chain.publish_attribute(asset, name=NAME, value=b"v", validity=100)
        sent = await _tx_count(url, operator.address)
        with pytest.raises(ChainError) as caught:
            await chain.publish_attribute(asset, name=NAME, value=b"v", validity=100)
        assert caught.value.permanent
        assert caught.value.reason.startswith(REVERTED)
        assert await _tx_count(url, operator.address) == sent
        assert await chain.registry_nonce(asset.address) == 1
    finally:
        await chain.aclose()


async def test_unfunded_asset_in_asset_mode_is_a_permanent_funds_error(local_chain):
    url, registry = local_chain
    chain = _chain(url, registry, mode="asset")
    asset = LocalKeySigner.generate()
    try:
        with pytest.raises(ChainError) as caught:
            await chain.publish_attribute(asset, name=NAME, value=b"v", validity=1)
        assert caught.value.permanent
        assert caught.value.reason.startswith(INSUFFICIENT_FUNDS)
        assert asset.address in caught.value.reason
        assert caught.value.tx_hash is None
    finally:
        await chain.aclose()


async def test_rpc_going_away_mid_publication_is_transient(operator):
    async with start_anvil("--no-mining") as anvil:
        registry = await deploy(anvil.url, set_code=True)
        chain = _chain(anvil.url, registry, mode="relay", operator=operator)
        try:
            task = asyncio.create_task(
                chain.publish_attribute(
                    LocalKeySigner.generate(), name=NAME, value=b"v", validity=1
                )
            )
            (sent,) = await _wait_pool_size(anvil.url, 1)
            anvil.kill()  # the RPC dies while evops waits for the receipt
            with pytest.raises(ChainError) as caught:
                await task
            assert not caught.value.permanent
            assert caught.value.reason.startswith(RPC_UNREACHABLE)
            assert caught.value.tx_hash == sent
            with pytest.raises(ChainError) as read:
                await chain.block_number()
            assert not read.value.permanent
        finally:
            await chain.aclose()


async def test_rpc_that_never_answers_times_out_as_transient():
    async def hang(reader, writer):
        await asyncio.sleep(30)

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    chain = Chain(
        f"http://127.0.0.1:{port}",
        chain_id=CHAIN_ID,
        registry_address="0x" + "11" * 20,
        max_fee_gwei=1,
        request_timeout=0.3,
    )
    try:
        with pytest.raises(ChainError) as caught:
            await chain.changed("0x" + "22" * 20)
        assert not caught.value.permanent
        assert caught.value.reason == RPC_TIMEOUT
    finally:
        await chain.aclose()
        server.close()


async def test_wrong_chain_id_is_permanent(local_chain):
    url, registry = local_chain
    chain = _chain(url, registry, chain_id=246)
    try:
        with pytest.raises(ChainError) as caught:
            await chain.publish_attribute(
                LocalKeySigner.generate(), name=NAME, value=b"v", validity=1
            )
        assert caught.value.permanent
        assert caught.value.reason.startswith(CHAIN_ID_MISMATCH)
    finally:
        await chain.aclose()


# --- fees -----------------------------------------------------------------------------


async def test_eip1559_fees_respect_the_cap(operator):
    async with start_anvil() as anvil:  # the base fee is raised: a private chain
        await _fee_cap_case(anvil.url, await deploy(anvil.url), operator)


async def _fee_cap_case(url: str, registry: str, operator: LocalKeySigner) -> None:
    chain = _chain(url, registry, mode="relay", operator=operator, max_fee_gwei=1.5)
    try:
        result = await chain.publish_attribute(
            LocalKeySigner.generate(), name=NAME, value=b"v", validity=1
        )
        tx = await rpc(url, "eth_getTransactionByHash", [result.tx_hash])
        assert tx["type"] == "0x2"
        assert int(tx["maxFeePerGas"], 16) <= int(1.5 * GWEI)
        assert int(tx["maxPriorityFeePerGas"], 16) <= int(tx["maxFeePerGas"], 16)

        # The base fee climbs above the cap: wait (transient), send nothing.
        await rpc(url, "anvil_setNextBlockBaseFeePerGas", [hex(5 * GWEI)])
        await rpc(url, "evm_mine", [])
        await asyncio.sleep(0.1)  # past the head cache's poll interval (0.05 s)
        sent = await _tx_count(url, operator.address)
        with pytest.raises(ChainError) as caught:
            await chain.publish_attribute(
                LocalKeySigner.generate(), name=NAME, value=b"v", validity=1
            )
        assert not caught.value.permanent
        assert caught.value.reason.startswith(FEE_ABOVE_CAP)
        assert await _tx_count(url, operator.address) == sent
    finally:
        await chain.aclose()


async def test_legacy_fees_when_the_chain_has_no_base_fee(operator):
    async with start_anvil("--hardfork", "berlin") as anvil:
        registry = await deploy(anvil.url, set_code=True)
        latest = await rpc(anvil.url, "eth_getBlockByNumber", ["latest", False])
        assert "baseFeePerGas" not in latest
        chain = _chain(anvil.url, registry, mode="relay", operator=operator)
        try:
            result = await chain.publish_attribute(
                LocalKeySigner.generate(), name=NAME, value=b"v", validity=1
            )
            tx = await rpc(anvil.url, "eth_getTransactionByHash", [result.tx_hash])
            assert tx["type"] == "0x0"
            assert int(tx["gasPrice"], 16) <= 100 * GWEI
        finally:
            await chain.aclose()


# --- settings -------------------------------------------------------------------------


def test_chain_from_settings(settings, operator):
    settings.CHAIN_RPC_URL = "http://127.0.0.1:1"
    settings.CHAIN_ID = 246
    settings.DID_REGISTRY_ADDRESS = "0xE29672f34e92b56C9169f9D485fFc8b9A136BCE4"
    settings.CHAIN_WRITE_MODE = "relay"
    settings.CHAIN_MAX_FEE_GWEI = Decimal("2.5")
    settings.CHAIN_CONFIRMATIONS = 3
    settings.CHAIN_RECEIPT_TIMEOUT = 90
    settings.CHAIN_GAS_MARGIN = 0.5
    chain = chain_from_settings(operator=operator)
    assert chain.rpc_url == "http://127.0.0.1:1"
    assert chain.chain_id == 246
    assert chain.registry_address == settings.DID_REGISTRY_ADDRESS
    assert chain.mode == "relay"
    assert chain.operator is operator
    assert chain.max_fee_wei == 2_500_000_000
    assert (chain.confirmations, chain.receipt_timeout, chain.gas_margin) == (
        3,
        90,
        0.5,
    )


def test_relay_mode_without_operator_is_refused(settings):
    settings.CHAIN_WRITE_MODE = "relay"
    with pytest.raises(ValueError, match="operator"):
        chain_from_settings()


def test_read_only_chain_needs_no_operator_in_relay_mode(settings, operator):
    settings.CHAIN_WRITE_MODE = "relay"
    chain = chain_from_settings(read_only=True, request_timeout=3.0)
    assert (chain.mode, chain.operator) == ("asset", None)
    assert chain.request_timeout == 3.0
    # an operator passed by mistake is not kept on a read-only client
    assert chain_from_settings(operator=operator, read_only=True).operator is None


def test_default_registry_follows_the_chain_id(monkeypatch):
    assert chain_module.default_registry_address(73799) == (
        "0xC15D5A57A8Eb0e1dCBE5D88B8f9a82017e5Cc4AF"
    )
    assert chain_module.default_registry_address(246) == (
        "0xE29672f34e92b56C9169f9D485fFc8b9A136BCE4"
    )
    assert chain_module.default_registry_address(1) is None


def test_private_keys_never_appear_in_reprs_or_errors(operator):
    chain = Chain(
        "http://127.0.0.1:1",
        chain_id=CHAIN_ID,
        registry_address="0x" + "11" * 20,
        mode="relay",
        operator=operator,
        max_fee_gwei=1,
    )
    error = ChainError(INSUFFICIENT_FUNDS, permanent=True)
    for text in (repr(chain), str(chain), repr(error), str(error)):
        assert OPERATOR_KEY[2:] not in text.lower()
