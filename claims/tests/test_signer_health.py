"""The signer backend's health in the heartbeat and in `listener_health`.

A PKCS#11 token that is missing (unplugged) must show in the heartbeat row's details
and make `listener_health` fail with the reason; a healthy token passes.
"""

from __future__ import annotations

from io import StringIO

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command

from assets import pkcs11
from claims.listener import Listener
from claims.listener_config import ListenerConfig
from claims.models import ConnectionState, ListenerHeartbeat
from evops.integrations.nats import NatsOptions

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def _beat(fakes) -> ListenerHeartbeat:
    listener = Listener(
        ListenerConfig(
            nats=NatsOptions(url="nats://127.0.0.1:1"), subjects=["x.y"], name="hsm"
        ),
        fakes,
    )
    listener.state = ConnectionState.CONNECTED
    await listener.heartbeat_once()
    return await ListenerHeartbeat.objects.aget(name="hsm")


async def test_unplugged_token_makes_the_listener_unhealthy(
    token_settings, settings, fakes
):
    beat = await _beat(fakes)
    assert beat.details["signer"] == {
        "backend": "pkcs11",
        "ok": True,
        "token": token_settings.label,
        "error": "",
    }
    await sync_to_async(call_command)(
        "listener_health", "--name", "hsm", stdout=StringIO()
    )

    settings.PKCS11_TOKEN_LABEL = "unplugged-token"
    beat = await _beat(fakes)
    assert beat.details["signer"]["ok"] is False
    assert pkcs11.TOKEN_MISSING in beat.details["signer"]["error"]
    err = StringIO()
    with pytest.raises(SystemExit) as info:
        await sync_to_async(call_command)(
            "listener_health", "--name", "hsm", stdout=StringIO(), stderr=err
        )
    assert info.value.code == 1
    assert "signer unavailable" in err.getvalue()
    assert pkcs11.TOKEN_MISSING in err.getvalue()


async def test_local_backend_is_healthy_without_a_token(settings, fakes):
    settings.SIGNER_BACKEND = "local"
    settings.PKCS11_MODULE = ""
    beat = await _beat(fakes)
    assert beat.details["signer"] == {"backend": "local", "ok": True, "error": ""}
