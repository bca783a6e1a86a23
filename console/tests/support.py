"""Helpers shared by the console tests (users in each role, assets, claims)."""

from __future__ import annotations

import itertools
from typing import Any

from django.contrib.auth.models import Group, User

from assets.models import Asset
from claims.models import ClaimEvent, ClaimRecord, ClaimStatus
from console.groups import OPERATOR, VIEWER, ensure_groups
from evops.protocol.dids import DID
from evops.protocol.keys import LocalKeySigner

PASSWORD = "console-test-password"
_numbers = itertools.count(1)
# Test signers by asset pk, for the fake integrations (`claims.tests.fakes`).
SIGNERS: dict[int, LocalKeySigner] = {}


def make_user(role: str) -> User:
    """role: superuser, operator, viewer, nostaff."""
    ensure_groups()
    name = f"{role}{next(_numbers)}"
    user = User.objects.create_user(name, password=PASSWORD)
    if role == "superuser":
        user.is_staff = user.is_superuser = True
    elif role in (OPERATOR, VIEWER):
        user.is_staff = True
        user.save()
        user.groups.add(Group.objects.get(name=role))
    user.save()
    return user


def make_asset(**fields: Any) -> Asset:
    signer = LocalKeySigner.generate()
    did = DID.for_address(signer.address)
    asset = Asset.objects.create(did=did.canonical, address=did.address, **fields)
    SIGNERS[asset.pk] = signer
    return asset


def make_claim(
    asset: Asset, status: str = ClaimStatus.FAILED, **fields: Any
) -> ClaimRecord:
    number = next(_numbers)
    defaults: dict[str, Any] = {
        "claim_id": f"claim-{number}",
        "role": "prequalified.roles.tso.apps.test.iam.ewc",
        "status": status,
    }
    if status == ClaimStatus.FAILED:
        defaults["last_error"] = "ChainError: the RPC did not answer <in time>"
        defaults["cid"] = f"Qm{number:044d}"
        defaults["token"] = "eyJ.token.sig"
        defaults["token_sha256"] = f"{number:064x}"
    defaults.update(fields)
    claim = ClaimRecord.objects.create(asset=asset, **defaults)
    ClaimEvent.objects.create(
        record=claim, kind=status, to_status=status, actor="system", actor_label="test"
    )
    return claim
