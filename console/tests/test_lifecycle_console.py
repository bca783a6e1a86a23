"""The lifecycle in the console: filters, the expiry calendar, "renew now"."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from claims.models import ClaimEvent, ClaimRecord, ClaimStatus
from claims.tests.fakes import ROLE, fake_integrations
from console import groups
from console.admin.claims import ClaimRecordAdmin
from console.tests.support import SIGNERS, make_asset, make_claim, make_user
from evops.protocol.keys import LocalKeySigner

pytestmark = pytest.mark.django_db

CLAIMS = "admin:claims_claimrecord_changelist"
CALENDAR = "admin:claims_claimrecord_expiry_calendar"


@pytest.fixture(autouse=True)
def _no_chain(settings):
    settings.CHAIN_RPC_URL = "http://127.0.0.1:9"


@pytest.fixture
def operator(client):
    user = make_user(groups.OPERATOR)
    client.force_login(user)
    return user


def _published(days: float | None, **fields: Any) -> ClaimRecord:
    expires = None if days is None else timezone.now() + timedelta(days=days)
    return make_claim(
        make_asset(), ClaimStatus.PUBLISHED, expires_at=expires, role=ROLE, **fields
    )


def _listed(client: Any, **params: Any) -> set[int]:
    page = client.get(reverse(CLAIMS), params)
    assert page.status_code == 200
    return {claim.pk for claim in page.context["cl"].result_list}


def test_expiry_and_ended_filters(client, operator):
    soon, month, later, never = (
        _published(3),
        _published(20),
        _published(90),
        _published(None),
    )
    past = _published(-1)
    revoked = make_claim(make_asset(), ClaimStatus.REVOKED)
    expired = make_claim(
        make_asset(), ClaimStatus.EXPIRED, entry_removed_at=timezone.now()
    )
    assert _listed(client, expires="7") == {soon.pk}
    assert _listed(client, expires="30") == {soon.pk, month.pk}
    assert _listed(client, expires="past") == {past.pk}
    assert _listed(client, expires="never") == {never.pk}
    assert later.pk not in _listed(client, expires="30")
    assert _listed(client, ended="revoked") == {revoked.pk}
    assert _listed(client, ended="expired") == {expired.pk}
    assert _listed(client, ended="entry_left") == {revoked.pk}


def test_calendar_shows_windows_and_prequalified_share(client, operator):
    soon, month = _published(3), _published(20)
    _published(-1)  # past expiry: published but not valid any more
    make_asset()  # never prequalified
    page = client.get(reverse(CALENDAR))
    assert page.status_code == 200
    text = page.content.decode()
    assert "2 of 4 active assets prequalified (50.0%)" in text
    calendar = page.context["calendar"]
    assert [[r.pk for r in rows] for _, rows in calendar.windows] == [
        [soon.pk],
        [soon.pk, month.pk],
    ]


def test_calendar_needs_view_permission(client):
    client.force_login(make_user("nostaff"))
    assert client.get(reverse(CALENDAR)).status_code in (302, 403)


def test_renew_now_asks_then_files_once_as_the_user(client, operator, monkeypatch):
    bundle, cache, _, _ = fake_integrations(LocalKeySigner.generate(), SIGNERS)
    monkeypatch.setattr(ClaimRecordAdmin, "lifecycle_integrations", lambda self: bundle)
    claim = _published(60)
    failed = make_claim(make_asset())
    data = {
        "action": "renew_now",
        "_selected_action": [str(claim.pk), str(failed.pk)],
        "index": 0,
    }
    page = client.post(reverse(CLAIMS), data)
    assert b"Renew now?" in page.content and cache.requests == []
    done = client.post(reverse(CLAIMS), {**data, "confirm": "yes"}, follow=True)
    assert "Renew now: 1 filed" in done.content.decode()
    assert len(cache.requests) == 1
    claim.refresh_from_db()
    assert claim.renewal_requested_at is not None and claim.renewal_claim_id
    note = ClaimEvent.objects.get(record=claim, kind="renewal_requested")
    assert note.user == operator and "on request" in note.message
    renewal = ClaimRecord.objects.get(claim_id=claim.renewal_claim_id)
    assert renewal.status == ClaimStatus.REQUESTED


def test_renew_now_refuses_a_revoked_role(client, operator, monkeypatch):
    bundle, cache, _, _ = fake_integrations(LocalKeySigner.generate(), SIGNERS)
    monkeypatch.setattr(ClaimRecordAdmin, "lifecycle_integrations", lambda self: bundle)
    claim = _published(60)
    make_claim(claim.asset, ClaimStatus.REVOKED, role=ROLE)
    data = {
        "action": "renew_now",
        "_selected_action": [str(claim.pk)],
        "index": 0,
        "confirm": "yes",
    }
    done = client.post(reverse(CLAIMS), data, follow=True)
    assert "not renewed (role revoked)" in done.content.decode()
    assert cache.requests == []
