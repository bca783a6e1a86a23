"""What issue 13 asked of the console: find why, act from the page, read amounts.

Search by every id an operator holds (exact, indexed lookups), the prequalification
filter, detail-page actions with confirmations that say exactly what happens (and a
viewer refused by every route), the inbox resolved to the asset and claim a message
concerns, and chain amounts in the chain's unit with the address to fund.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from claims.inbox import REASON_DUPLICATE
from claims.message_columns import REASON_FOR_ISSUERS
from claims.models import (
    ClaimEvent,
    ClaimRecord,
    ClaimStatus,
    InboundMessage,
    MessageKind,
    MessageOutcome,
)
from claims.tests.fakes import fake_integrations
from console import groups
from console.display import in_chain_unit, wei_in_chain_unit
from console.tests.support import SIGNERS, make_asset, make_claim, make_user
from evops.protocol.keys import LocalKeySigner

pytestmark = pytest.mark.django_db

CLAIMS = "admin:claims_claimrecord_changelist"
ASSETS = "admin:assets_asset_changelist"
INBOX = "admin:claims_inboundmessage_changelist"


@pytest.fixture(autouse=True)
def _no_chain(settings):
    settings.CHAIN_RPC_URL = "http://127.0.0.1:9"
    settings.CHAIN_ID = 73799  # Volta: VT


@pytest.fixture
def operator(client):
    user = make_user(groups.OPERATOR)
    client.force_login(user)
    return user


@pytest.fixture
def viewer(client):
    user = make_user(groups.VIEWER)
    client.force_login(user)
    return user


@pytest.fixture
def fakes(monkeypatch):
    bundle = fake_integrations(LocalKeySigner.generate(), SIGNERS)
    monkeypatch.setattr(
        "console.services.integrations_from_settings", lambda: bundle[0]
    )
    return bundle


def _listed(client: Any, url: str, **params: Any) -> set[int]:
    response = client.get(reverse(url), params)
    assert response.status_code == 200
    return {row.pk for row in response.context["cl"].result_list}


# --- search and filters --------------------------------------------------------------


def test_claims_are_found_by_every_id_an_operator_holds(client, viewer):
    asset = make_asset(label="EVSE-DE-0001", external_id="DE*TNM*E0001")
    claim = make_claim(asset, tx_hash="0x" + "ab" * 32)
    other = make_claim(make_asset(label="EVSE-DE-0002"))
    for term in (
        "EVSE-DE-0001",
        "DE*TNM*E0001",
        asset.did,
        asset.did.replace(":volta:", ":0x12047:").lower(),  # another DID form
        asset.address.lower(),
        claim.claim_id,
        claim.cid,
        ("0x" + "ab" * 32).upper().replace("0X", "0x"),
    ):
        assert _listed(client, CLAIMS, q=term) == {claim.pk}, term
    # Exact: a part of a label finds nothing rather than scanning every claim.
    assert _listed(client, CLAIMS, q="EVSE-DE") == set()
    assert other.pk in _listed(client, CLAIMS)


def test_assets_filter_by_prequalification_state(client, viewer):
    none = make_asset(label="none")
    requested = make_asset(label="requested")
    make_claim(requested, ClaimStatus.ISSUED)
    published = make_asset(label="published")
    make_claim(published, ClaimStatus.PUBLISHED)
    failed = make_asset(label="failed")
    make_claim(failed, ClaimStatus.PUBLISHED)
    make_claim(failed)  # the latest claim is what counts
    rejected = make_asset(label="rejected")
    make_claim(rejected, ClaimStatus.REJECTED)
    expected = {
        "none": none,
        "requested": requested,
        "published": published,
        "failed": failed,
        "rejected": rejected,
    }
    for state, asset in expected.items():
        assert _listed(client, ASSETS, prequalification=state) == {asset.pk}, state


def test_asset_list_says_why_in_words(client, viewer):
    asset = make_asset(label="EVSE-DE-0001")
    make_claim(
        asset,
        last_error="ChainError: insufficient funds for gas: 0xA holds "
        "0 wei, needs up to 158516518443844 wei",
    )
    html = client.get(reverse(ASSETS)).content.decode()
    assert "EVSE-DE-0001" in html
    assert "needs up to 0.000158516518443844 VT" in html
    assert 'data-status="failed"' in html


# --- detail-page actions -------------------------------------------------------------


def _retry_url(claim: ClaimRecord) -> str:
    return reverse("admin:claims_claimrecord_retry_detail", args=[claim.pk])


def test_retry_from_the_claim_page_says_exactly_what_happens(client, operator):
    claim = make_claim(make_asset(label="EVSE-DE-0001"))
    page = client.get(reverse("admin:claims_claimrecord_change", args=[claim.pk]))
    assert _retry_url(claim) in page.content.decode()
    confirm = client.get(_retry_url(claim)).content.decode()
    assert "Retry 1 failed claim." in confirm and 'id="evops-confirm"' in confirm
    assert ClaimRecord.objects.get(pk=claim.pk).status == ClaimStatus.FAILED
    done = client.post(_retry_url(claim), {"confirm": "yes"}, follow=True)
    assert "Retry publication: 1 scheduled; 0 skipped: not failed." in (
        done.content.decode()
    )
    assert ClaimRecord.objects.get(pk=claim.pk).status == ClaimStatus.STORED
    assert ClaimEvent.objects.get(record=claim, kind="retry").user == operator
    assert LogEntry.objects.filter(object_id=str(claim.pk), user=operator).exists()


def test_retry_with_nothing_failed_says_so_instead_of_confirming(client, operator):
    claim = make_claim(make_asset(), ClaimStatus.PUBLISHED)
    page = client.get(_retry_url(claim)).content.decode()
    assert "Nothing to retry: this claim is published, not failed." in page
    assert 'id="evops-confirm"' not in page
    client.post(_retry_url(claim), {"confirm": "yes"})
    assert not ClaimEvent.objects.filter(record=claim, kind="retry").exists()


def test_reconcile_from_the_asset_page_reports_a_failed_claim_as_failed(
    client, operator, fakes
):
    from evops.integrations.chain import ChainError

    _, cache, _store, chain = fakes
    asset = make_asset(label="EVSE-DE-0001")
    role = async_to_sync(cache.role)(None, asset.did, "ns")
    async_to_sync(cache.request_claim)(SIGNERS[asset.pk], asset.did, role=role)
    cache.issue(next(iter(cache.claims)))
    chain.fail_next = [
        ChainError(
            "insufficient funds for gas: holds 0 wei, needs up to 1000 wei",
            permanent=True,
        )
    ]
    url = reverse("admin:assets_asset_reconcile_detail", args=[asset.pk])
    confirm = client.get(url).content.decode()
    assert "Reconcile 1 asset with the chain." in confirm
    done = client.post(url, {"confirm": "yes"}, follow=True).content.decode()
    assert ClaimRecord.objects.get(asset=asset).status == ClaimStatus.FAILED
    assert "1 failed, 0 pending" in done
    assert "holds 0 wei" in done


def test_asset_page_in_asset_mode_shows_the_balance_to_fund(
    client, operator, settings, monkeypatch
):
    settings.CHAIN_WRITE_MODE = "asset"
    monkeypatch.setattr(
        "console.admin.assets.address_balance", lambda address: 5 * 10**17
    )
    asset = make_asset(label="EVSE-DE-0001")
    make_claim(asset)
    html = client.get(reverse("admin:assets_asset_change", args=[asset.pk]))
    text = html.content.decode()
    assert "0.5 VT" in text
    assert f'data-copy="{asset.address}"' in text
    retry = reverse("admin:assets_asset_retry_failed_detail", args=[asset.pk])
    assert retry in text and "retry 1 failed claim" in text
    done = client.post(retry, {"confirm": "yes"}, follow=True).content.decode()
    assert "1 scheduled; 0 skipped: not failed." in done


def test_asset_page_balance_unreachable_is_said(client, operator, settings):
    settings.CHAIN_WRITE_MODE = "asset"
    asset = make_asset()
    text = client.get(
        reverse("admin:assets_asset_change", args=[asset.pk])
    ).content.decode()
    assert "unavailable: the chain did not answer" in text


@pytest.mark.parametrize(
    "route",
    [
        "admin:claims_claimrecord_retry_detail",
        "admin:assets_asset_reconcile_detail",
        "admin:assets_asset_request_prequalification_detail",
        "admin:assets_asset_retry_failed_detail",
    ],
)
def test_a_viewer_cannot_run_a_detail_action_by_any_method(client, viewer, route):
    claim = make_claim(make_asset())
    pk = claim.pk if "claimrecord" in route else claim.asset_id
    url = reverse(route.replace("request_prequalification", "prequalify"), args=[pk])
    assert client.get(url).status_code == 403
    assert client.post(url, {"confirm": "yes"}).status_code == 403
    assert ClaimRecord.objects.get(pk=claim.pk).status == ClaimStatus.FAILED
    assert not ClaimEvent.objects.filter(record=claim, kind="retry").exists()
    # Nor does the page offer the buttons.
    page = reverse(
        "admin:claims_claimrecord_change"
        if "claimrecord" in route
        else "admin:assets_asset_change",
        args=[pk],
    )
    assert url not in client.get(page).content.decode()


# --- inbox ---------------------------------------------------------------------------


def _message(**fields: Any) -> InboundMessage:
    defaults: dict[str, Any] = {
        "subject": "subject",
        "payload": "{}",
        "dedupe_key": "k",
        "outcome": MessageOutcome.PROCESSED,
        "kind": MessageKind.ISSUE,
    }
    defaults.update(fields)
    return InboundMessage.objects.create(**defaults)


def test_inbox_resolves_rejections_to_our_asset_and_hides_notices(client, viewer):
    asset = make_asset(label="EVSE-DE-0001")
    claim = make_claim(asset, ClaimStatus.REJECTED)
    tso = make_asset(label="not-ours").did  # any other DID stands for the TSO
    rejection = _message(
        kind=MessageKind.REJECT,
        asset_did=tso,
        claim_id=claim.claim_id,
        dedupe_key="r",
    )
    notice = _message(
        kind=MessageKind.REQUEST,
        outcome=MessageOutcome.IGNORED,
        reason=REASON_FOR_ISSUERS,
        asset_did="did:ethr:volta:0x" + "0" * 40,
        dedupe_key="n",
    )
    assert _listed(client, INBOX) == {rejection.pk}
    assert _listed(client, INBOX, notices="shown") == {rejection.pk, notice.pk}
    # Searching by the rejected asset finds its rejection, though it names the TSO.
    assert rejection.pk in _listed(client, INBOX, q=asset.did)
    assert rejection.pk in _listed(client, INBOX, q="EVSE-DE-0001")
    html = client.get(reverse(INBOX)).content.decode()
    assert reverse("admin:assets_asset_change", args=[asset.pk]) in html
    assert reverse("admin:claims_claimrecord_change", args=[claim.pk]) in html


def test_inbox_duplicates_point_at_their_original(client, viewer):
    original = _message(kind=MessageKind.ISSUE, dedupe_key="same")
    duplicate = _message(
        kind=MessageKind.UNKNOWN,
        outcome=MessageOutcome.IGNORED,
        reason=REASON_DUPLICATE.format(id=original.pk),
        dedupe_key="same",
    )
    html = client.get(reverse(INBOX)).content.decode()
    link = reverse("admin:claims_inboundmessage_change", args=[original.pk])
    assert f'<a href="{link}">(duplicate of #{original.pk})</a>' in html
    assert duplicate.pk in _listed(client, INBOX)
    assert "Credential issued" in html and ">Unknown<" not in html


# --- display -------------------------------------------------------------------------


def test_amounts_are_shown_in_the_chain_unit(settings):
    settings.CHAIN_ID = 246
    assert in_chain_unit(10**18) == "1 EWT"
    assert in_chain_unit(0) == "0 EWT"
    text = "0xA holds 0 wei, needs up to 158516518443844 wei"
    assert wei_in_chain_unit(text) == (
        "0xA holds 0 EWT, needs up to 0.000158516518443844 EWT"
    )


def test_times_show_seconds_and_zone(client, viewer):
    claim = make_claim(make_asset())
    html = client.get(
        reverse("admin:claims_claimrecord_change", args=[claim.pk])
    ).content.decode()
    stamp = claim.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert stamp in html


def _failed_request(asset) -> InboundMessage:
    return InboundMessage.objects.create(
        subject="dashboard.prequalification.exchange",
        payload=json.dumps({"did": asset.did}),
        dedupe_key=f"k{asset.pk}",
        kind="prequalification",
        asset_did=asset.did,
        outcome=MessageOutcome.FAILED,
        reason="gave up after 10 attempts: chain RPC down",
        attempts=10,
    )


def test_failed_requests_are_retried_from_the_inbox_once(client, operator):
    asset = make_asset(label="EVSE-DE-0009")
    failed = _failed_request(asset)
    done = InboundMessage.objects.create(
        subject="x.prequalification.exchange", dedupe_key="k-done", outcome="processed"
    )
    url = reverse("admin:claims_inboundmessage_changelist")
    data = {
        "action": "retry_failed_messages",
        ACTION_CHECKBOX_NAME: [failed.pk, done.pk],
    }
    response = client.post(url, data, follow=True)
    assert "Retry: 1 handed back to the listener; 1 skipped: not failed." in (
        response.content.decode()
    )
    failed.refresh_from_db()
    assert (failed.outcome, failed.attempts) == (MessageOutcome.PENDING, 0)
    assert LogEntry.objects.filter(object_id=str(failed.pk)).count() == 1
    # A second click hands back nothing: it is no longer failed.
    response = client.post(url, data, follow=True)
    assert "Retry: 0 handed back to the listener; 2 skipped" in (
        response.content.decode()
    )


def test_a_viewer_cannot_retry_failed_messages(client, viewer):
    failed = _failed_request(make_asset())
    url = reverse("admin:claims_inboundmessage_changelist")
    client.post(
        url, {"action": "retry_failed_messages", ACTION_CHECKBOX_NAME: [failed.pk]}
    )
    failed.refresh_from_db()
    assert failed.outcome == MessageOutcome.FAILED
