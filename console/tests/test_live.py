"""Live updates: the websocket consumer (channels' communicator) and the relay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import SyncToAsync, sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser
from django.db import connections, transaction

from claims import failures
from claims.models import ClaimStatus, staff_actor
from console import groups, live
from console.consumers import CLOSE_FORBIDDEN, ConsoleConsumer
from console.routing import websocket_urlpatterns
from console.tests.support import make_asset, make_claim, make_user
from evops.channel_layer import REDIS_LAYER_BLOCKING_SECONDS, channel_layer_config

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _in_memory_layer(settings):
    settings.CHANNEL_LAYER_URL = ""
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    }
    settings.CONSOLE_POLL_SECONDS = 0
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()
    # Consumers reach the database from asgiref's sync thread; close its connection
    # so the test database can be dropped.
    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


async def _connect(user: Any) -> tuple[WebsocketCommunicator, bool, Any]:
    communicator = WebsocketCommunicator(ConsoleConsumer.as_asgi(), "/ws/console/")
    communicator.scope["user"] = user  # type: ignore[typeddict-unknown-key]
    connected, code = await communicator.connect()
    return communicator, connected, code


async def test_staff_receive_claim_changes():
    user = await database_sync_to_async(make_user)(groups.VIEWER)
    communicator, connected, _ = await _connect(user)
    assert connected
    assert await sync_to_async(live.send_claim_changed)(7, "published")
    assert await communicator.receive_json_from(timeout=2) == {
        "type": "claim.changed",
        "id": 7,
        "status": "published",
    }
    await communicator.disconnect()


@pytest.mark.parametrize("role", ["anonymous", "nostaff"])
async def test_others_are_refused(role):
    user: Any = AnonymousUser()
    if role == "nostaff":
        user = await database_sync_to_async(make_user)("nostaff")
    _communicator, connected, code = await _connect(user)
    assert not connected
    assert code == CLOSE_FORBIDDEN


async def test_a_service_transition_reaches_the_browser_after_commit():
    user = await database_sync_to_async(make_user)(groups.OPERATOR)
    claim = await database_sync_to_async(lambda: make_claim(make_asset()))()
    communicator, connected, _ = await _connect(user)
    assert connected

    def retry():
        with transaction.atomic():
            failures.claim_retry(record=claim, actor=staff_actor(user))
            # Nothing is sent before the commit.
            return get_channel_layer()

    await database_sync_to_async(retry)()
    message = await communicator.receive_json_from(timeout=2)
    assert message == {"type": "claim.changed", "id": claim.pk, "status": "stored"}
    assert await communicator.receive_nothing(timeout=0.2)
    await communicator.disconnect()


async def test_publish_claim_changed_waits_for_commit():
    user = await database_sync_to_async(make_user)(groups.VIEWER)
    communicator, connected, _ = await _connect(user)
    assert connected
    claim = await database_sync_to_async(lambda: make_claim(make_asset()))()

    def rolled_back():
        try:
            with transaction.atomic():
                live.publish_claim_changed(claim)
                raise RuntimeError("boom")
        except RuntimeError:
            pass

    await database_sync_to_async(rolled_back)()
    assert await communicator.receive_nothing(timeout=0.3)
    await database_sync_to_async(live.publish_claim_changed)(claim)
    message = await communicator.receive_json_from(timeout=2)
    assert message["id"] == claim.pk and message["status"] == ClaimStatus.FAILED
    await communicator.disconnect()


async def test_history_poll_relays_changes_from_other_processes(settings):
    settings.CONSOLE_POLL_SECONDS = 0.05
    user = await database_sync_to_async(make_user)(groups.VIEWER)
    communicator, connected, _ = await _connect(user)
    assert connected
    # A write with no signal, as another process's write looks to this one.
    claim = await database_sync_to_async(
        lambda: make_claim(make_asset(), ClaimStatus.ISSUED)
    )()
    message = await communicator.receive_json_from(timeout=2)
    assert message == {"type": "claim.changed", "id": claim.pk, "status": "issued"}
    await communicator.disconnect()


async def test_no_socket_in_this_process_means_nothing_to_push(monkeypatch):
    """The listener's own process (in-memory layer, no console socket): the event is
    not pushed at all, instead of a hop into the event loop per claim change."""

    def hop(*args, **kwargs):
        raise AssertionError("async_to_sync called with nobody listening")

    monkeypatch.setattr(live, "async_to_sync", hop)
    assert await sync_to_async(live.send_claim_changed)(5, "requested") is False


async def test_a_broken_layer_never_breaks_the_write(monkeypatch):
    class Broken:
        async def group_send(self, group, message):
            raise ConnectionError("redis is down")

    monkeypatch.setattr(live, "get_channel_layer", lambda: Broken())
    assert await sync_to_async(live.send_claim_changed)(1, "failed") is False


async def test_asgi_routing_runs_the_session_auth_stack(client):
    # Through the real router and auth middleware, an anonymous socket is refused.
    app = AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
    communicator = WebsocketCommunicator(app, "/ws/console/")
    connected, code = await communicator.connect()
    assert not connected and code == CLOSE_FORBIDDEN


async def test_origin_validator_refuses_foreign_origins():
    from evops.asgi import application

    communicator = WebsocketCommunicator(
        application, "/ws/console/", headers=[(b"origin", b"http://evil.example")]
    )
    connected, _ = await communicator.connect()
    assert not connected


_ROOT = str(Path(__file__).resolve().parents[2])
_OTHER_PROCESS = """
import sys
import django
django.setup()
from claims import failures
from claims.models import ClaimRecord, staff_actor
claim = ClaimRecord.objects.get(pk=int(sys.argv[1]))
print(failures.claim_retry(record=claim, actor=staff_actor(None)))
"""


def _use_redis(settings: Any, url: str) -> None:
    from channels.layers import channel_layers

    settings.CHANNEL_LAYER_URL = url
    settings.CHANNEL_LAYERS = {
        "default": channel_layer_config(url, settings.CHANNEL_LAYER_SOCKET_TIMEOUT)
    }
    channel_layers.backends.clear()


async def test_an_idle_socket_on_redis_outlives_the_layers_timeouts(
    settings, redis_url
):
    """Idle past the 5 s blocking read (and redis-py 8's old 5 s socket timeout).

    Before the fix the consumer's layer read raised redis' TimeoutError after 5 s
    and the socket closed; now it is still open and gets the next change.
    """
    _use_redis(settings, redis_url)
    settings.CONSOLE_POLL_SECONDS = 60
    # This socket has a user but no session (the session re-check has its own tests
    # in test_defences.py): keep that check out of the idle period under test.
    settings.CONSOLE_SESSION_CHECK_SECONDS = 3600
    user = await database_sync_to_async(make_user)(groups.VIEWER)
    communicator, connected, _ = await _connect(user)
    assert connected
    idle = REDIS_LAYER_BLOCKING_SECONDS * 1.6
    # Nothing arrives while idle: not a close, not an error.
    assert await communicator.receive_nothing(timeout=idle, interval=0.5)
    assert await sync_to_async(live.send_claim_changed)(9, "published")
    assert await communicator.receive_json_from(timeout=5) == {
        "type": "claim.changed",
        "id": 9,
        "status": "published",
    }
    await communicator.disconnect()


def test_the_redis_pool_reads_longer_than_the_layer_blocks(settings):
    from channels_redis.core import RedisChannelLayer
    from channels_redis.utils import create_pool

    assert RedisChannelLayer.brpop_timeout == REDIS_LAYER_BLOCKING_SECONDS
    config = channel_layer_config("redis://127.0.0.1:1/0", 30.0)
    pool = create_pool(config["CONFIG"]["hosts"][0])
    assert pool.connection_kwargs["socket_timeout"] == 30.0
    with pytest.raises(ValueError):
        channel_layer_config("redis://127.0.0.1:1/0", REDIS_LAYER_BLOCKING_SECONDS)


async def test_redis_layer_carries_a_change_made_in_another_process(
    settings, redis_url
):
    """CHANNEL_LAYER_URL: the listener process's service write reaches this socket.

    The other process is a real Python process doing a service transition on the
    shared database; nothing but the redis layer connects it to this consumer (the
    history check is off with a redis layer).
    """
    import os
    import subprocess
    import sys

    _use_redis(settings, redis_url)
    settings.CONSOLE_POLL_SECONDS = 60
    user = await database_sync_to_async(make_user)(groups.VIEWER)
    claim = await database_sync_to_async(lambda: make_claim(make_asset()))()
    communicator, connected, _ = await _connect(user)
    assert connected
    name = connections["default"].settings_dict["NAME"]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "evops.settings_test",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{name}",
        "CHANNEL_LAYER_URL": redis_url,
    }
    result = await sync_to_async(subprocess.run)(
        [sys.executable, "-c", _OTHER_PROCESS, str(claim.pk)],
        env=env,
        cwd=_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "True"
    message = await communicator.receive_json_from(timeout=5)
    assert message == {"type": "claim.changed", "id": claim.pk, "status": "stored"}
    await communicator.disconnect()
