"""Claim records, their history, inbound NATS messages and the listener heartbeat.

A `ClaimRecord` is a state machine (requested → issued → stored → publishing →
published, plus rejected and failed; `ALLOWED_TRANSITIONS` lists every move).
Transitions are made by `claims.transitions` with a conditional update
(`filter(pk=..., status=expected).update(...)`) that proceeds only when exactly one row
changed: that single row update is the lock that keeps a duplicate message, a racing
reconciler and a staff retry from writing to the chain twice. Every transition appends
a `ClaimEvent`. Every NATS message is stored as an `InboundMessage` before anything
else happens, so nothing received is ever lost. Their managers come from
`claims.querysets` (the leases and the batched outcome write, the app's only raw
SQL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q

from claims.querysets import (
    ClaimRecordQuerySet,
    InboundMessageQuerySet,
    ListenerHeartbeatQuerySet,
)


class ClaimStatus(models.TextChoices):
    REQUESTED = "requested", "Requested"
    ISSUED = "issued", "Issued"
    STORED = "stored", "Stored"
    PUBLISHING = "publishing", "Publishing"
    PUBLISHED = "published", "Published"
    REJECTED = "rejected", "Rejected"
    FAILED = "failed", "Failed"
    # After publication (claims.lifecycle): the entry is removed from the document.
    EXPIRED = "expired", "Expired"
    REVOKED = "revoked", "Revoked"
    SUPERSEDED = "superseded", "Superseded"


# Every move a claim may make (`claims.transitions` refuses any other): forward along
# the pipeline, back one step for a retry, to rejected or failed, found published by
# the reconciler, and a failed claim sent back to the step it failed at by staff.
ALLOWED_TRANSITIONS: dict[ClaimStatus, frozenset[ClaimStatus]] = {
    # requested → failed: a notice about it gave up (the claim shows the reason,
    # and a staff retry reads it again from the cache server).
    ClaimStatus.REQUESTED: frozenset(
        {
            ClaimStatus.ISSUED,
            ClaimStatus.REJECTED,
            ClaimStatus.PUBLISHED,
            ClaimStatus.FAILED,
        }
    ),
    ClaimStatus.ISSUED: frozenset(
        {
            ClaimStatus.ISSUED,
            ClaimStatus.STORED,
            ClaimStatus.REJECTED,
            ClaimStatus.PUBLISHED,
            ClaimStatus.FAILED,
        }
    ),
    ClaimStatus.STORED: frozenset(
        {
            ClaimStatus.PUBLISHING,
            ClaimStatus.REJECTED,
            ClaimStatus.PUBLISHED,
            ClaimStatus.FAILED,
        }
    ),
    ClaimStatus.PUBLISHING: frozenset(
        {ClaimStatus.PUBLISHED, ClaimStatus.STORED, ClaimStatus.FAILED}
    ),
    # A published credential ends by expiry, revocation, or a renewal taking its
    # place (claims.lifecycle); a superseded or expired one may still be revoked.
    ClaimStatus.PUBLISHED: frozenset(
        {ClaimStatus.EXPIRED, ClaimStatus.REVOKED, ClaimStatus.SUPERSEDED}
    ),
    ClaimStatus.EXPIRED: frozenset({ClaimStatus.REVOKED}),
    ClaimStatus.REVOKED: frozenset(),
    ClaimStatus.SUPERSEDED: frozenset({ClaimStatus.REVOKED}),
    ClaimStatus.REJECTED: frozenset(),
    ClaimStatus.FAILED: frozenset(
        {
            ClaimStatus.REQUESTED,
            ClaimStatus.ISSUED,
            ClaimStatus.STORED,
            ClaimStatus.REJECTED,
            ClaimStatus.PUBLISHED,
        }
    ),
}

# Statuses a claim may still move on from without a staff action.
OPEN_STATUSES = (
    ClaimStatus.REQUESTED,
    ClaimStatus.ISSUED,
    ClaimStatus.STORED,
    ClaimStatus.PUBLISHING,
)


class ClaimRecord(models.Model):
    """One claim of one asset, keyed by the cache server's claim id."""

    asset = models.ForeignKey(
        "assets.Asset", on_delete=models.PROTECT, related_name="claims"
    )
    claim_id = models.CharField(
        "cache-server claim id", max_length=100, help_text="Id on the cache server."
    )
    role = models.CharField("claim type", max_length=200, blank=True, default="")
    role_version = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(
        max_length=20,
        choices=ClaimStatus.choices,
        default=ClaimStatus.REQUESTED,
        db_index=True,
    )
    issuer_did = models.CharField(max_length=100, blank=True, default="")
    # The issued credential is a public artefact (it ends up readable by anyone
    # through the DID document); keeping it lets a retry run without the cache server.
    token = models.TextField(blank=True, default="")
    token_sha256 = models.CharField(
        max_length=64, blank=True, default="", db_index=True
    )
    cid = models.CharField("CID", max_length=200, blank=True, default="")
    service_id = models.CharField(max_length=100, blank=True, default="")
    tx_hash = models.CharField(max_length=66, blank=True, default="")
    block_number = models.PositiveBigIntegerField(null=True, blank=True)
    rejection_reason = models.CharField(max_length=100, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    next_retry_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_error = models.TextField(
        blank=True, default="", help_text="Readable reason of the last failure."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)
    issued_at = models.DateTimeField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)
    # --- after publication (claims.lifecycle) ---
    expires_at = models.DateTimeField(
        null=True,
        blank=True,
        db_index=True,
        help_text="The token's exp; empty when it never expires.",
    )
    status_list_url = models.CharField(max_length=2000, blank=True, default="")
    status_list_index = models.PositiveIntegerField(null=True, blank=True)
    # The exact attribute bytes written (the removal must carry exactly these).
    attribute_name = models.BinaryField(null=True, blank=True, editable=False)
    attribute_value = models.BinaryField(null=True, blank=True, editable=False)
    renewal_requested_at = models.DateTimeField(null=True, blank=True)
    renewal_claim_id = models.CharField(max_length=100, blank=True, default="")
    superseded_by = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="supersedes",
    )
    ended_at = models.DateTimeField(
        null=True, blank=True, help_text="When it expired, was revoked or replaced."
    )
    revoked_by = models.CharField(max_length=100, blank=True, default="")
    # Set once the service entry is gone from the document resolved from chain.
    entry_removed_at = models.DateTimeField(null=True, blank=True)
    removal_tx_hash = models.CharField(max_length=66, blank=True, default="")
    lifecycle_checked_at = models.DateTimeField(null=True, blank=True)

    objects = ClaimRecordQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["asset", "claim_id"], name="claims_record_asset_claim_unique"
            ),
        ]
        indexes = [
            models.Index(
                fields=["status", "next_retry_at"], name="claims_record_due_idx"
            ),
            # The console finds a claim by any of its ids with an exact lookup.
            models.Index(fields=["claim_id"], name="claims_record_claim_id_idx"),
            models.Index(fields=["cid"], name="claims_record_cid_idx"),
            models.Index(fields=["tx_hash"], name="claims_record_tx_hash_idx"),
        ]

    def __str__(self) -> str:
        return f"claim {self.claim_id} ({self.status})"

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


class EventActor(models.TextChoices):
    LISTENER = "listener", "Listener"
    RECONCILER = "reconciler", "Reconciler"
    STAFF = "staff", "Staff"
    SYSTEM = "system", "System"
    LIFECYCLE = "lifecycle", "Lifecycle sweep"


@dataclass(frozen=True)
class Actor:
    """Who caused an event: the listener, the reconciler, or a staff user."""

    kind: str
    label: str = ""
    user_id: int | None = None


LISTENER = Actor(EventActor.LISTENER, "listener")
RECONCILER = Actor(EventActor.RECONCILER, "reconciler")
SYSTEM = Actor(EventActor.SYSTEM, "system")
LIFECYCLE = Actor(EventActor.LIFECYCLE, "lifecycle")


def staff_actor(user: Any) -> Actor:
    """The actor for a staff action (admin or command run by a named user)."""
    if user is None:
        return Actor(EventActor.STAFF, "staff")
    return Actor(EventActor.STAFF, user.get_username(), user.pk)


class ClaimEvent(models.Model):
    """Append-only history of a claim record: what happened, when, by whom."""

    record = models.ForeignKey(
        ClaimRecord, on_delete=models.CASCADE, related_name="events"
    )
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=40)
    from_status = models.CharField(max_length=20, blank=True, default="")
    to_status = models.CharField(max_length=20, blank=True, default="")
    actor = models.CharField(max_length=20, choices=EventActor.choices)
    actor_label = models.CharField(max_length=150, blank=True, default="")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    message = models.TextField(blank=True, default="")
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            # The console's "failed in the last 24 h" and its per-hour charts.
            models.Index(fields=["to_status", "at"], name="claims_event_status_at_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} by {self.actor_label or self.actor}"


class MessageKind(models.TextChoices):
    PREQUALIFICATION = "prequalification", "Prequalification request"
    ISSUE = "issue-credential", "Credential issued"
    REJECT = "reject-credential", "Credential rejected"
    REQUEST = "request-credential", "Credential requested"
    LEGACY = "legacy", "Legacy full claim message"
    RECONCILE = "reconcile", "Reconciliation (queued in the console)"
    UNKNOWN = "unknown", "Unknown"


class MessageOutcome(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSED = "processed", "Processed"
    IGNORED = "ignored", "Ignored"
    REJECTED = "rejected", "Rejected"
    FAILED = "failed", "Failed"


class InboundMessage(models.Model):
    """One NATS message as received, stored before anything acts on it."""

    subject = models.CharField(max_length=255)
    payload = models.TextField(
        blank=True, default="", help_text="Up to INBOUND_PAYLOAD_LIMIT bytes."
    )
    payload_size = models.PositiveIntegerField(default=0)
    truncated = models.BooleanField(default=False)
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    dedupe_key = models.CharField(
        max_length=64, db_index=True, help_text="sha256 of subject and payload."
    )
    stream_key = models.CharField(
        max_length=120,
        blank=True,
        default="",
        help_text="JetStream <stream>:<sequence>, empty in core mode.",
    )
    stream_sequence = models.PositiveBigIntegerField(null=True, blank=True)
    kind = models.CharField(
        max_length=30, choices=MessageKind.choices, default=MessageKind.UNKNOWN
    )
    outcome = models.CharField(
        max_length=20, choices=MessageOutcome.choices, default=MessageOutcome.PENDING
    )
    reason = models.TextField(blank=True, default="")
    asset_did = models.CharField(max_length=100, blank=True, default="")
    claim_id = models.CharField(max_length=100, blank=True, default="")
    record = models.ForeignKey(
        ClaimRecord,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="messages",
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    listener = models.CharField(max_length=150, blank=True, default="")
    # Work a staff user queued in the console: the claim history names them.
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    requested_by_label = models.CharField(
        "queued by", max_length=150, blank=True, default=""
    )

    objects = InboundMessageQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        constraints = [
            # A JetStream redelivery (crash between commit and ack) is the same
            # stream sequence: record it once.
            models.UniqueConstraint(
                fields=["stream_key"],
                condition=~Q(stream_key=""),
                name="claims_inbound_stream_key_unique",
            ),
        ]
        indexes = [
            models.Index(
                fields=["outcome", "next_attempt_at"], name="claims_inbound_due_idx"
            ),
            # The console's inbox search: messages of an asset or of a claim.
            models.Index(fields=["asset_did"], name="claims_inbound_asset_did_idx"),
            models.Index(fields=["claim_id"], name="claims_inbound_claim_id_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.subject} ({self.outcome})"


class ConnectionState(models.TextChoices):
    STARTING = "starting", "Starting"
    CONNECTED = "connected", "Connected"
    RECONNECTING = "reconnecting", "Reconnecting"
    DISCONNECTED = "disconnected", "Disconnected"
    DRAINING = "draining", "Draining"
    STOPPED = "stopped", "Stopped"


class ListenerHeartbeat(models.Model):
    """The live state of one `run_nats_listener` process, for the console."""

    name = models.CharField(max_length=150, unique=True)
    state = models.CharField(
        max_length=20, choices=ConnectionState.choices, default=ConnectionState.STARTING
    )
    last_heartbeat = models.DateTimeField()
    started_at = models.DateTimeField()
    pid = models.PositiveIntegerField(default=0)
    host = models.CharField(max_length=255, blank=True, default="")
    mode = models.CharField(max_length=20, blank=True, default="core")
    details = models.JSONField(default=dict, blank=True)

    objects = ListenerHeartbeatQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.state})"

    def reported_problems(self) -> list[str]:
        """What the listener itself reported wrong in its last heartbeat, in words.

        Its own `problems` (a dead NATS read loop, messages dropped before they were
        stored; `claims.intake.IntakeHealth`) and its signer backend unavailable. Read
        by `listener_health` and the console's dashboard.
        """
        details = self.details if isinstance(self.details, dict) else {}
        found = [str(problem) for problem in details.get("problems") or []]
        signer = details.get("signer") or {}
        if isinstance(signer, dict) and signer.get("ok") is False:
            found.append(f"signer unavailable: {signer.get('error', '')}")
        return found
