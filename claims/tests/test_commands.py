"""reconcile_claims, retry_claims and listener_health through call_command."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from asgiref.sync import async_to_sync
from django.core.management import CommandError, call_command
from django.utils import timezone

from claims.management.commands import reconcile_claims, retry_claims
from claims.models import ClaimRecord, ClaimStatus, ConnectionState, ListenerHeartbeat

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def use_fakes(monkeypatch, fakes):
    integrations = fakes[0]
    for command in (reconcile_claims.Command, retry_claims.Command):
        monkeypatch.setattr(command, "integrations", lambda self: integrations)
    return fakes


def _issued_claim(cache, integrations, asset) -> str:
    signer = integrations.signer_for(asset)
    role = async_to_sync(cache.role)(signer, asset.did, "r")
    claim_id: str = async_to_sync(cache.request_claim)(
        signer, asset.did, role=role
    ).claim_id
    cache.issue(claim_id)
    return claim_id


def test_reconcile_claims_publishes_missing_once(make_asset, use_fakes):
    integrations, cache, _, chain = use_fakes
    assets = [make_asset() for _ in range(3)]
    for asset in assets[:2]:
        _issued_claim(cache, integrations, asset)
    out = StringIO()
    call_command("reconcile_claims", "--no-progress", stdout=out)
    assert "3 assets: 2 published, 0 already on chain" in out.getvalue()
    out = StringIO()
    call_command(
        "reconcile_claims", "--no-progress", "--asset", assets[0].did, stdout=out
    )
    assert "1 assets: 0 published, 1 already on chain" in out.getvalue()
    assert len(chain.writes) == 2


def test_reconcile_claims_refuses_unknown_assets(make_asset, use_fakes):
    with pytest.raises(CommandError, match="not known"):
        call_command(
            "reconcile_claims",
            "--asset",
            "did:ethr:volta:0x000000000000000000000000000000000000dEaD",
        )
    with pytest.raises(CommandError, match="--asset"):
        call_command("reconcile_claims", "--asset", "nonsense")


def test_retry_claims_republishes_a_failed_claim(make_asset, use_fakes, admin_user):
    integrations, cache, _, chain = use_fakes
    asset = make_asset()
    claim_id = _issued_claim(cache, integrations, asset)
    record = ClaimRecord.objects.create(
        asset=asset,
        claim_id=claim_id,
        status=ClaimStatus.FAILED,
        token=cache.claims[claim_id].issued_token,
        token_sha256="0" * 64,
        last_error="ChainError: transaction reverted",
    )
    import hashlib

    record.token_sha256 = hashlib.sha256(record.token.encode()).hexdigest()
    record.save()
    out = StringIO()
    call_command(
        "retry_claims", "--claim", claim_id, "--user", admin_user.username, stdout=out
    )
    record.refresh_from_db()
    assert record.status == ClaimStatus.PUBLISHED
    assert "1 of 1 claims scheduled again" in out.getvalue()
    assert record.events.get(kind="retry").user_id == admin_user.pk
    assert len(chain.writes) == 1
    out = StringIO()
    call_command("retry_claims", "--claim", claim_id, stdout=out)
    assert "0 of 0" in out.getvalue()


def test_listener_health(db):
    with pytest.raises(SystemExit) as info:
        call_command("listener_health", stdout=StringIO(), stderr=StringIO())
    assert info.value.code == 1
    now = timezone.now()
    beat = ListenerHeartbeat.objects.create(
        name="l1", state=ConnectionState.CONNECTED, last_heartbeat=now, started_at=now
    )
    call_command("listener_health", "--name", "l1", stdout=StringIO())
    beat.last_heartbeat = now - timedelta(minutes=5)
    beat.save()
    err = StringIO()
    with pytest.raises(SystemExit):
        call_command("listener_health", "--name", "l1", stdout=StringIO(), stderr=err)
    assert "last heartbeat" in err.getvalue()
    beat.last_heartbeat = now
    beat.state = ConnectionState.RECONNECTING
    beat.save()
    with pytest.raises(SystemExit):
        call_command("listener_health", "--name", "l1", stdout=StringIO(), stderr=err)
