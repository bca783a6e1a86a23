"""The console dashboard: one admin page with the pipeline's state at a glance.

Claims by status, the oldest open claim, failures in the last 24 hours, the inbox
backlog, each listener's connection state and heartbeat, and the operator balance
in relay mode, each linking into the filtered admin list. A fixed number of queries
whatever the table sizes (see `bench/admin.py`). The same data is served as JSON
(`?format=json`) for the page's live refresh.
"""

from __future__ import annotations

import asyncio
import json
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
    InboundMessage,
    MessageKind,
    MessageOutcome,
)
from console import charts
from console.display import exact_time

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
    # What the listener itself reports wrong (a dead NATS read loop, messages
    # dropped before they were stored, the signer backend unavailable).
    problems: list[str] = field(default_factory=list)


@dataclass
class TrustPolicyView:
    """The local trust policy (settings), shown so staff know what is accepted."""

    allowed_claim_types: list[str]
    trusted_issuers: list[str]
    role_chain_max_depth: int


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
    generated_at_text: str = ""
    links: dict[str, str] = field(default_factory=dict)
    outcomes_chart: str = ""
    backlog_chart: str = ""
    oldest_chart: str = ""
    latency: dict[str, Any] = field(default_factory=dict)
    trust: TrustPolicyView | None = None
    # Prequalification requests that gave up (no claim exists for them yet).
    failed_requests: int = 0
    failed_requests_url: str = ""

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
        problems = beat.reported_problems()
        states.append(
            ListenerState(
                name=beat.name,
                state=beat.state,
                last_heartbeat=beat.last_heartbeat.isoformat(),
                age_seconds=round(age, 1),
                stale=age > stale_after
                or beat.state != ConnectionState.CONNECTED
                or bool(problems),
                mode=beat.mode,
                host=beat.host,
                pid=beat.pid,
                problems=problems,
            )
        )
    return states


def _trust_policy() -> TrustPolicyView:
    return TrustPolicyView(
        allowed_claim_types=list(settings.ALLOWED_CLAIM_TYPES),
        trusted_issuers=list(settings.TRUSTED_ISSUERS),
        role_chain_max_depth=int(settings.ROLE_CHAIN_MAX_DEPTH),
    )


def _read_only_chain() -> Chain:
    """A chain client for the console's reads, with the console's timeout."""
    from evops.integrations.chain import chain_from_settings

    return chain_from_settings(
        read_only=True, request_timeout=float(settings.CONSOLE_CHAIN_TIMEOUT)
    )


def address_balance(address: str) -> int:
    """The balance of `address` in wei, read from chain with the console's timeout.

    Raises what the chain client raises (the caller shows it as "unavailable").
    """

    async def read() -> int:
        chain = _read_only_chain()
        try:
            return await asyncio.wait_for(
                chain.balance(address), timeout=float(settings.CONSOLE_CHAIN_TIMEOUT)
            )
        finally:
            await chain.aclose()

    return int(async_to_sync(read)())


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
    # Claims (not events) that failed since then, whatever their status now: the
    # same set the link lists (FailedSinceFilter with this exact instant).
    failures = (
        ClaimEvent.objects.filter(to_status=ClaimStatus.FAILED, at__gte=since)
        .values("record_id")
        .distinct()
        .count()
    )
    pending, oldest_seconds = selectors.inbox_backlog(now)
    backlog, oldest = charts.backlog_over_time(now)
    return Dashboard(
        statuses=statuses,
        total_claims=sum(counts.values()),
        oldest_open=_oldest_open(),
        failures_24h=failures,
        failures_url=_changelist("claimrecord", failed_since=since.isoformat()),
        inbox_pending=pending,
        failed_requests=InboundMessage.objects.filter(
            kind=MessageKind.PREQUALIFICATION, outcome=MessageOutcome.FAILED
        ).count(),
        failed_requests_url=_changelist(
            "inboundmessage",
            kind__exact=MessageKind.PREQUALIFICATION,
            outcome__exact=MessageOutcome.FAILED,
        ),
        inbox_oldest_seconds=round(oldest_seconds, 1),
        inbox_url=_changelist("inboundmessage", outcome__exact=MessageOutcome.PENDING),
        listeners=_listeners(now),
        balance=operator_balance() if with_balance else "",
        generated_at=now.isoformat(),
        generated_at_text=exact_time(now),
        outcomes_chart=json.dumps(charts.outcomes_per_hour(now)),
        backlog_chart=json.dumps(backlog),
        oldest_chart=json.dumps(oldest),
        latency=charts.latency(now),
        trust=_trust_policy(),
        links={
            "claims": _changelist("claimrecord"),
            "inbox": _changelist("inboundmessage"),
            "assets": reverse("admin:assets_asset_changelist"),
            "listeners": _changelist("listenerheartbeat"),
        },
    )


def dashboard_view(request: HttpRequest) -> HttpResponse:
    """The dashboard page, the admin's index (or its data as JSON)."""
    if not request.user.has_perm("claims.view_claimrecord"):
        from django.core.exceptions import PermissionDenied

        raise PermissionDenied
    if request.GET.get("format") == "json":
        return JsonResponse(dashboard_data(with_balance=False).as_json())
    context = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        "dashboard": dashboard_data(),
        "chart_options": json.dumps(
            {"scales": {"x": {"stacked": True}, "y": {"stacked": True}}}
        ),
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
