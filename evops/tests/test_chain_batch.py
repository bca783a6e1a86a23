"""evops.integrations.chain: calls made together go to the node as one JSON-RPC batch.

A small JSON-RPC node (aiohttp) that records every HTTP exchange stands in for the
chain: what matters here is how the calls travel, not what the registry says (the
anvil tests in test_chain.py cover that, with batching on).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from evops.integrations.chain import RPC_ERROR, RPC_UNREACHABLE, Chain, ChainError

IDENTITY = "0x" + "22" * 20
BROKEN = "0x" + "33" * 20  # eth_call for this identity answers with an error


class Node:
    """Answers eth_blockNumber and eth_call; records each exchange's body."""

    def __init__(self, *, batches: bool = True) -> None:
        self.batches = batches
        self.bodies: list[Any] = []

    def answer(self, call: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": call["id"]}
        if call["method"] == "eth_blockNumber":
            reply["result"] = "0x10"
        elif BROKEN[2:] in call["params"][0]["data"]:
            reply["error"] = {"code": -32000, "message": "boom"}
        else:
            reply["result"] = "0x" + "00" * 31 + "07"
        return reply

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.bodies.append(body)
        if isinstance(body, list):
            if not self.batches:
                return web.json_response(
                    {"jsonrpc": "2.0", "id": None, "error": {"message": "no batch"}}
                )
            return web.json_response([self.answer(c) for c in reversed(body)])
        return web.json_response(self.answer(body))


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Node], Any]]:
    runners: list[web.AppRunner] = []
    chains: list[Chain] = []

    async def start(node: Node) -> Chain:
        app = web.Application()
        app.router.add_post("/", node.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        chain = Chain(
            f"http://127.0.0.1:{port}/",
            chain_id=1,
            registry_address="0x" + "11" * 20,
            max_fee_gwei=1,
            max_batch=4,
        )
        chains.append(chain)
        return chain

    yield start
    for chain in chains:
        await chain.aclose()
    for runner in runners:
        await runner.cleanup()


async def test_calls_made_together_share_exchanges_and_get_their_own_answers(serve):
    node = Node()
    chain = await serve(node)
    results = await asyncio.gather(
        *(chain.block_number() for _ in range(5)),
        *(chain.changed(IDENTITY) for _ in range(5)),
    )
    assert results == [16] * 5 + [7] * 5
    # Ten calls, at most four per exchange (max_batch), answers out of order.
    sizes = [len(b) if isinstance(b, list) else 1 for b in node.bodies]
    assert sum(sizes) == 10
    assert max(sizes) == 4
    assert len(sizes) < 10


async def test_a_lone_call_goes_as_before(serve):
    node = Node()
    chain = await serve(node)
    assert await chain.block_number() == 16
    assert await chain.changed(IDENTITY) == 7
    assert all(isinstance(body, dict) for body in node.bodies)


async def test_an_error_answer_is_its_callers_only(serve):
    node = Node()
    chain = await serve(node)
    await chain.block_number()  # the session is open: the next three go together
    node.bodies.clear()
    results = await asyncio.gather(
        chain.changed(IDENTITY),
        chain.changed(BROKEN),
        chain.block_number(),
        return_exceptions=True,
    )
    assert results[0] == 7 and results[2] == 16
    assert isinstance(results[1], ChainError)
    assert results[1].reason.startswith(RPC_ERROR)
    assert len(node.bodies) == 1


async def test_a_node_refusing_batches_gets_single_calls(serve):
    node = Node(batches=False)
    chain = await serve(node)
    await chain.block_number()
    node.bodies.clear()
    results = await asyncio.gather(*(chain.block_number() for _ in range(3)))
    assert results == [16] * 3
    assert isinstance(node.bodies[0], list)
    assert all(isinstance(body, dict) for body in node.bodies[1:])
    # From then on, no batch is tried again.
    await asyncio.gather(*(chain.block_number() for _ in range(3)))
    assert len(node.bodies) == 7


async def test_a_batch_answer_past_the_size_limit_is_asked_again_call_by_call(serve):
    node = Node()
    chain = await serve(node)
    await chain.block_number()
    # One answer fits the limit, four together do not: memory stays bounded by one
    # limit per exchange, and the calls still get their answers, one by one.
    chain.max_response_bytes = len(json.dumps(node.answer(_call()))) * 2
    node.bodies.clear()
    results = await asyncio.gather(*(chain.changed(IDENTITY) for _ in range(4)))
    assert results == [7] * 4
    assert isinstance(node.bodies[0], list)
    assert [type(body) for body in node.bodies[1:]] == [dict] * 4
    assert not chain._batches_refused  # the next burst is batched again


def _call() -> dict[str, Any]:
    return {"id": 0, "method": "eth_call", "params": [{"data": "0x" + "22" * 36}]}


async def test_a_dead_node_fails_every_caller_with_its_own_error():
    chain = Chain(
        "http://127.0.0.1:9/",  # discard port: nothing listens
        chain_id=1,
        registry_address="0x" + "11" * 20,
        max_fee_gwei=1,
    )
    try:
        errors = await asyncio.gather(
            *(chain.changed(IDENTITY) for _ in range(3)), return_exceptions=True
        )
    finally:
        await chain.aclose()
    assert all(isinstance(e, ChainError) and not e.permanent for e in errors)
    assert all(str(e).startswith(RPC_UNREACHABLE) for e in errors)
    assert len({id(e) for e in errors}) == 3
