"""Reading many DID documents at once (`Chain.resolve_documents`) against anvil."""

from __future__ import annotations

import asyncio
import json

import pytest

from evops.integrations.chain import RPC_ERROR, ChainError, chain_from_settings
from evops.protocol import erc1056
from evops.protocol.keys import LocalKeySigner
from evops.sandbox.peers import Anvil
from evops.tests.test_chain import CHAIN_ID, NAME, _chain, _did, _service, fund


@pytest.fixture
def local_chain(anvil: Anvil, registry_address: str) -> tuple[str, str]:
    """The shared automining anvil with the registry: (rpc url, registry address)."""
    return anvil.rpc_url, registry_address


async def _publish(chain, asset: LocalKeySigner, token: str) -> str:
    service_id, _, _, value = _service(token)
    await chain.publish_attribute(
        asset, name=NAME, value=value, validity=erc1056.VALIDITY_FOREVER
    )
    return service_id


async def test_many_documents_read_together_match_one_at_a_time(local_chain):
    url, registry = local_chain
    chain = _chain(url, registry, mode="asset", max_batch=2, document_cache_size=10)
    assets = [LocalKeySigner.generate() for _ in range(3)]
    try:
        for asset in assets[:2]:
            await fund(url, asset.address, 10**18)
            await _publish(chain, asset, f"first {asset.address}")
        await _publish(chain, assets[0], "second")  # two blocks of history
        dids = [_did(asset) for asset in assets]  # the third never changed
        documents = await chain.resolve_documents(dids)
        assert documents == {did: await chain.resolve_document(did) for did in dids}
        assert len(documents[dids[0]]["service"]) == 2
        assert documents[dids[2]]["service"] == []
        assert len(chain.histories) == 3
    finally:
        await chain.aclose()


async def test_a_kept_history_is_read_again_once_the_identity_changes(local_chain):
    url, registry = local_chain
    chain = _chain(url, registry, mode="asset", document_cache_size=10)
    asset = LocalKeySigner.generate()
    did = _did(asset)
    calls: list[str] = []
    batch = chain._batch

    async def counting(requests):
        calls.extend(method for method, _ in requests)
        return await batch(requests)

    chain._batch = counting  # type: ignore[method-assign]
    try:
        await fund(url, asset.address, 10**18)
        first = await _publish(chain, asset, "first")
        before = await chain.resolve_documents([did])
        calls.clear()
        assert await chain.resolve_documents([did]) == before
        assert calls == ["eth_call"]  # changed() only: the history was kept
        second = await _publish(chain, asset, "second")
        calls.clear()
        after = await chain.resolve_documents([did])
        assert [s["id"] for s in after[did]["service"]] == [first, second]
        assert "eth_getLogs" in calls
    finally:
        await chain.aclose()


async def test_histories_not_yet_confirmed_are_not_kept(local_chain):
    url, registry = local_chain
    writer = _chain(url, registry, mode="asset")
    # Reads count a history as settled once `confirmations` blocks deep.
    reader = _chain(url, registry, document_cache_size=10, confirmations=1000)
    asset = LocalKeySigner.generate()
    try:
        await fund(url, asset.address, 10**18)
        await _publish(writer, asset, "recent")
        await reader.resolve_documents([_did(asset)])
        assert len(reader.histories) == 0
    finally:
        await writer.aclose()
        await reader.aclose()


@pytest.mark.parametrize(
    "answer",
    [
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "no"}},
        [{"jsonrpc": "2.0", "id": 0, "error": {"code": -32000, "message": "x"}}],
        [],
    ],
    ids=["batches refused", "an error answer", "answers missing"],
)
async def test_a_failed_batch_is_a_transient_error(answer):
    body = json.dumps(answer).encode()

    async def serve(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    chain = _chain(f"http://127.0.0.1:{port}", "0x" + "11" * 20, chain_id=CHAIN_ID)
    try:
        with pytest.raises(ChainError) as caught:
            await chain.changed_many(["0x" + "22" * 20, "0x" + "33" * 20])
        assert not caught.value.permanent
        if isinstance(answer, dict):
            # A JSON-RPC error, whether the calls went together or one by one
            # (test_chain_batch.py covers the refusal of batches itself).
            assert caught.value.reason.startswith(RPC_ERROR)
    finally:
        await chain.aclose()
        server.close()


def test_batched_reads_are_configured_from_settings(settings):
    settings.CHAIN_RPC_URL = "http://127.0.0.1:1"
    settings.CHAIN_RPC_BATCH = 7
    settings.CHAIN_DOCUMENT_CACHE_SIZE = 123
    chain = chain_from_settings(read_only=True)
    assert (chain.max_batch, chain.histories.size) == (7, 123)
