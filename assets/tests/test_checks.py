from __future__ import annotations

import base64

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from assets.checks import W002, check_master_keys_configured
from assets.services import asset_generate, operator_generate

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
