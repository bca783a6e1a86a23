"""Who reaches the console and who may run its actions (viewer, operator, others)."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.urls import reverse

from claims.models import ClaimRecord, ClaimStatus
from console import groups
from console.tests.support import make_asset, make_claim, make_user

pytestmark = pytest.mark.django_db

CLAIMS = "admin:claims_claimrecord_changelist"
ASSETS = "admin:assets_asset_changelist"


@pytest.fixture(autouse=True)
def _no_chain(settings):
    settings.CHAIN_RPC_URL = "http://127.0.0.1:9"


def test_groups_exist_with_exact_permissions():
    call_command("setup_groups", stdout=open("/dev/null", "w"))  # noqa: SIM115
    viewer = Group.objects.get(name=groups.VIEWER)
    operator = Group.objects.get(name=groups.OPERATOR)

    def labels(group: Group) -> set[str]:
        return {
            f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all()
        }

    assert labels(viewer) == set(groups.VIEW_PERMISSIONS)
    assert labels(operator) == set(groups.VIEW_PERMISSIONS + groups.ACTION_PERMISSIONS)
    # Idempotent: a second run resets, never duplicates.
    groups.ensure_groups()
    assert Group.objects.filter(name__in=[groups.VIEWER, groups.OPERATOR]).count() == 2


@pytest.mark.parametrize("url", [CLAIMS, ASSETS, "admin:index", "console-dashboard"])
def test_non_staff_never_reaches_the_admin(client, url):
    client.force_login(make_user("nostaff"))
    response = client.get(reverse(url))
    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_anonymous_is_sent_to_login(client):
    response = client.get(reverse("console-dashboard"))
    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


@pytest.mark.parametrize("url", [CLAIMS, ASSETS])
def test_viewer_sees_lists_without_action_buttons(client, url):
    make_claim(make_asset())
    client.force_login(make_user(groups.VIEWER))
    response = client.get(reverse(url))
    assert response.status_code == 200
    assert b'name="action"' not in response.content
    assert b"Retry publication" not in response.content


def test_operator_sees_the_actions(client):
    make_claim(make_asset())
    client.force_login(make_user(groups.OPERATOR))
    content = client.get(reverse(CLAIMS)).content.decode()
    assert 'value="retry_publication"' in content
    assert 'value="export_csv"' in content
    content = client.get(reverse(ASSETS)).content.decode()
    for action in ("reconcile", "request_prequalification", "export_csv"):
        assert f'value="{action}"' in content


@pytest.mark.parametrize(
    ("url", "action"),
    [
        (CLAIMS, "retry_publication"),
        (CLAIMS, "export_csv"),
        (ASSETS, "reconcile"),
        (ASSETS, "request_prequalification"),
    ],
)
def test_viewer_posting_an_action_gets_403_and_nothing_changes(client, url, action):
    claim = make_claim(make_asset())
    client.force_login(make_user(groups.VIEWER))
    pk = claim.pk if url == CLAIMS else claim.asset_id
    response = client.post(
        reverse(url),
        {"action": action, "_selected_action": [pk], "index": 0, "confirm": "yes"},
    )
    assert response.status_code == 403
    assert ClaimRecord.objects.get(pk=claim.pk).status == ClaimStatus.FAILED
    assert not LogEntry.objects.exists()
    assert claim.events.count() == 1  # only the one make_claim wrote


@pytest.mark.parametrize(
    ("url", "action"),
    [
        (CLAIMS, "retry_publication"),
        (CLAIMS, "export_csv"),
        (ASSETS, "reconcile"),
        (ASSETS, "request_prequalification"),
    ],
)
@pytest.mark.parametrize("who", ["nostaff", "anonymous"])
def test_non_staff_posting_an_action_is_sent_to_login(client, url, action, who):
    claim = make_claim(make_asset())
    if who == "nostaff":
        client.force_login(make_user("nostaff"))
    pk = claim.pk if url == CLAIMS else claim.asset_id
    response = client.post(
        reverse(url),
        {"action": action, "_selected_action": [pk], "index": 0, "confirm": "yes"},
    )
    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]
    assert ClaimRecord.objects.get(pk=claim.pk).status == ClaimStatus.FAILED
    assert not LogEntry.objects.exists()


def test_viewer_cannot_change_or_delete_claims(client):
    claim = make_claim(make_asset())
    client.force_login(make_user(groups.VIEWER))
    url = reverse("admin:claims_claimrecord_change", args=[claim.pk])
    page = client.get(url)
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert client.post(url, {"status": "published"}).status_code == 403
    delete = reverse("admin:claims_claimrecord_delete", args=[claim.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 403
