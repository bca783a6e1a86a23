from __future__ import annotations

import base64

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from assets.checks import (
    ASSETS_ON_OTHER_CHAIN,
    W001,
    W002,
    W003,
    check_assets_chain,
    check_master_keys_configured,
    check_relay_operator,
)
from assets.services import asset_generate, operator_generate
from evops.startup import LISTENER_REFUSED

pytestmark = pytest.mark.django_db

OTHER_KEY = base64.b64encode(b"o" * 32).decode()


def test_no_database_access_unless_asked():
    asset_generate(count=1)
    assert check_master_keys_configured(databases=None) == []


def test_all_keys_under_configured_master_keys_is_clean():
    asset_generate(count=2)
    operator_generate(label="relay")
    assert check_master_keys_configured(databases=["default"]) == []


def test_keys_under_a_dropped_master_key_are_reported(settings):
    asset_generate(count=2)
    operator_generate(label="relay")
    sealed_with = settings.EVOPS_KEY_ENCRYPTION_KEYS[0][0]
    settings.EVOPS_KEY_ENCRYPTION_KEYS = [("new", b"o" * 32)]
    [error] = check_master_keys_configured(databases=["default"])
    assert error.id == W002
    assert error.msg.startswith("3 stored key(s) are sealed with master key(s) ")
    assert sealed_with in error.msg
    assert "rotate_encryption_key" in (error.hint or "")
    assert OTHER_KEY not in error.msg


def test_manage_py_check_with_database_reports_it(settings):
    asset_generate(count=1)
    settings.EVOPS_KEY_ENCRYPTION_KEYS = [("new", b"o" * 32)]
    with pytest.raises(SystemCheckError, match=W002):
        call_command("check", databases=["default"], fail_level="WARNING")
    call_command("migrate", verbosity=0)  # a warning never blocks migrate


# --- rules the listener enforces at start: warnings for check, errors for it ---------


def _listener_refusal() -> str:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError) as info:
        call_command("run_nats_listener", "--no-reconcile")
    return str(info.value)


def test_dropped_master_key_stops_the_listener(settings):
    asset_generate(count=1)
    settings.NATS_URL = "nats://127.0.0.1:1"  # refused before it connects anywhere
    settings.EVOPS_KEY_ENCRYPTION_KEYS = [("new", b"o" * 32)]
    message = _listener_refusal()
    assert message.startswith(LISTENER_REFUSED.format(problems=""))
    assert f"{W002}: 1 stored key(s) are sealed with master key(s)" in message


def test_several_operators_in_relay_mode_without_the_address(settings):
    operator_generate(label="one")
    operator_generate(label="two")
    settings.CHAIN_WRITE_MODE = "relay"
    settings.CHAIN_OPERATOR_ADDRESS = ""
    settings.NATS_URL = "nats://127.0.0.1:1"
    [warning] = check_relay_operator(databases=["default"])
    assert warning.id == W001
    assert "CHAIN_OPERATOR_ADDRESS" in warning.msg
    with pytest.raises(SystemCheckError, match=W001):
        call_command("check", databases=["default"], fail_level="WARNING")
    assert f"{W001}: " in _listener_refusal()


def test_assets_on_another_chain_than_chain_id(settings):
    [volta] = asset_generate(count=1)
    asset_generate(count=2, chain="ewc")
    settings.CHAIN_ID = 73799
    assert check_assets_chain(databases=None) == []
    [warning] = check_assets_chain(databases=["default"])
    assert warning.id == W003
    assert warning.msg == ASSETS_ON_OTHER_CHAIN.format(
        count=2, chains="ewc", expected="volta", chain_id=73799
    )
    settings.NATS_URL = "nats://127.0.0.1:1"
    assert f"{W003}: " in _listener_refusal()
    # Inactive assets of the other chain are no obstacle.
    from assets.models import Asset

    Asset.objects.exclude(pk=volta.pk).update(active=False)
    assert check_assets_chain(databases=["default"]) == []
