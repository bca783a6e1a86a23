"""The dashboard page: counts, oldest item, failures, inbox, listeners, balance."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from claims.models import (
    ClaimEvent,
    ClaimRecord,
    ClaimStatus,
    InboundMessage,
    ListenerHeartbeat,
)
from console import charts, dashboard, groups
from console.tests.support import make_asset, make_claim, make_user

pytestmark = pytest.mark.django_db
URL = "console-dashboard"


@pytest.fixture
def viewer(client):
    user = make_user(groups.VIEWER)
    client.force_login(user)
    return user


def test_dashboard_shows_the_pipeline_state(client, viewer):
    asset = make_asset()
    failed = make_claim(asset)
    ClaimEvent.objects.create(
        record=failed, kind="failed", to_status="failed", actor="system"
    )
    old = make_claim(make_asset(), ClaimStatus.ISSUED)
    ClaimRecord.objects.filter(pk=old.pk).update(
        created_at=timezone.now() - timedelta(days=2)
    )
    make_claim(make_asset(), ClaimStatus.REQUESTED)
    InboundMessage.objects.create(subject="a.b", dedupe_key="k1", outcome="pending")
    now = timezone.now()
    ListenerHeartbeat.objects.create(
        name="listener-1", state="connected", last_heartbeat=now, started_at=now
    )
    ListenerHeartbeat.objects.create(
        name="listener-2",
        state="connected",
        last_heartbeat=now - timedelta(minutes=5),
        started_at=now,
    )
    response = client.get(reverse(URL))
    assert response.status_code == 200
    data = response.context["dashboard"]
    counts = {row.status: row.count for row in data.statuses}
    assert counts["failed"] == 1 and counts["issued"] == 1 and counts["requested"] == 1
    assert data.oldest_open["claim_id"] == old.claim_id
    # One claim with two failure events: the card counts claims, like its link.
    assert data.failures_24h == 1
    assert data.inbox_pending == 1
    assert [(x.name, x.stale) for x in data.listeners] == [
        ("listener-1", False),
        ("listener-2", True),
    ]
    assert data.balance == dashboard.BALANCE_NOT_RELAY
    content = response.content.decode()
    assert "?status__exact=failed" in content
    assert "outcome__exact=pending" in content
    # The live script is a static file (CSP), active on the page's live region.
    assert "console/console.js" in content and "data-live-region" in content
    assert "<script>" not in content


def test_dashboard_links_lead_to_filtered_lists(client, viewer):
    failed = make_claim(make_asset())
    # Failed, then retried and published since: still a failure of the last 24 h.
    recovered = make_claim(make_asset())
    ClaimRecord.objects.filter(pk=recovered.pk).update(status=ClaimStatus.PUBLISHED)
    make_claim(make_asset(), ClaimStatus.PUBLISHED)
    data = client.get(reverse(URL)).context["dashboard"]
    response = client.get(data.failures_url)
    assert response.status_code == 200
    listed = {claim.pk for claim in response.context["cl"].result_list}
    assert listed == {failed.pk, recovered.pk}
    assert data.failures_24h == len(listed)


def test_dashboard_is_the_index_and_first_in_the_sidebar(client, viewer):
    response = client.get(reverse("admin:index"))
    assert response.status_code == 200
    assert "dashboard" in response.context
    links = [
        item["link"]
        for group in response.context["sidebar_navigation"]
        for item in group["items"]
    ]
    assert links[0] == reverse("admin:index")


def test_dashboard_charts_have_their_data(client, viewer):
    claim = make_claim(make_asset(), ClaimStatus.PUBLISHED)
    ClaimRecord.objects.filter(pk=claim.pk).update(
        issued_at=claim.created_at,
        published_at=claim.created_at + timedelta(seconds=42),
    )
    data = client.get(reverse(URL)).context["dashboard"]
    outcomes = json.loads(data.outcomes_chart)
    published = next(d for d in outcomes["datasets"] if d["label"] == "Published")
    assert sum(published["data"]) == 1
    backlog = json.loads(data.backlog_chart)
    assert len(backlog["labels"]) == charts.HISTORY_HOURS
    assert data.latency == {"count": 1, "p50": 42.0, "p99": 42.0}


def test_dashboard_json_for_live_refresh(client, viewer):
    make_claim(make_asset(), ClaimStatus.PUBLISHED)
    data = client.get(reverse(URL), {"format": "json"}).json()
    assert {"status": "published", "count": 1}.items() <= next(
        row for row in data["statuses"] if row["status"] == "published"
    ).items()
    assert data["listeners"] == []


def test_dashboard_query_count_does_not_grow(client, viewer, django_assert_num_queries):
    make_claim(make_asset())
    client.get(reverse(URL))
    with CaptureQueriesContext(connection) as few:
        client.get(reverse(URL))
    for status in ClaimStatus.values * 5:
        make_claim(make_asset(), status)
    with django_assert_num_queries(len(few.captured_queries)):
        client.get(reverse(URL))


def test_relay_balance_without_operator_is_readable(settings):
    settings.CHAIN_WRITE_MODE = "relay"
    assert dashboard.operator_balance() == dashboard.BALANCE_NO_OPERATOR


def test_relay_balance_with_unreachable_chain_is_readable(settings):
    from assets.services import operator_generate

    settings.CHAIN_WRITE_MODE = "relay"
    settings.CHAIN_RPC_URL = "http://127.0.0.1:9"
    operator_generate(label="relay")
    text = dashboard.operator_balance()
    assert text.startswith("unavailable: the chain did not answer")


@pytest.mark.peers
def test_relay_balance_from_anvil(settings, anvil, registry_address):
    from assets.services import operator_generate
    from evops.sandbox.peers import fund

    settings.CHAIN_WRITE_MODE = "relay"
    settings.CHAIN_RPC_URL = anvil.rpc_url
    settings.CHAIN_ID = anvil.chain_id
    settings.DID_REGISTRY_ADDRESS = registry_address
    operator = operator_generate(label="relay")
    fund(anvil.rpc_url, operator.address, 3 * 10**18)
    assert dashboard.operator_balance() == f"3.000000 ({operator.address})"


@pytest.mark.peers
def test_did_document_resolved_from_anvil(settings, anvil, registry_address):
    settings.CHAIN_RPC_URL = anvil.rpc_url
    settings.CHAIN_ID = anvil.chain_id
    settings.DID_REGISTRY_ADDRESS = registry_address
    asset = make_asset()
    resolved = dashboard.resolve_did_document(asset.did, {})
    assert resolved.error == ""
    assert resolved.document is not None
    assert resolved.document["id"] == asset.did
    assert resolved.services == []


@pytest.mark.django_db
def test_dashboard_shows_listener_problems_and_the_trust_policy(
    client, viewer, settings
):
    settings.ALLOWED_CLAIM_TYPES = ["prequalified.roles.tso.apps.elia.iam.ewc"]
    settings.TRUSTED_ISSUERS = [
        "did:ethr:volta:0x8661eFD973dDF5d471BA0A49a625d60A726784Cd"
    ]
    now = timezone.now()
    ListenerHeartbeat.objects.create(
        name="listener-sick",
        state="connected",
        last_heartbeat=now,
        started_at=now,
        details={
            "problems": ["NATS read loop ended; reconnecting"],
            "signer": {"ok": False, "error": "token not present"},
        },
    )
    response = client.get(reverse(URL))
    data = response.context["dashboard"]
    [sick] = data.listeners
    # Connected and beating, but unhealthy by its own word: shown as such.
    assert sick.stale is True
    assert sick.problems == [
        "NATS read loop ended; reconnecting",
        "signer unavailable: token not present",
    ]
    assert data.trust.allowed_claim_types == settings.ALLOWED_CLAIM_TYPES
    content = response.content.decode()
    assert "NATS read loop ended; reconnecting" in content
    assert "only did:ethr:volta:0x8661eFD973dDF5d471BA0A49a625d60A726784Cd" in content
    assert "prequalified.roles.tso.apps.elia.iam.ewc" in content


@pytest.mark.django_db
def test_dashboard_lists_prequalification_requests_that_failed(client, viewer):
    InboundMessage.objects.create(
        subject="d.prequalification.exchange",
        dedupe_key="k-failed",
        kind="prequalification",
        outcome="failed",
        reason="gave up after 10 attempts: chain RPC down",
    )
    InboundMessage.objects.create(
        subject="d.prequalification.exchange",
        dedupe_key="k-ok",
        kind="prequalification",
    )
    data = client.get(reverse(URL)).context["dashboard"]
    assert data.failed_requests == 1
    listed = client.get(data.failed_requests_url)
    assert listed.status_code == 200
    assert [m.pk for m in listed.context["cl"].result_list] == [
        InboundMessage.objects.get(dedupe_key="k-failed").pk
    ]
