"""The console's defences: login throttling and audit, the optional second factor,
the Content-Security-Policy header, static files in production, and websockets that
close when their session ends or their user loses access."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from asgiref.sync import SyncToAsync, sync_to_async
from axes.models import AccessAttempt, AccessFailureLog
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth.models import Group
from django.db import connections
from django.test import Client
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from console import groups, live
from console.consumers import CLOSE_SESSION_ENDED
from console.routing import websocket_urlpatterns
from console.tests.support import PASSWORD, make_user

LOGIN = "/admin/login/"


def _fail_login(client: Client, username: str) -> Any:
    return client.post(
        LOGIN, {"username": username, "password": "wrong", "next": "/admin/"}
    )


# --- login throttling and the failed-login audit --------------------------------------


@pytest.mark.django_db
def test_lockout_after_the_failure_limit_even_with_the_right_password(settings, caplog):
    settings.AXES_FAILURE_LIMIT = 3
    user = make_user(groups.OPERATOR)
    client = Client()
    caplog.set_level(logging.INFO, logger="axes")
    for _ in range(2):
        response = _fail_login(client, user.username)
        assert response.status_code == 200  # the login form again, with its error
    response = _fail_login(client, user.username)
    assert response.status_code == 429
    right = client.post(
        LOGIN, {"username": user.username, "password": PASSWORD, "next": "/admin/"}
    )
    assert right.status_code == 429
    assert b"Too many failed logins" in right.content
    assert "_auth_user_id" not in client.session
    # Audited: each failure in the database and in the log (never the password).
    assert AccessFailureLog.objects.filter(username=user.username).count() >= 3
    attempt = AccessAttempt.objects.get(username=user.username)
    assert attempt.failures_since_start >= 3
    logged = "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith("axes")
    )
    assert user.username in logged
    assert "wrong" not in logged


@pytest.mark.django_db
def test_a_lockout_is_per_user_and_address(settings):
    settings.AXES_FAILURE_LIMIT = 2
    victim, other = make_user(groups.VIEWER), make_user(groups.VIEWER)
    client = Client()
    for _ in range(2):
        _fail_login(client, victim.username)
    ok = client.post(
        LOGIN, {"username": other.username, "password": PASSWORD, "next": "/admin/"}
    )
    assert ok.status_code == 302
    assert client.session["_auth_user_id"] == str(other.pk)


@pytest.mark.django_db
def test_a_superuser_sees_the_lockouts_and_a_viewer_does_not(settings):
    settings.AXES_FAILURE_LIMIT = 2
    locked = make_user(groups.OPERATOR)
    for _ in range(2):
        _fail_login(Client(), locked.username)
    admin = Client()
    admin.force_login(make_user("superuser"))
    page = admin.get("/admin/axes/accessattempt/")
    assert page.status_code == 200
    assert locked.username in page.content.decode()
    viewer = Client()
    viewer.force_login(make_user(groups.VIEWER))
    assert viewer.get("/admin/axes/accessattempt/").status_code == 403


# --- the optional TOTP second factor ------------------------------------------------


@pytest.mark.django_db
def test_second_factor_off_by_default_password_alone_logs_in():
    assert django_settings.ADMIN_OTP_REQUIRED is False
    user = make_user(groups.VIEWER)
    client = Client()
    response = client.post(
        LOGIN, {"username": user.username, "password": PASSWORD, "next": "/admin/"}
    )
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200


@pytest.mark.django_db
def test_second_factor_required_asks_for_a_valid_totp_code(settings):
    settings.ADMIN_OTP_REQUIRED = True
    user = make_user(groups.VIEWER)
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    client = Client()
    form = client.get(LOGIN)
    assert b'name="otp_token"' in form.content
    # The password alone is not enough, and neither is a wrong code.
    client.post(LOGIN, {"username": user.username, "password": PASSWORD})
    assert client.get("/admin/").status_code == 302
    client.post(
        LOGIN,
        {"username": user.username, "password": PASSWORD, "otp_token": "000000"},
    )
    assert client.get("/admin/").status_code == 302
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    response = client.post(
        LOGIN,
        {
            "username": user.username,
            "password": PASSWORD,
            "otp_device": device.persistent_id,
            "otp_token": f"{totp.token():0{device.digits}d}",
            "next": "/admin/",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert client.get("/admin/").status_code == 200


@pytest.mark.django_db
def test_second_factor_required_refuses_a_session_without_one(settings):
    user = make_user(groups.VIEWER)
    client = Client()
    client.force_login(user)
    assert client.get("/admin/").status_code == 200
    settings.ADMIN_OTP_REQUIRED = True
    assert client.get("/admin/").status_code == 302  # back to the login page


# --- Content-Security-Policy ----------------------------------------------------------


@pytest.mark.django_db
def test_csp_header_on_the_console_and_every_inline_script_carries_its_nonce():
    client = Client()
    client.force_login(make_user(groups.VIEWER))
    response = client.get("/admin/")  # the dashboard
    assert response.status_code == 200
    policy = response["Content-Security-Policy"]
    directives = dict(part.partition(" ")[::2] for part in policy.split("; ") if part)
    assert directives["default-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    script_src = directives["script-src"].split()
    assert "'unsafe-inline'" not in script_src
    # django-csp puts a nonce in the header only when a template used one.
    nonces = [s[len("'nonce-") : -1] for s in script_src if s.startswith("'nonce-")]
    assert len(nonces) <= 1
    # Every script of the page is a file, or inline with this response's nonce.
    import re

    page = response.content.decode()
    scripts = re.findall(r"<script\b[^>]*>", page)
    assert scripts, "the dashboard loads its scripts"
    for tag in scripts:
        assert "src=" in tag or any(f'nonce="{n}"' in tag for n in nonces), tag
    # The login page too (anonymous).
    assert "script-src 'self'" in Client().get(LOGIN)["Content-Security-Policy"]


# --- static files in production (WhiteNoise) ------------------------------------------


@pytest.mark.django_db
def test_static_files_are_served_by_the_console_process():
    response = Client().get("/static/admin/css/base.css")
    assert response.status_code == 200
    body = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    assert b"body" in body


# --- websockets close when the session ends or access is lost -------------------------


@pytest.fixture
def fast_session_checks(settings):
    settings.CHANNEL_LAYER_URL = ""
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    }
    settings.CONSOLE_POLL_SECONDS = 0
    settings.CONSOLE_SESSION_CHECK_SECONDS = 0.1
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()
    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


def _logged_in(role: str) -> tuple[Any, Client]:
    user = make_user(role)
    client = Client()
    client.force_login(user)
    return user, client


async def _open_socket(client: Client) -> WebsocketCommunicator:
    cookie = (
        f"{django_settings.SESSION_COOKIE_NAME}={client.cookies['sessionid'].value}"
    )
    app = AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
    communicator = WebsocketCommunicator(
        app, "/ws/console/", headers=[(b"cookie", cookie.encode())]
    )
    connected, code = await communicator.connect()
    assert connected, code
    return communicator


async def _closed_with(communicator: WebsocketCommunicator) -> int:
    # Claim events may still arrive before the close; the close must come.
    for _ in range(50):
        message = await communicator.receive_output(timeout=5)
        if message["type"] == "websocket.close":
            return int(message["code"])
    raise AssertionError("the socket was not closed")


def _logout(client: Client, user: Any) -> None:
    client.logout()


def _delete_sessions(client: Client, user: Any) -> None:
    from django.contrib.sessions.models import Session

    Session.objects.all().delete()


def _deactivate(client: Client, user: Any) -> None:
    user.is_active = False
    user.save(update_fields=["is_active"])


def _lose_staff(client: Client, user: Any) -> None:
    user.is_staff = False
    user.save(update_fields=["is_staff"])


def _lose_permission(client: Client, user: Any) -> None:
    user.groups.remove(Group.objects.get(name=groups.VIEWER))


def _change_password(client: Client, user: Any) -> None:
    user.set_password("another-password-entirely")
    user.save()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "end",
    [
        _logout,
        _delete_sessions,
        _deactivate,
        _lose_staff,
        _lose_permission,
        _change_password,
    ],
)
async def test_an_open_socket_is_closed_when_access_ends(fast_session_checks, end):
    user, client = await sync_to_async(_logged_in)(groups.VIEWER)
    communicator = await _open_socket(client)
    # Open and receiving while the session is good.
    assert await sync_to_async(live.send_claim_changed)(1, "published")
    assert (await communicator.receive_json_from(timeout=5))["id"] == 1
    await sync_to_async(end)(client, user)
    assert await _closed_with(communicator) == CLOSE_SESSION_ENDED
    # And no events after it.
    assert await sync_to_async(live.send_claim_changed)(2, "published") in (
        True,
        False,
    )
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_good_session_stays_open_across_checks(fast_session_checks):
    _user, client = await sync_to_async(_logged_in)(groups.VIEWER)
    communicator = await _open_socket(client)
    # Several check intervals pass with nothing sent: still open.
    assert await communicator.receive_nothing(timeout=0.6)
    assert await sync_to_async(live.send_claim_changed)(3, "failed")
    assert (await communicator.receive_json_from(timeout=5))["id"] == 3
    await communicator.disconnect()
