"""The console dashboard: one admin page with the pipeline's state at a glance.

Claims by status, the oldest open claim, failures in the last 24 hours, the inbox
backlog, each listener's connection state and heartbeat, and the operator balance
in relay mode, each linking into the filtered admin list. A fixed number of queries
whatever the table sizes (see `bench/admin.py`). The same data is served as JSON
(`?format=json`) for the page's live refresh.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from claims import selectors
from claims.models import (
    OPEN_STATUSES,
    ClaimEvent,
    ClaimRecord,
    ClaimStatus,
    ConnectionState,
    MessageOutcome,
)

if TYPE_CHECKING:
    from evops.integrations.chain import Chain

BALANCE_NOT_RELAY = "not used (asset mode: each asset pays for its own writes)"
BALANCE_NO_OPERATOR = (
    "unavailable: no operator account (run manage.py generate_operator_key)"
)
BALANCE_UNREACHABLE = "unavailable: the chain did not answer ({error})"


@dataclass
class StatusCount:
    status: str
    label: str
    count: int
    url: str


@dataclass
class ListenerState:
    name: str
    state: str
    last_heartbeat: str
    age_seconds: float
    stale: bool
    mode: str
    host: str
    pid: int


@dataclass
class Dashboard:
    statuses: list[StatusCount]
    total_claims: int
    oldest_open: dict[str, Any] | None
    failures_24h: int
    failures_url: str
    inbox_pending: int
    inbox_oldest_seconds: float
    inbox_url: str
    listeners: list[ListenerState]
    balance: str
    generated_at: str
    links: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _changelist(model: str, **params: Any) -> str:
    url = reverse(f"admin:claims_{model}_changelist")
    return f"{url}?{urlencode(params)}" if params else url


def _oldest_open() -> dict[str, Any] | None:
    row = (
        ClaimRecord.objects.filter(status__in=OPEN_STATUSES)
        .order_by("created_at", "id")
        .values("id", "claim_id", "status", "created_at", "asset__did")
        .first()
    )
    if row is None:
        return None
    created: datetime = row["created_at"]
    return {
        "id": row["id"],
        "claim_id": row["claim_id"],
        "status": row["status"],
        "asset_did": row["asset__did"],
        "created_at": created.isoformat(),
        "age_seconds": (timezone.now() - created).total_seconds(),
        "url": reverse("admin:claims_claimrecord_change", args=[row["id"]]),
    }


def _listeners(now: datetime) -> list[ListenerState]:
    stale_after = float(settings.CONSOLE_HEARTBEAT_STALE_SECONDS)
    states = []
    for beat in selectors.listener_heartbeats():
        age = (now - beat.last_heartbeat).total_seconds()
        states.append(
            ListenerState(
                name=beat.name,
                state=beat.state,
                last_heartbeat=beat.last_heartbeat.isoformat(),
                age_seconds=round(age, 1),
                stale=age > stale_after or beat.state != ConnectionState.CONNECTED,
                mode=beat.mode,
                host=beat.host,
                pid=beat.pid,
            )
        )
    return states


def _read_only_chain() -> Chain:
    """A chain client for the console's reads, with the console's timeout."""
    from evops.integrations.chain import chain_from_settings

    return chain_from_settings(
        read_only=True, request_timeout=float(settings.CONSOLE_CHAIN_TIMEOUT)
    )


def operator_balance() -> str:
    """The relay operator's balance as text, or why it is not shown.

    Only the stored operator's address is needed, so no key is decrypted for this.
    """
    if settings.CHAIN_WRITE_MODE != "relay":
        return BALANCE_NOT_RELAY
    from assets.selectors import operator_account_for
    from assets.signers import OperatorNotConfigured

    try:
        address = operator_account_for().address
    except OperatorNotConfigured:
        return BALANCE_NO_OPERATOR

    async def read() -> int:
        chain = _read_only_chain()
        try:
            return await asyncio.wait_for(
                chain.balance(address), timeout=float(settings.CONSOLE_CHAIN_TIMEOUT)
            )
        finally:
            await chain.aclose()

    try:
        wei = async_to_sync(read)()
    except Exception as exc:
        return BALANCE_UNREACHABLE.format(error=type(exc).__name__)
    return f"{Decimal(wei) / Decimal(10**18):.6f} ({address})"


def dashboard_data(*, with_balance: bool = True) -> Dashboard:
    """Everything the dashboard shows, in a fixed number of queries."""
    now = timezone.now()
    counts = selectors.claims_by_status()
    labels = dict(ClaimStatus.choices)
    statuses = [
        StatusCount(
            status=status,
            label=labels[status],
            count=counts.get(status, 0),
            url=_changelist("claimrecord", status__exact=status),
        )
        for status in ClaimStatus.values
    ]
    since = now - timedelta(hours=24)
    failures = ClaimEvent.objects.filter(
        to_status=ClaimStatus.FAILED, at__gte=since
    ).count()
    pending, oldest_seconds = selectors.inbox_backlog(now)
    return Dashboard(
        statuses=statuses,
        total_claims=sum(counts.values()),
        oldest_open=_oldest_open(),
        failures_24h=failures,
        failures_url=_changelist(
            "claimrecord",
            status__exact=ClaimStatus.FAILED,
            updated_at__gte=since.isoformat(),
        ),
        inbox_pending=pending,
        inbox_oldest_seconds=round(oldest_seconds, 1),
        inbox_url=_changelist("inboundmessage", outcome__exact=MessageOutcome.PENDING),
        listeners=_listeners(now),
        balance=operator_balance() if with_balance else "",
        generated_at=now.isoformat(),
        links={
            "claims": _changelist("claimrecord"),
            "inbox": _changelist("inboundmessage"),
            "assets": reverse("admin:assets_asset_changelist"),
            "listeners": _changelist("listenerheartbeat"),
        },
    )


def dashboard_view(request: HttpRequest) -> HttpResponse:
    """The dashboard page (or its data as JSON for the live refresh)."""
    if not request.user.has_perm("claims.view_claimrecord"):
        from django.core.exceptions import PermissionDenied

        raise PermissionDenied
    if request.GET.get("format") == "json":
        return JsonResponse(dashboard_data(with_balance=False).as_json())
    context = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        "dashboard": dashboard_data(),
    }
    return TemplateResponse(request, "evops/dashboard.html", context)


DOCUMENT_UNREACHABLE = "The DID document could not be resolved from chain: {error}"


@dataclass
class DocumentService:
    id: str
    endpoint: str
    hash: str
    verified: bool
    claim_pk: int | None


@dataclass
class ResolvedDocument:
    document: dict[str, Any] | None
    services: list[DocumentService]
    error: str


def resolve_did_document(did: str, known_hashes: dict[str, int]) -> ResolvedDocument:
    """The asset's DID document as resolved from chain, for the asset page.

    A service entry is "verified" when its hash is the sha256 of a credential this
    console verified and recorded (`known_hashes`: token sha256 → claim pk). An
    unreachable chain gives a readable error instead of a failing page.
    """

    async def resolve() -> dict[str, Any]:
        chain = _read_only_chain()
        try:
            return await asyncio.wait_for(
                chain.resolve_document(did),
                timeout=float(settings.CONSOLE_CHAIN_TIMEOUT),
            )
        finally:
            await chain.aclose()

    try:
        document = async_to_sync(resolve)()
    except Exception as exc:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            text = f"no answer within {settings.CONSOLE_CHAIN_TIMEOUT:g} s"
        return ResolvedDocument(None, [], DOCUMENT_UNREACHABLE.format(error=text))
    services = []
    for entry in document.get("service") or []:
        if not isinstance(entry, dict):
            continue
        digest = str(entry.get("hash", "")).lower()
        services.append(
            DocumentService(
                id=str(entry.get("id", "")),
                endpoint=str(entry.get("serviceEndpoint", "")),
                hash=digest,
                verified=digest in known_hashes,
                claim_pk=known_hashes.get(digest),
            )
        )
    return ResolvedDocument(document, services, "")
