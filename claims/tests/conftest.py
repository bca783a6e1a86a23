from __future__ import annotations

import pytest
from asgiref.sync import SyncToAsync
from django.db import connections

from assets.models import Asset
from claims import flows
from claims.tests.fakes import fake_integrations
from evops.protocol.dids import DID
from evops.protocol.keys import LocalKeySigner


@pytest.fixture(autouse=True)
def _fresh_role_cache():
    flows.forget_roles()
    yield
    flows.forget_roles()
    # Async tests reach the database from asgiref's single sync thread; close its
    # connection so the test database can be dropped.
    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


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
