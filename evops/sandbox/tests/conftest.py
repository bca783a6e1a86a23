"""Fixtures for the cache-server tests: the stand-in over real HTTP, on real peers.

The chain and NATS are the suite-wide `anvil` and `nats_server` fixtures.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from evops.protocol.dids import DID
from evops.protocol.keys import LocalKeySigner
from evops.sandbox.cache_server import CacheServerStandIn, eth_block_number, role_json
from evops.sandbox.peers import Anvil, NatsServer

ROLE = "prequalified.roles.tso.apps.elia.iam.ewc"
ENV = "ewf-test"


@pytest.fixture(scope="session")
def cache_anvil(anvil: Anvil) -> Anvil:
    return anvil


@pytest.fixture(scope="session")
def cache_nats(nats_server: NatsServer) -> NatsServer:
    return nats_server


def rpc(url: str, method: str, params: list[Any]) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    req = urllib.request.Request(
        url, body.encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())["result"]


@pytest.fixture(scope="session")
def rpc_url(cache_anvil: Anvil) -> str:
    # Enough history that "10 blocks behind" exists.
    rpc(cache_anvil.rpc_url, "anvil_mine", ["0x20"])
    return cache_anvil.rpc_url


@pytest.fixture
def block_number(rpc_url: str) -> Callable[[], Awaitable[int]]:
    async def read() -> int:
        return await eth_block_number(rpc_url)

    return read


@pytest.fixture
def issuer() -> LocalKeySigner:
    return LocalKeySigner.generate()


@pytest.fixture
def issuer_did(issuer: LocalKeySigner) -> str:
    return DID.for_address(issuer.address).canonical


@pytest.fixture
def asset() -> LocalKeySigner:
    return LocalKeySigner.generate()


@pytest.fixture
def asset_did(asset: LocalKeySigner) -> str:
    return DID.for_address(asset.address).canonical


@pytest.fixture
def make_stand_in(
    rpc_url: str, cache_nats: NatsServer, issuer_did: str
) -> Iterator[Callable[..., CacheServerStandIn]]:
    started: list[CacheServerStandIn] = []

    def make(**kwargs: object) -> CacheServerStandIn:
        kwargs.setdefault("roles", [role_json(ROLE, issuer_dids=[issuer_did])])
        kwargs.setdefault("env", ENV)
        stand_in = CacheServerStandIn(rpc_url, cache_nats.url, **kwargs)  # type: ignore[arg-type]
        started.append(stand_in.start())
        return stand_in

    yield make
    for stand_in in started:
        stand_in.stop()


@pytest.fixture
def stand_in(make_stand_in: Callable[..., CacheServerStandIn]) -> CacheServerStandIn:
    return make_stand_in()
