"""The credential after publication, on the real local peers.

PostgreSQL, anvil with the real ERC-1056 registry (and the vendored
ClaimsRevocationRegistry), js-ipfs, NATS and the cache-server stand-in as the TSO:
renewal inside the window, expiry, revocation through the hub's status list and the
on-chain registry, a re-issue on the same claim id, and unreachable revocation
sources. Every removal is checked on the DID document resolved from chain.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from claims import pipeline
from claims.lifecycle import LifecycleConfig, lifecycle_sweep
from claims.models import LIFECYCLE, LISTENER, ClaimRecord, ClaimStatus
from claims.tests import test_end_to_end as e2e
from evops.integrations.chain import Chain
from evops.integrations.revocation import RevocationRegistry, StatusListClient
from evops.protocol import erc1056
from evops.protocol.credentials import token_sha256
from evops.protocol.dids import DID
from evops.protocol.keys import LocalKeySigner
from evops.sandbox import peers

# The end-to-end module's fixtures (the real integrations, funded assets, both
# chain modes), shared rather than copied.
real = e2e.real
funded_asset = e2e.funded_asset
chain_mode = e2e.chain_mode
env_name = e2e.env_name
ROLE = e2e.ROLE
_issue, _request, _token = e2e._issue, e2e._request, e2e._token

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio,
    pytest.mark.peers,
]


def _config(stand_in, *, window: float = 3600, registry=None) -> LifecycleConfig:
    return LifecycleConfig(
        renewal_window=timedelta(seconds=window),
        status_lists=StatusListClient(stand_in.url, timeout=5),
        registry=registry,
    )


async def _sweep(real, config: LifecycleConfig):
    try:
        return await lifecycle_sweep(integrations=real, config=config, actor=LIFECYCLE)
    finally:
        await config.aclose()


async def _published(
    real: Any, stand_in: Any, issuer: Any, anvil: Any, asset: Any, **token_fields: Any
) -> tuple[ClaimRecord, str]:
    """Request, issue (with `token_fields`) and publish one credential."""
    record = await _request(asset, real)
    token = _token(issuer, asset, **token_fields)
    assert await _issue(stand_in, issuer, anvil, record, token) == 201
    await pipeline.claim_accept_issued(
        asset=asset, claim_id=record.claim_id, integrations=real, actor=LISTENER
    )
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.PUBLISHED, record.last_error
    return record, token


async def _services(real: Any, asset: Any) -> list[dict[str, Any]]:
    document = await real.chain.resolve_document(asset.did)
    return list(document.get("service") or [])


async def _claims_of(stand_in, asset) -> int:
    return sum(1 for c in stand_in.claims.values() if c["subject"] == asset.did)


async def test_short_expiry_is_renewed_once_and_old_entry_removed(
    real, stand_in, funded_asset, issuer, anvil, chain_mode
):
    asset = await sync_to_async(funded_asset)()
    exp = int(time.time()) + 600
    old, _ = await _published(real, stand_in, issuer, anvil, asset, exp=exp)
    assert old.expires_at == datetime.fromtimestamp(exp, tz=UTC)
    assert old.attribute_name is not None and old.attribute_value is not None
    assert bytes(old.attribute_name) == erc1056.attribute_name()
    assert bytes(old.attribute_value) == erc1056.service_value(
        service_id=old.service_id, cid=old.cid, token_sha256=old.token_sha256
    )

    result = await _sweep(real, _config(stand_in))
    assert (result.renewals, result.errors) == (1, [])
    again = await _sweep(real, _config(stand_in))
    assert again.renewals == 0  # filed once
    assert await _claims_of(stand_in, asset) == 2
    await old.arefresh_from_db()
    assert old.status == ClaimStatus.PUBLISHED and old.renewal_claim_id
    assert await old.events.filter(kind="renewal_requested").acount() == 1
    renewal = await ClaimRecord.objects.select_related("asset").aget(
        asset=asset, claim_id=old.renewal_claim_id
    )
    assert renewal.status == ClaimStatus.REQUESTED

    second = _token(issuer, asset, exp=int(time.time()) + 7200)
    assert await _issue(stand_in, issuer, anvil, renewal, second) == 201
    await pipeline.claim_accept_issued(
        asset=asset, claim_id=renewal.claim_id, integrations=real, actor=LISTENER
    )
    await renewal.arefresh_from_db()
    assert renewal.status == ClaimStatus.PUBLISHED, renewal.last_error
    assert renewal.service_id != old.service_id
    assert len(await _services(real, asset)) == 2  # the new one first, then...

    result = await _sweep(real, _config(stand_in))
    assert (result.superseded, result.removed, result.errors) == (1, 1, [])
    await old.arefresh_from_db()
    assert old.status == ClaimStatus.SUPERSEDED
    assert old.superseded_by_id == renewal.pk
    assert old.entry_removed_at is not None and old.removal_tx_hash
    services = await _services(real, asset)
    assert [s["hash"] for s in services] == [token_sha256(second)]
    event = await old.events.filter(kind="entry_removed").aget()
    assert chain_mode in event.message
    # Nothing more to do: no second removal, no new request.
    quiet = await _sweep(real, _config(stand_in))
    assert (quiet.removed, quiet.renewals, quiet.superseded) == (0, 0, 0)
    assert await _claims_of(stand_in, asset) == 2


@pytest.mark.parametrize("chain_mode", ["asset"], indirect=True)
async def test_expiry_marks_expired_and_removes_the_entry(
    real, stand_in, funded_asset, issuer, anvil
):
    asset = await sync_to_async(funded_asset)()
    exp = int(time.time()) + 4
    record, _ = await _published(real, stand_in, issuer, anvil, asset, exp=exp)
    # As for a record published before the lifecycle existed: the bytes written are
    # not on the row, so the removal finds them in the registry's history.
    await ClaimRecord.objects.filter(pk=record.pk).aupdate(
        attribute_name=None, attribute_value=None
    )

    async def passed() -> bool:
        return time.time() > exp

    for _ in range(200):
        if await passed():
            break
        await asyncio.sleep(0.05)
    result = await _sweep(real, _config(stand_in, window=0))
    assert (result.expired, result.removed, result.errors) == (1, 1, [])
    # Never seen inside the window: still renewed once before it expired.
    assert result.renewals == 1
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.EXPIRED and record.entry_removed_at
    assert record.attribute_value is not None
    assert bytes(record.attribute_value) == erc1056.service_value(
        service_id=record.service_id, cid=record.cid, token_sha256=record.token_sha256
    )
    assert await _services(real, asset) == []


@pytest.mark.parametrize("chain_mode", ["asset"], indirect=True)
async def test_status_list_revocation_removes_entry_and_never_rerequests(
    real, stand_in, funded_asset, issuer, anvil
):
    asset = await sync_to_async(funded_asset)()
    status = stand_in.status_entry()
    credential_id = status["statusListCredential"].rsplit("/", 1)[1]
    record, _ = await _published(
        real,
        stand_in,
        issuer,
        anvil,
        asset,
        exp=int(time.time()) + 600,
        credential_status=status,
    )
    assert record.status_list_url == status["statusListCredential"]
    assert record.status_list_index == 0
    config = _config(stand_in, window=60)  # outside the window: no renewal yet
    assert (await _sweep(real, config)).revoked == 0  # 204: not revoked

    # Revoked by someone who is not among the role's revokers: reported, not obeyed.
    stranger = DID.for_address(LocalKeySigner.generate().address).canonical
    stand_in.revoke_credential(credential_id, revoker=stranger)
    result = await _sweep(real, _config(stand_in, window=60))
    assert result.revoked == 0 and result.errors
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.PUBLISHED
    assert "not among the role's revokers" in record.last_error
    assert len(await _services(real, asset)) == 1

    issuer_did = DID.for_address(issuer.address).canonical
    stand_in.revoke_credential(credential_id, revoker=issuer_did)
    requests_before = await _claims_of(stand_in, asset)
    # Inside the window now: a revoked role is still never re-requested.
    result = await _sweep(real, _config(stand_in, window=3600))
    assert (result.revoked, result.removed, result.renewals) == (1, 1, 0)
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.REVOKED
    assert record.revoked_by == issuer_did and record.entry_removed_at
    assert "Revoked by" in record.last_error
    assert await _services(real, asset) == []
    await _sweep(real, _config(stand_in, window=3600))
    assert await _claims_of(stand_in, asset) == requests_before


@pytest.mark.parametrize("chain_mode", ["relay"], indirect=True)
async def test_onchain_registry_revocation_removes_entry(
    real, stand_in, funded_asset, issuer, anvil, registry_address
):
    asset = await sync_to_async(funded_asset)()
    record, _ = await _published(real, stand_in, issuer, anvil, asset)
    address = await asyncio.to_thread(
        peers.deploy_revocation_registry, anvil.rpc_url, did_registry=registry_address
    )
    registry = RevocationRegistry(real.chain, address)
    assert await registry.revocation(ROLE, asset.address) is None
    assert (await _sweep(real, _config(stand_in, registry=registry))).revoked == 0

    await asyncio.to_thread(
        peers.mark_claim_revoked,
        anvil.rpc_url,
        address,
        role=ROLE,
        subject=asset.address,
        revoker=issuer.address,
        block=7,
    )
    revocation = await registry.revocation(ROLE, asset.address)
    assert revocation is not None and revocation.revoker == issuer.address
    result = await _sweep(real, _config(stand_in, registry=registry, window=10**9))
    assert (result.revoked, result.removed, result.renewals) == (1, 1, 0)
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.REVOKED
    assert record.revoked_by == issuer.address
    assert await _services(real, asset) == []


@pytest.mark.parametrize("chain_mode", ["asset"], indirect=True)
async def test_unreachable_sources_are_transient_and_remove_nothing(
    real, stand_in, funded_asset, issuer, anvil
):
    asset = await sync_to_async(funded_asset)()
    record, _ = await _published(
        real,
        stand_in,
        issuer,
        anvil,
        asset,
        credential_status=stand_in.status_entry(),
    )
    dead_rpc = Chain(
        f"http://127.0.0.1:{peers.free_port()}",
        chain_id=73799,
        registry_address=real.chain.registry_address,
        max_fee_gwei=100,
        request_timeout=2,
    )
    config = LifecycleConfig(
        renewal_window=timedelta(0),
        status_lists=StatusListClient(
            f"http://127.0.0.1:{peers.free_port()}", timeout=2
        ),
        registry=RevocationRegistry(dead_rpc, "0x" + "11" * 20),
    )
    result = await _sweep(real, config)
    await dead_rpc.aclose()
    assert result.revoked == 0 and result.removed == 0
    assert any("status list unreachable" in e for e in result.errors)
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.PUBLISHED
    assert "status list unreachable" in record.last_error
    assert await record.events.filter(kind="lifecycle_error").acount() == 1
    assert len(await _services(real, asset)) == 1

    # The hub answering 503 is just as transient; the registry alone unreachable too.
    stand_in.set_faults(fail_rate=1.0)
    dead_rpc = Chain(
        f"http://127.0.0.1:{peers.free_port()}",
        chain_id=73799,
        registry_address=real.chain.registry_address,
        max_fee_gwei=100,
        request_timeout=2,
    )
    result = await _sweep(
        real,
        LifecycleConfig(
            renewal_window=timedelta(0),
            status_lists=StatusListClient(stand_in.url, timeout=5),
            registry=RevocationRegistry(dead_rpc, "0x" + "11" * 20),
        ),
    )
    stand_in.set_faults(fail_rate=0.0)
    await dead_rpc.aclose()
    assert result.revoked == 0 and result.errors
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.PUBLISHED
    assert len(await _services(real, asset)) == 1

    dead_rpc = Chain(
        f"http://127.0.0.1:{peers.free_port()}",
        chain_id=73799,
        registry_address=real.chain.registry_address,
        max_fee_gwei=100,
        request_timeout=2,
    )
    result = await _sweep(
        real,
        LifecycleConfig(
            renewal_window=timedelta(0),
            status_lists=None,
            registry=RevocationRegistry(dead_rpc, "0x" + "11" * 20),
        ),
    )
    await dead_rpc.aclose()
    assert any("revocation registry unreachable" in e for e in result.errors)
    await record.arefresh_from_db()
    assert record.status == ClaimStatus.PUBLISHED
    assert len(await _services(real, asset)) == 1


@pytest.mark.parametrize("chain_mode", ["asset"], indirect=True)
async def test_reissue_on_same_claim_id_replaces_the_entry(
    real, stand_in, funded_asset, issuer, anvil
):
    asset = await sync_to_async(funded_asset)()
    old, first = await _published(real, stand_in, issuer, anvil, asset)
    claim_id = old.claim_id
    second = _token(issuer, asset, exp=int(time.time()) + 7200)
    loaded = await ClaimRecord.objects.select_related("asset").aget(pk=old.pk)
    assert await _issue(stand_in, issuer, anvil, loaded, second) == 201
    await pipeline.claim_accept_issued(
        asset=asset, claim_id=claim_id, integrations=real, actor=LISTENER
    )
    new = await ClaimRecord.objects.aget(asset=asset, claim_id=claim_id)
    assert new.pk != old.pk and new.status == ClaimStatus.PUBLISHED
    await old.arefresh_from_db()
    assert old.claim_id == f"{claim_id}@{old.pk}"
    assert old.status == ClaimStatus.PUBLISHED  # kept until the sweep

    result = await _sweep(real, _config(stand_in, window=0))
    assert (result.superseded, result.removed, result.errors) == (1, 1, [])
    await old.arefresh_from_db()
    assert old.status == ClaimStatus.SUPERSEDED
    services = await _services(real, asset)
    assert [s["hash"] for s in services] == [token_sha256(second)]
    assert token_sha256(first) != token_sha256(second)
