"""How the console shows things: status badges, times, DIDs, amounts.

Pure presentation, no queries; shared by the admins and the dashboard.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal

from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator
from django.utils.timezone import localtime

BADGE_TONES = {
    "requested": "neutral",
    "issued": "info",
    "stored": "info",
    "publishing": "warn",
    "published": "ok",
    "rejected": "bad",
    "failed": "bad",
    "pending": "warn",
    "processed": "ok",
    "ignored": "neutral",
    "connected": "ok",
    "reconnecting": "warn",
    "disconnected": "bad",
    "stopped": "neutral",
}


def badge(value: str, label: str | None = None) -> SafeString:
    """A coloured status pill; `data-status` lets the live script restyle it.

    Colours come from classes in console/static/console/console.css (no inline
    style: the console runs under a Content-Security-Policy).
    """
    tone = BADGE_TONES.get(value, "neutral")
    return format_html(
        '<span class="evops-badge evops-tone-{}" data-status="{}">{}</span>',
        tone,
        value,
        label or value or "none",
    )


# --- times, DIDs and amounts as staff read them --------------------------------------

EXACT_TIME_FORMAT = "Y-m-d H:i:s T"


def exact_time(moment: datetime | None) -> str:
    """`2026-01-05 15:04:05 UTC`: the one format the console uses, in TIME_ZONE."""
    if moment is None:
        return ""
    return date_format(localtime(moment), EXACT_TIME_FORMAT)


def age(moment: datetime | None, now: datetime | None = None) -> SafeString | str:
    """`4 min ago`, the exact time (seconds, zone) on hover; "" for no time."""
    if moment is None:
        return ""
    now = now or timezone.now()
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 60:
        text = f"{seconds} s ago"
    elif seconds < 3600:
        text = f"{seconds // 60} min ago"
    elif seconds < 86400:
        text = f"{seconds // 3600} h {seconds % 3600 // 60} min ago"
    else:
        text = f"{seconds // 86400} d {seconds % 86400 // 3600} h ago"
    return format_html(
        '<time class="evops-age" datetime="{}" title="{}">{}</time>',
        moment.isoformat(),
        exact_time(moment),
        text,
    )


def short_did(did: str) -> SafeString | str:
    """`did:ethr:volta:0x1a2B…9f3c`, full DID on hover and one click to copy."""
    if not did:
        return ""
    head, _, address = did.rpartition(":")
    short = f"{head}:{address[:6]}…{address[-4:]}" if len(address) > 12 else did
    return format_html(
        '<span class="evops-did" title="{}"><code>{}</code>'
        '<button type="button" class="evops-copy" data-copy="{}" '
        'title="copy the full DID" aria-label="copy the full DID">'
        '<span class="material-symbols-outlined">content_copy</span></button></span>',
        did,
        short,
        did,
    )


CHAIN_UNITS = {246: "EWT", 73799: "VT"}
_WEI_AMOUNT = re.compile(r"\b(\d+) wei\b")


def chain_unit() -> str:
    """The native unit of the configured chain (EWT on EWC, VT on Volta)."""
    from django.conf import settings

    return CHAIN_UNITS.get(int(settings.CHAIN_ID), "ETH")


def in_chain_unit(wei: int) -> str:
    """`0.000158516518443844 VT`: an amount of wei in the chain's unit."""
    value = Decimal(wei) / Decimal(10**18)
    text = f"{value:.18f}".rstrip("0").rstrip(".") if wei else "0"
    return f"{text} {chain_unit()}"


def wei_in_chain_unit(text: str) -> str:
    """Every "N wei" of an error text also in the chain's unit, for people."""
    return _WEI_AMOUNT.sub(lambda m: f"{in_chain_unit(int(m.group(1)))}", text)


# Characters of an error or reason a list row shows (the detail page has it all).
LIST_ERROR_CHARS = 160


def short_text(text: str, chars: int) -> str:
    """`text` on one line, cut to `chars` with an ellipsis."""
    return Truncator(text.replace("\n", " ")).chars(chars)
