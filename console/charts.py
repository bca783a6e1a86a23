"""The dashboard's charts over the last `HISTORY_HOURS` hours, in fixed queries.

Claims published / failed / rejected per hour, the inbox backlog and its oldest
message per hour, and the issue → published latency (p50 / p99). Each returns what
the page's chart script draws (labels and series), served as JSON by
`console.dashboard`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from claims.models import OPEN_STATUSES, ClaimEvent, ClaimRecord, ClaimStatus

HISTORY_HOURS = 24
LATENCY_SAMPLE = 5000
OUTCOME_COLOURS = {
    ClaimStatus.PUBLISHED: "#15803d",
    ClaimStatus.FAILED: "#b91c1c",
    ClaimStatus.REJECTED: "#6b7280",
}


def _hours(now: datetime) -> list[datetime]:
    """The last HISTORY_HOURS hour marks, oldest first, ending with the current hour."""
    top = now.replace(minute=0, second=0, microsecond=0)
    return [top - timedelta(hours=n) for n in range(HISTORY_HOURS - 1, -1, -1)]


def _label(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%H:%M")


def outcomes_per_hour(now: datetime) -> dict[str, Any]:
    """Claims published / failed / rejected per hour (one grouped query)."""
    from django.db.models import Count
    from django.db.models.functions import TruncHour

    hours = _hours(now)
    rows = (
        ClaimEvent.objects.filter(at__gte=hours[0], to_status__in=list(OUTCOME_COLOURS))
        .annotate(hour=TruncHour("at"))
        .values("hour", "to_status")
        .annotate(n=Count("id"))
    )
    counts: dict[tuple[datetime, str], int] = {}
    for row in rows:
        counts[(row["hour"], row["to_status"])] = int(row["n"])
    return {
        "labels": [_label(h) for h in hours],
        "datasets": [
            {
                "label": ClaimStatus(status).label,
                "data": [counts.get((h, status), 0) for h in hours],
                "backgroundColor": colour,
                "borderColor": colour,
            }
            for status, colour in OUTCOME_COLOURS.items()
        ],
    }


def backlog_over_time(now: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    """Open claims, and the age of the oldest, at each hour mark (one query).

    A claim was open at hour h if it was created by h and is open now, or reached
    its final status after h (its `updated_at`: the final transition is its last
    write). Only claims open now or changed within the window are read, through the
    status and updated_at indexes.
    """
    from django.db.models import Count, Min, Q

    hours = _hours(now)
    marks = [*hours[1:], now]
    aggregates: dict[str, Any] = {}
    for n, mark in enumerate(marks):
        was_open = Q(created_at__lte=mark) & (
            Q(status__in=OPEN_STATUSES) | Q(updated_at__gt=mark)
        )
        aggregates[f"open{n}"] = Count("id", filter=was_open)
        aggregates[f"oldest{n}"] = Min("created_at", filter=was_open)
    row = ClaimRecord.objects.filter(
        Q(status__in=OPEN_STATUSES) | Q(updated_at__gte=hours[0])
    ).aggregate(**aggregates)
    labels = [_label(m) for m in marks]
    backlog = {
        "labels": labels,
        "datasets": [
            {
                "label": "open claims",
                "data": [int(row[f"open{n}"] or 0) for n in range(len(marks))],
                "borderColor": "#2563eb",
                "backgroundColor": "#2563eb",
            }
        ],
    }
    oldest = {
        "labels": labels,
        "datasets": [
            {
                "label": "oldest open claim (minutes)",
                "data": [
                    _minutes_since(row[f"oldest{n}"], mark)
                    for n, mark in enumerate(marks)
                ],
                "borderColor": "#b45309",
                "backgroundColor": "#b45309",
            }
        ],
    }
    return backlog, oldest


def _minutes_since(start: datetime | None, mark: datetime) -> float:
    return round((mark - start).total_seconds() / 60, 1) if start is not None else 0


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def latency(now: datetime) -> dict[str, Any]:
    """Issue → published latency over the window: p50 / p99 (one query)."""
    rows = list(
        ClaimRecord.objects.filter(
            status=ClaimStatus.PUBLISHED,
            published_at__gte=now - timedelta(hours=HISTORY_HOURS),
            issued_at__isnull=False,
        )
        .order_by("-published_at")
        .values_list("issued_at", "published_at")[:LATENCY_SAMPLE]
    )
    seconds = [
        max(0.0, (done - issued).total_seconds())
        for issued, done in rows
        if issued is not None and done is not None
    ]
    if not seconds:
        return {"count": 0, "p50": None, "p99": None}
    return {
        "count": len(seconds),
        "p50": round(_percentile(seconds, 0.50), 1),
        "p99": round(_percentile(seconds, 0.99), 1),
    }
