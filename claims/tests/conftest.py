from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.sync import SyncToAsync
from django.db import connections
from web3.types import RPCEndpoint

from assets.models import Asset
from claims.tests.fakes import fake_integrations
from evops.protocol.dids import DID
from evops.protocol.keys import LocalKeySigner
from evops.sandbox import peers
from evops.sandbox.cache_server import CacheServerStandIn, role_json

#: The role the end-to-end tests' stand-in serves, with the test's `issuer` as its
#: only issuer.
E2E_ROLE = "prequalified.roles.tso.apps.elia.iam.ewc"


@pytest.fixture(autouse=True)
def _close_sync_thread_connection():
    yield
    # Async tests reach the database from asgiref's single sync thread; close its
    # connection so the test database can be dropped.
    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


@pytest.fixture
def jetstream_stream(nats_server: peers.NatsServer) -> Iterator[str]:
    """A JetStream stream name of this test only, deleted (durables with it) after.

    The NATS server lives for the whole session: a stream a failed test left behind
    would still capture its subjects and hold its durable consumers.
    """
    name = f"T{uuid.uuid4().hex[:12]}"
    yield name

    async def delete() -> None:
        import nats
        from nats.js.errors import NotFoundError

        client = await nats.connect(nats_server.url)
        try:
            await client.jetstream().delete_stream(name)
        except NotFoundError:
            pass  # the test never created it
        finally:
            await client.close()

    # In a thread of its own: the test's event loop may still be set here.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, delete()).result(timeout=30)


@pytest.fixture
def fast_retries(settings):
    settings.RETRY_BASE_SECONDS = 0
    settings.RETRY_MAX_SECONDS = 0
    return settings


@pytest.fixture
def issuer() -> LocalKeySigner:
    return LocalKeySigner.generate()


@pytest.fixture
def signers() -> dict[int, LocalKeySigner]:
    return {}


@pytest.fixture
def make_asset(signers):
    def make(**fields) -> Asset:
        signer = LocalKeySigner.generate()
        did = DID.for_address(signer.address)
        asset = Asset.objects.create(did=did.canonical, address=did.address, **fields)
        signers[asset.pk] = signer
        return asset

    return make


@pytest.fixture
def fakes(issuer, signers):
    return fake_integrations(issuer, signers)


@pytest.fixture
def env_name() -> str:
    """A claim-exchange environment of this test only (its own NATS subjects)."""
    return f"e2e{uuid.uuid4().hex[:8]}"


@pytest.fixture
def stand_in(
    anvil: peers.Anvil,
    registry_address: str,
    nats_server: peers.NatsServer,
    issuer: LocalKeySigner,
    env_name: str,
) -> Iterator[CacheServerStandIn]:
    """The cache-server stand-in on the local peers, serving `E2E_ROLE`.

    It reads DID documents from the registry on anvil, as the real server does for
    signatures by an issuer's delegate.
    """
    issuer_did = DID.for_address(issuer.address).canonical
    # Login freshness looks a few blocks back: make sure there are some.
    peers.chain_web3(anvil.rpc_url).manager.request_blocking(
        RPCEndpoint("anvil_mine"), ["0x20"]
    )
    server = CacheServerStandIn(
        anvil.rpc_url,
        nats_server.url,
        roles=[role_json(E2E_ROLE, issuer_dids=[issuer_did])],
        env=env_name,
        registry_address=registry_address,
    ).start()
    yield server
    server.stop()
