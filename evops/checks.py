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
PLAIN_HTTP_PEER_HINT = (
    "Use https:// (tls:// or wss://, or NATS_TLS_CA with nats://), or a loopback "
    "address when the peer runs on this machine (an IPFS node behind a local proxy, "
    "say). To accept it on a private network you trust, add evops.E004 to "
    "SILENCED_SYSTEM_CHECKS."
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


ERR_PLAIN_PEER = (
    "{name} is plain {scheme}:// to {host}: credentials, tokens and signed messages "
    "would cross the network unencrypted; in production every peer is reached over "
    "TLS unless it is on this host (loopback)."
)
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the names that always mean this host."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _plain_peers() -> list[tuple[str, str, str]]:
    """(setting, scheme, host) of every peer URL that would travel unencrypted."""
    found: list[tuple[str, str, str]] = []
    urls: list[tuple[str, str, frozenset[str]]] = [
        ("CACHE_SERVER_URL", settings.CACHE_SERVER_URL, frozenset({"http"})),
        ("CHAIN_RPC_URL", settings.CHAIN_RPC_URL, frozenset({"http"})),
    ]
    if settings.CREDENTIAL_STORE == "ipfs":
        urls.append(("IPFS_API_URL", settings.IPFS_API_URL, frozenset({"http"})))
    # nats-py upgrades a nats:// connection to TLS when given a CA (NATS_TLS_CA).
    nats_plain = {"ws"} if settings.NATS_TLS_CA else {"nats", "ws"}
    for url in str(settings.NATS_URL).split(","):
        urls.append(("NATS_URL", url.strip(), frozenset(nats_plain)))
    for name, url, plain in urls:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in plain and not is_loopback(parts.hostname or ""):
            found.append((name, scheme, parts.hostname or "?"))
    return found


@register(Tags.security, deploy=True)
def check_peer_transport(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Peers on another host must be reached over TLS in production (`--deploy`).

    A plain-http cache server sees every asset's login token in the clear, and a
    plain RPC or store can be answered by anyone on the path: the check refuses
    them, except on loopback (a sidecar or an SSH tunnel).
    """
    return [
        Error(
            ERR_PLAIN_PEER.format(name=name, scheme=scheme, host=host),
            hint=PLAIN_HTTP_PEER_HINT,
            id=E004,
        )
        for name, scheme, host in _plain_peers()
    ]


@register()
def check_leases(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Leases must outlast a few missed heartbeats, or live work is taken over."""
    errors: list[CheckMessage] = []
    beat = float(settings.HEARTBEAT_INTERVAL)
    for name in ("PUBLISH_LEASE_SECONDS", "INBOX_LEASE_SECONDS"):
        lease = float(getattr(settings, name))
        if lease < 3 * beat:
            errors.append(
                Error(
                    f"{name} ({lease:g}s) must be at least three heartbeats "
                    f"(3 x HEARTBEAT_INTERVAL = {3 * beat:g}s): a live listener's "
                    "work would be taken over by another.",
                    id="evops.E011",
                )
            )
    return errors
