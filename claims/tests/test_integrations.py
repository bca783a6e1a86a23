from __future__ import annotations

import asyncio

import pytest

from claims.integrations import Integrations, integrations_from_settings
from evops.integrations.credential_store import CacheServerStore, IpfsStore
from evops.protocol.dids import DID
from evops.protocol.keys import LocalKeySigner

pytestmark = pytest.mark.django_db


def _build(settings, store: str) -> Integrations:
    settings.CHAIN_WRITE_MODE = "asset"
    settings.CREDENTIAL_STORE = store
    return integrations_from_settings()


def test_ipfs_mode_has_one_shared_store(settings):
    bundle = _build(settings, "ipfs")
    try:
        signer = LocalKeySigner.generate()
        did = DID.for_address(signer.address).canonical
        assert isinstance(bundle.store, IpfsStore)
        assert bundle.store_for(signer, did) is bundle.store
    finally:
        asyncio.run(bundle.aclose())


def test_cache_server_mode_builds_a_store_per_asset_session(settings):
    bundle = _build(settings, "cache-server")
    try:
        assert bundle.store is None
        one, two = LocalKeySigner.generate(), LocalKeySigner.generate()
        store = bundle.store_for(one, DID.for_address(one.address).canonical)
        other = bundle.store_for(two, DID.for_address(two.address).canonical)
        assert isinstance(store, CacheServerStore)
        assert isinstance(other, CacheServerStore)
        assert store is not other
    finally:
        asyncio.run(bundle.aclose())
