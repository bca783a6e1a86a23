"""The console's admin pages and actions through Django's test client."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from assets.models import Asset, AssetKind
from claims.models import ClaimEvent, ClaimRecord, ClaimStatus, InboundMessage
from claims.tests.fakes import fake_integrations
from console import dashboard, groups
from console.admin.claims import NOTHING_TO_RETRY
from console.tests.support import SIGNERS, make_asset, make_claim, make_user
from evops.protocol.keys import LocalKeySigner

pytestmark = pytest.mark.django_db

CLAIMS = "admin:claims_claimrecord_changelist"
ASSETS = "admin:assets_asset_changelist"
INBOX = "admin:claims_inboundmessage_changelist"


@pytest.fixture(autouse=True)
def _no_chain(settings):
    # A closed port: the chain "is unreachable" at once, never the internet.
    settings.CHAIN_RPC_URL = "http://127.0.0.1:9"


@pytest.fixture
def operator(client):
    user = make_user(groups.OPERATOR)
    client.force_login(user)
    return user


@pytest.fixture
def fakes(monkeypatch):
    bundle = fake_integrations(LocalKeySigner.generate(), SIGNERS)
    monkeypatch.setattr(
        "console.services.integrations_from_settings", lambda: bundle[0]
    )
    return bundle


def _post_action(
    client: Any, url: str, action: str, pks: list[int], **extra: Any
) -> Any:
    data = {"action": action, "_selected_action": [str(pk) for pk in pks], "index": 0}
    data.update(extra)
    return client.post(reverse(url), data, follow=bool(extra.get("confirm")))


# --- claim list ----------------------------------------------------------------------


def test_claim_list_shows_badges_and_readable_errors(client, operator):
    claim = make_claim(make_asset(kind=AssetKind.VEHICLE))
    content = client.get(reverse(CLAIMS)).content.decode()
    assert 'data-status="failed"' in content
    # The asset's full DID on hover and to copy; the reason in words.
    assert f'data-copy="{claim.asset.did}"' in content
    # The error is escaped, never rendered as markup.
    assert "&lt;in time&gt;" in content
    assert "<in time>" not in content


def test_claim_list_filters_and_search(client, operator):
    vehicle = make_asset(kind=AssetKind.VEHICLE)
    charger = make_asset(kind=AssetKind.CHARGE_POINT)
    failed = make_claim(vehicle)
    published = make_claim(
        charger, ClaimStatus.PUBLISHED, tx_hash="0x" + "ab" * 32, cid="bafyCID1"
    )

    def listed(**params: Any) -> set[int]:
        response = client.get(reverse(CLAIMS), params)
        assert response.status_code == 200
        return {c.pk for c in response.context["cl"].result_list}

    assert listed(status__exact="failed") == {failed.pk}
    assert listed(asset_kind="charge_point") == {published.pk}
    assert listed(q=vehicle.did) == {failed.pk}
    assert listed(q=published.tx_hash) == {published.pk}
    assert listed(q="bafyCID1") == {published.pk}
    assert listed(q=failed.claim_id) == {failed.pk}
    # The tx hash whatever its case.
    assert listed(q=published.tx_hash.upper().replace("0X", "0x")) == {published.pk}


def _did_forms(asset: Asset) -> list[str]:
    lower = asset.address.lower()
    return [
        asset.did,
        f"did:ethr:{asset.address}",  # legacy, no chain
        f"did:ethr:volta:{lower}",  # lowercase hex
        f"did:ethr:0x12047:{asset.address}",  # chain id instead of the name
        lower,  # a bare address, lowercase
        f"  {asset.address} ",  # pasted with spaces
    ]


def test_claim_search_by_any_did_form_or_address(client, operator):
    asset, other = make_asset(), make_asset()
    claim = make_claim(asset)
    make_claim(other)
    for term in _did_forms(asset):
        response = client.get(reverse(CLAIMS), {"q": term})
        found = {c.pk for c in response.context["cl"].result_list}
        assert found == {claim.pk}, term
    # A mixed-case address with a bad checksum is not an address: plain search.
    bad = "0x" + asset.address[2:].swapcase()
    assert client.get(reverse(CLAIMS), {"q": bad}).status_code == 200


def test_asset_and_inbox_search_by_any_did_form(client, operator):
    asset, other = make_asset(), make_asset()
    message = InboundMessage.objects.create(
        subject="s", dedupe_key="k1", asset_did=asset.did, outcome="processed"
    )
    InboundMessage.objects.create(
        subject="s", dedupe_key="k2", asset_did=other.did, outcome="processed"
    )
    for term in _did_forms(asset):
        assets = client.get(reverse(ASSETS), {"q": term}).context["cl"].result_list
        assert [a.pk for a in assets] == [asset.pk], term
        inbox = client.get(reverse(INBOX), {"q": term}).context["cl"].result_list
        assert [m.pk for m in inbox] == [message.pk], term


def test_claim_list_query_count_does_not_grow(
    client, operator, django_assert_num_queries
):
    asset = make_asset()
    make_claim(asset)
    client.get(reverse(CLAIMS))  # warm caches (content types, sessions)
    with CaptureQueriesContext(connection) as few:
        client.get(reverse(CLAIMS))
    for _ in range(30):
        make_claim(make_asset())
    with django_assert_num_queries(len(few.captured_queries)):
        client.get(reverse(CLAIMS))


def test_claim_page_shows_history_inline_read_only(client, operator):
    claim = make_claim(make_asset())
    content = client.get(
        reverse("admin:claims_claimrecord_change", args=[claim.pk])
    ).content.decode()
    assert "ChainError: the RPC did not answer &lt;in time&gt;" in content
    assert "test" in content  # the history row's actor
    assert 'name="_save"' not in content


# --- retry publication ---------------------------------------------------------------


def test_retry_asks_for_confirmation_then_records_who(client, operator):
    claim = make_claim(make_asset())
    ok = make_claim(make_asset(), ClaimStatus.PUBLISHED)
    page = _post_action(client, CLAIMS, "retry_publication", [claim.pk, ok.pk])
    assert page.status_code == 200
    assert b"Retry publication?" in page.content
    assert claim.claim_id.encode() in page.content
    assert ClaimRecord.objects.get(pk=claim.pk).status == ClaimStatus.FAILED

    done = _post_action(
        client, CLAIMS, "retry_publication", [claim.pk, ok.pk], confirm="yes"
    )
    assert done.status_code == 200
    text = done.content.decode()
    assert "Retry publication: 1 scheduled; 1 skipped: not failed." in text
    claim.refresh_from_db()
    assert claim.status == ClaimStatus.STORED  # it had a CID
    assert ClaimRecord.objects.get(pk=ok.pk).status == ClaimStatus.PUBLISHED
    event = ClaimEvent.objects.filter(record=claim, kind="retry").get()
    assert event.user == operator
    assert event.actor_label == operator.get_username()
    entry = LogEntry.objects.get(object_id=str(claim.pk))
    assert entry.user == operator
    assert entry.change_message == "Retry publication scheduled."
    assert not LogEntry.objects.filter(object_id=str(ok.pk)).exists()


def test_retry_twice_schedules_once(client, operator):
    claim = make_claim(make_asset())
    _post_action(client, CLAIMS, "retry_publication", [claim.pk], confirm="yes")
    again = _post_action(client, CLAIMS, "retry_publication", [claim.pk], confirm="yes")
    # Nothing is failed any more: the page says so and offers no confirmation.
    text = again.content.decode()
    assert NOTHING_TO_RETRY in text and 'id="evops-confirm"' not in text
    assert ClaimEvent.objects.filter(record=claim, kind="retry").count() == 1


# --- CSV -----------------------------------------------------------------------------


def test_claims_csv_export_is_safe_and_logged(client, operator):
    asset = make_asset()
    claim = make_claim(asset, last_error="=HYPERLINK('http://evil')")
    response = _post_action(client, CLAIMS, "export_csv", [claim.pk])
    assert response["Content-Type"] == "text/csv"
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:3] == ["id", "claim_id", "asset_did"]
    assert rows[1][2] == asset.did
    assert rows[1][8] == "'=HYPERLINK('http://evil')"
    assert LogEntry.objects.filter(user=operator, object_repr__contains="CSV").exists()
    event = ClaimEvent.objects.get(record=claim, kind="exported")
    assert event.user == operator
    assert event.actor == "staff" and event.actor_label == operator.get_username()
    assert event.from_status == event.to_status == ""


def test_claims_csv_select_all_notes_every_exported_claim(client, operator):
    claims = [make_claim(make_asset()) for _ in range(3)]
    other = make_claim(make_asset(), ClaimStatus.PUBLISHED)
    response = client.post(
        reverse(CLAIMS) + "?status__exact=failed",
        {
            "action": "export_csv",
            "select_across": "1",
            "index": 0,
            "_selected_action": [str(claims[0].pk)],
        },
    )
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [int(row[0]) for row in rows[1:]] == [c.pk for c in claims]
    noted = ClaimEvent.objects.filter(kind="exported", user=operator)
    assert sorted(noted.values_list("record_id", flat=True)) == [c.pk for c in claims]
    assert not ClaimEvent.objects.filter(record=other, kind="exported").exists()


def test_claims_csv_streams_the_header_before_writing_the_history(client, operator):
    claims = [make_claim(make_asset()) for _ in range(3)]
    response = _post_action(client, CLAIMS, "export_csv", [c.pk for c in claims])
    stream = iter(response.streaming_content)
    assert next(stream).startswith(b"id,claim_id,asset_did")
    # The first byte left before any history was written (the export of 100,000
    # claims used to write 100,000 events first) ...
    assert not ClaimEvent.objects.filter(kind="exported").exists()
    rows = list(csv.reader(io.StringIO(b"".join(stream).decode())))
    # ... and once streamed, each exported claim's history says so.
    assert [int(row[0]) for row in rows] == [c.pk for c in claims]
    noted = ClaimEvent.objects.filter(kind="exported", user=operator)
    assert sorted(noted.values_list("record_id", flat=True)) == [c.pk for c in claims]


def test_assets_csv_export_never_contains_key_material(client, operator):
    from assets import services

    asset = services.asset_generate(count=1)[0]
    response = _post_action(client, ASSETS, "export_csv", [asset.pk])
    body = b"".join(response.streaming_content)
    assert asset.did.encode() in body
    assert asset.key.ciphertext.hex().encode() not in body
    assert b"ciphertext" not in body and b"nonce" not in body


# --- inbox ---------------------------------------------------------------------------


def test_inbound_payload_is_escaped_and_truncated(client, operator):
    payload = "<script>alert(1)</script>" + "x" * 10_000
    message = InboundMessage.objects.create(
        subject="evil.claim-exchange.a.b",
        payload=payload,
        payload_size=len(payload),
        dedupe_key="k",
        outcome="rejected",
        reason="malformed <payload>",
    )
    listing = client.get(reverse(INBOX)).content.decode()
    assert "malformed &lt;payload&gt;" in listing
    assert 'data-status="rejected"' in listing
    page = client.get(
        reverse("admin:claims_inboundmessage_change", args=[message.pk])
    ).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page
    assert "shown 4000 of 10025 characters" in page


# --- assets --------------------------------------------------------------------------


def test_asset_list_badge_and_last_event(client, operator):
    asset = make_asset()
    claim = make_claim(asset, ClaimStatus.PUBLISHED)
    make_asset()
    content = client.get(reverse(ASSETS)).content.decode()
    assert 'data-status="published"' in content
    assert "not requested" in content
    assert "published ·" in content
    # An export is noted in the claim's history, but it is not the asset's news.
    from console.services import EXPORT_EVENT, claims_note_export

    claims_note_export(claim_ids=[claim.pk], actor_user=operator)
    assert claim.events.filter(kind=EXPORT_EVENT).count() == 1
    content = client.get(reverse(ASSETS)).content.decode()
    assert "published ·" in content
    assert f"{EXPORT_EVENT} ·" not in content


def test_asset_list_query_count_does_not_grow(
    client, operator, django_assert_num_queries
):
    make_claim(make_asset())
    client.get(reverse(ASSETS))
    with CaptureQueriesContext(connection) as few:
        client.get(reverse(ASSETS))
    for _ in range(30):
        make_claim(make_asset())
    with django_assert_num_queries(len(few.captured_queries)):
        client.get(reverse(ASSETS))


def test_asset_page_history_and_unreachable_chain(client, operator):
    from assets import services

    asset = services.asset_generate(count=1)[0]
    claim = make_claim(asset)
    content = client.get(
        reverse("admin:assets_asset_change", args=[asset.pk])
    ).content.decode()
    assert claim.claim_id in content
    assert "The DID document could not be resolved from chain" in content
    assert asset.key.ciphertext.hex() not in content


def test_resolve_document_marks_known_credentials_verified(monkeypatch):
    async def fake(self, did):
        return {
            "id": did,
            "service": [
                {"id": "s1", "serviceEndpoint": "bafyA", "hash": "aa" * 32},
                {"id": "s2", "serviceEndpoint": "bafyB", "hash": "bb" * 32},
            ],
        }

    monkeypatch.setattr("evops.integrations.chain.Chain.resolve_document", fake)
    resolved = dashboard.resolve_did_document("did:ethr:volta:0x1", {"aa" * 32: 7})
    assert resolved.error == ""
    assert [(s.id, s.verified, s.claim_pk) for s in resolved.services] == [
        ("s1", True, 7),
        ("s2", False, None),
    ]


def test_request_prequalification_for_selected_assets(client, operator, fakes):
    _, cache, _, _ = fakes
    first, second = make_asset(), make_asset()
    page = _post_action(client, ASSETS, "request_prequalification", [first.pk])
    assert b"Request prequalification?" in page.content
    assert cache.requests == []
    done = _post_action(
        client,
        ASSETS,
        "request_prequalification",
        [first.pk, second.pk],
        confirm="yes",
    )
    assert "Prequalification: 2 filed, 0 already pending, 0 errors." in (
        done.content.decode()
    )
    record = ClaimRecord.objects.get(asset=first)
    assert record.status == ClaimStatus.REQUESTED
    assert record.events.get().user == operator
    assert ClaimRecord.objects.get(asset=second).events.get().user == operator
    for asset in (first, second):
        entry = LogEntry.objects.get(object_id=str(asset.pk))
        assert entry.user == operator
        assert entry.change_message == "Prequalification requested."


def test_request_prequalification_reports_each_failure(client, operator, fakes):
    from claims.tests.fakes import FakeError

    _, cache, _, _ = fakes
    cache.fail_next.append(FakeError("cache server answered 503", permanent=False))
    asset = make_asset()
    done = _post_action(
        client, ASSETS, "request_prequalification", [asset.pk], confirm="yes"
    )
    text = done.content.decode()
    assert "0 filed, 0 already pending, 1 errors" in text
    assert "cache server answered 503" in text
    assert not ClaimRecord.objects.filter(asset=asset).exists()


def test_reconcile_selected_assets_publishes_missing(client, operator, fakes):
    _, cache, _store, chain = fakes
    asset = make_asset()
    from asgiref.sync import async_to_sync

    role = async_to_sync(cache.role)(None, asset.did, "ns")
    async_to_sync(cache.request_claim)(SIGNERS[asset.pk], asset.did, role=role)
    cache.issue(next(iter(cache.claims)))
    page = _post_action(client, ASSETS, "reconcile", [asset.pk])
    assert b"Reconcile assets?" in page.content
    done = _post_action(client, ASSETS, "reconcile", [asset.pk], confirm="yes")
    assert "Reconcile: 1 assets, 1 published" in done.content.decode()
    record = ClaimRecord.objects.get(asset=asset)
    assert record.status == ClaimStatus.PUBLISHED
    assert len(chain.writes) == 1
    assert record.events.filter(user=operator).exists()
    assert {e.user for e in record.events.all() if e.actor == "staff"} == {operator}
    entry = LogEntry.objects.get(object_id=str(asset.pk))
    assert entry.user == operator
    assert entry.change_message == "Reconciled with the chain."
    assert Asset.objects.filter(pk=asset.pk).exists()


@pytest.mark.parametrize(
    ("action", "kind", "label"),
    [
        ("reconcile", "reconcile", "Reconcile"),
        ("request_prequalification", "prequalification", "Prequalification"),
    ],
)
def test_large_asset_selection_is_queued_for_the_listener(
    client, operator, fakes, settings, action, kind, label
):
    """Beyond the in-request limit nothing calls a peer: one inbox row per asset."""
    _, cache, _, chain = fakes
    settings.CONSOLE_SYNC_ASSET_LIMIT = 2
    assets = [make_asset() for _ in range(3)]
    pks = [asset.pk for asset in assets]
    confirm = _post_action(client, ASSETS, action, pks)
    assert b"queued for the" in confirm.content
    assert b"Yes, go ahead" in confirm.content
    assert not InboundMessage.objects.exists()  # nothing before the confirmation

    done = _post_action(client, ASSETS, action, pks, confirm="yes")
    assert f"{label}: 3 assets queued for the listener" in done.content.decode()
    link = f'href="{reverse(INBOX)}?listener=console"'
    assert link in done.content.decode()
    assert client.get(f"{reverse(INBOX)}?listener=console").status_code == 200
    assert cache.requests == [] and chain.writes == []
    assert not ClaimRecord.objects.exists()
    rows = list(InboundMessage.objects.order_by("id"))
    assert sorted(json.loads(row.payload)["did"] for row in rows) == sorted(
        a.did for a in assets
    )
    for row in rows:
        assert (row.kind, row.outcome, row.listener) == (kind, "pending", "console")
        assert (row.requested_by_id, row.requested_by_label) == (
            operator.pk,
            operator.get_username(),
        )
    assert (
        LogEntry.objects.filter(
            user=operator, change_message=f"{label} queued for the listener."
        ).count()
        == 3
    )

    again = _post_action(client, ASSETS, action, pks, confirm="yes")
    assert (
        "0 assets queued for the listener, 3 already queued" in again.content.decode()
    )
    assert InboundMessage.objects.filter(outcome="pending").count() == 3


def test_selection_at_the_limit_runs(client, operator, fakes, settings):
    settings.CONSOLE_SYNC_ASSET_LIMIT = 2
    pks = [make_asset().pk for _ in range(2)]
    done = _post_action(client, ASSETS, "request_prequalification", pks, confirm="yes")
    assert "Prequalification: 2 filed" in done.content.decode()


def test_huge_inbound_payload_is_refused_stored_truncated_and_shown_escaped(
    client, operator, settings
):
    from claims import inbox

    settings.INBOUND_PAYLOAD_LIMIT = 64 * 1024
    payload = b'{"did": "<script>alert(1)</script>", "x": "' + b"y" * 1_000_000 + b'"}'
    message = inbox.inbound_record(
        subject="dashboard.prequalification.exchange", payload=payload
    )
    assert message.truncated and message.outcome == "rejected"
    listing = client.get(reverse(INBOX))
    assert listing.status_code == 200
    assert b"yyyyyyyyyy" not in listing.content  # the list never loads the payload
    page = client.get(reverse("admin:claims_inboundmessage_change", args=[message.pk]))
    content = page.content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in content
    assert "<script>alert(1)" not in content
    assert f"shown 4000 of {64 * 1024} characters" in content
    assert f"received {len(payload)} bytes; stored truncated" in content
    assert content.count("y") < 10_000


def test_in_request_services_refuse_more_than_the_limit(operator, fakes, settings):
    """Called directly (not through the admin), the in-request services still refuse."""
    from console import services as console_services

    _, cache, _, chain = fakes
    settings.CONSOLE_SYNC_ASSET_LIMIT = 2
    assets = [make_asset() for _ in range(3)]
    for run in (
        console_services.assets_reconcile,
        console_services.assets_request_prequalification,
    ):
        with pytest.raises(console_services.SelectionTooLarge) as info:
            run(assets=assets, actor_user=operator)
        assert "for at most 2 assets; 3 are selected" in str(info.value)
    assert cache.requests == [] and chain.writes == []


def test_the_run_or_queue_decision_lives_in_the_services(operator, fakes, settings):
    """Up to the limit the service runs now; past it, it queues and calls no peer."""
    from console import services as console_services

    _, cache, _, chain = fakes
    settings.CONSOLE_SYNC_ASSET_LIMIT = 2
    assert not console_services.selection_is_queued(2)
    assert console_services.selection_is_queued(3)
    few = [make_asset() for _ in range(2)]
    ran = console_services.assets_prequalify_or_queue(assets=few, actor_user=operator)
    assert ran.queued is None and ran.report is not None
    assert ran.report.filed == 2
    requests = len(cache.requests)
    many = [make_asset() for _ in range(3)]
    for service, kind in (
        (console_services.assets_prequalify_or_queue, "prequalification"),
        (console_services.assets_reconcile_or_queue, "reconcile"),
    ):
        queued = service(assets=many, actor_user=operator)
        assert queued.report is None and queued.queued is not None
        assert queued.queued.queued == 3
        assert InboundMessage.objects.filter(kind=kind, outcome="pending").count() == 3
    assert len(cache.requests) == requests and chain.writes == []
