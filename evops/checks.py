"""System checks for rules that span several settings.

Single settings are validated where they are read (`evops/settings.py`); what depends on
a combination of them is checked here, so `manage.py check` reports them all at once.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register

from evops.startup import NOT_SET, missing_settings

E002 = "evops.E002"
E003 = "evops.E003"
E004 = "evops.E004"
PLAIN_HTTP_PEER = (
    "{name} is plain http:// to {host}: credentials, tokens and signed messages "
    "would cross the network unencrypted."
)
PLAIN_HTTP_PEER_HINT = (
    "Use https://, or a loopback address when the peer runs on this machine (an "
    "IPFS node behind a local proxy, say). To accept it on a private network you "
    "trust, add evops.E004 to SILENCED_SYSTEM_CHECKS."
)
_MISSING_IDS = {"SECRET_KEY": E002, "EVOPS_KEY_ENCRYPTION_KEYS": E003}


@register()
def check_required_settings(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """The mandatory settings, read lazily, are refused here by every command that
    runs system checks (migrate, the listener, runserver...)."""
    return [
        Error(NOT_SET.format(name=name), id=_MISSING_IDS[name])
        for name in missing_settings()
    ]


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _peer_urls() -> list[tuple[str, str]]:
    urls = [
        ("CACHE_SERVER_URL", settings.CACHE_SERVER_URL),
        ("CHAIN_RPC_URL", settings.CHAIN_RPC_URL),
    ]
    if settings.CREDENTIAL_STORE == "ipfs":
        urls.append(("IPFS_API_URL", settings.IPFS_API_URL))
    return urls


@register(Tags.security, deploy=True)
def check_peer_urls(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Under `check --deploy`: the peers evops logs in to, stores tokens on and sends
    signed transactions through are reached over TLS unless they are on loopback."""
    errors: list[CheckMessage] = []
    for name, url in _peer_urls():
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        if parts.scheme == "http" and not _is_loopback(host):
            errors.append(
                Error(
                    PLAIN_HTTP_PEER.format(name=name, host=host),
                    hint=PLAIN_HTTP_PEER_HINT,
                    id=E004,
                )
            )
    return errors


@register(Tags.security, deploy=True)
def check_key_encryption(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    keys = settings.EVOPS_KEY_ENCRYPTION_KEYS
    if len({material for _, material in keys}) != len(keys):
        errors.append(
            Error(
                "EVOPS_KEY_ENCRYPTION_KEYS lists the same key material under two ids.",
                id="evops.E001",
            )
        )
    return errors
