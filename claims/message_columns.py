"""What an inbound message says, as the columns of its row.

A message is parsed once, on arrival: its kind, asset DID and claim id go into the
row, with the dedupe key (by meaning when it parses, by bytes when not); what cannot
be stored faithfully (bad subject, too large, not UTF-8) is refused unread. Later
stages read the columns back (`message_hint`) instead of parsing the payload again.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from django.utils import timezone

from claims.models import InboundMessage, MessageKind, MessageOutcome
from evops.protocol import messages as wire
from evops.protocol.dedupe import message_key
from evops.protocol.dids import DID
from evops.protocol.errors import DIDError

# A request-credential notice goes to the issuers (protocol.md §5): nothing to do.
REASON_FOR_ISSUERS = "request_for_issuers"


def dedupe_key(subject: str, payload: bytes) -> str:
    # The subject's bytes as received: one that is not UTF-8 still has a key.
    raw = subject.encode("utf-8", "surrogateescape")
    return hashlib.sha256(raw + b"\n" + payload).hexdigest()


def inbound_fields(
    subject: str, payload: bytes, *, kind: str, listener: str
) -> tuple[dict[str, Any], str]:
    """The row of a received message, and why it is refused unread ("" if not)."""
    limit = int(settings.INBOUND_PAYLOAD_LIMIT)
    text = payload[:limit].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    fields: dict[str, Any] = {
        # Kept as text PostgreSQL can store: a NUL or undecodable byte escaped.
        "subject": wire.printable(subject)[:255],
        "payload": text,
        "payload_size": len(payload),
        "truncated": len(payload) > limit,
        "kind": kind,
        "listener": listener[:150],
        "next_attempt_at": timezone.now(),
        "dedupe_key": dedupe_key(subject, payload),
    }
    # What cannot be kept faithfully (too large, not UTF-8 text) is refused here:
    # the worker only ever parses the stored text.
    early = _unstorable(subject, payload, limit)
    if early:
        fields.update(
            outcome=MessageOutcome.REJECTED,
            reason=early,
            processed_at=timezone.now(),
            next_attempt_at=None,
        )
    else:
        fields.update(_parsed(subject, payload, kind))
    return fields, early


_COLUMN_KINDS = {
    MessageKind.PREQUALIFICATION,
    MessageKind.ISSUE,
    MessageKind.REJECT,
    MessageKind.REQUEST,
}


def _parsed(subject: str, payload: bytes, kind: str) -> dict[str, Any]:
    """Parse once, on arrival: the columns the later stages read.

    The kind, the asset DID and the claim id go into the row; the lease and the
    consumer read them instead of parsing the payload again. A message that does
    not parse is left pending as it is: the worker rejects it with the parser's
    reason. A well-formed request-credential notice is addressed to the issuers (the
    cache server sends one with every claim request, ours included), so it is
    stored as ignored and no worker looks at it.
    """
    try:
        if kind == MessageKind.RECONCILE:
            did = queued_did(payload.decode("utf-8"))
            return {
                "asset_did": did.canonical[:100],
                "dedupe_key": message_key(MessageKind.RECONCILE, did),
            }
        hint = wire.parse_message(subject, payload, limit=len(payload))
    except (wire.MessageError, UnicodeDecodeError):
        return {}
    fields: dict[str, Any] = {
        "asset_did": hint.did.canonical[:100],
        "claim_id": hint.claim_id[:100],
        # Duplicates by meaning, not bytes: a space or another spelling of the DID
        # must not cost another login and claim request in the asset's name. A
        # legacy message keys apart from the notices: one carrying a forged token
        # must never make the genuine notice about the same claim a duplicate.
        "dedupe_key": message_key(
            f"legacy:{hint.type.value}" if hint.legacy else hint.type.value,
            hint.did,
            hint.claim_id,
        ),
    }
    if kind == MessageKind.UNKNOWN:
        fields["kind"] = (
            MessageKind.LEGACY if hint.legacy else MessageKind(hint.type.value)
        )
    if (
        hint.type is wire.MessageType.REQUEST
        and not hint.legacy
        and subject.startswith(_REQUEST_NOTICE_PREFIX)
    ):
        fields.update(
            kind=MessageKind.REQUEST,
            outcome=MessageOutcome.IGNORED,
            reason=REASON_FOR_ISSUERS,
            processed_at=timezone.now(),
            next_attempt_at=None,
        )
    return fields


def message_hint(message: InboundMessage) -> wire.InboundHint:
    """What a stored message asks for, from the columns written on arrival.

    The payload is parsed again only for a legacy full-claim message (its token and
    type are in the payload) or a row stored without the columns (one that did not
    parse: this gives the parser's reason). Raises `wire.MessageError`.
    """
    if message.kind in _COLUMN_KINDS and message.asset_did:
        try:
            did = DID.parse(message.asset_did)
        except DIDError as exc:
            raise wire.MessageError(wire.REASON_INVALID_DID, str(exc)) from None
        return wire.InboundHint(
            type=wire.MessageType(message.kind), did=did, claim_id=message.claim_id
        )
    limit = 1 << 30  # size was enforced when the message was recorded
    return wire.parse_message(
        message.subject, message.payload.encode("utf-8"), limit=limit
    )


_REQUEST_NOTICE_PREFIX = f"{wire.REQUEST_CREDENTIAL}.claim-exchange."


def queued_did(payload: str) -> DID:
    """The asset DID of a queued reconciliation, or `wire.MessageError` saying why."""
    data = wire.decode_payload(payload.encode("utf-8"), limit=1 << 30)
    value = data.get("did")
    if not isinstance(value, str):
        raise wire.MessageError(wire.REASON_BAD_FIELD, "did must be a string")
    try:
        return DID.parse(value)
    except DIDError as exc:
        raise wire.MessageError(wire.REASON_INVALID_DID, str(exc)) from None


def _unstorable(subject: str, payload: bytes, limit: int) -> str:
    problem = wire.subject_problem(subject)
    if problem:
        return f"{wire.REASON_BAD_SUBJECT}: {problem}"
    if len(payload) > limit:
        return f"{wire.REASON_TOO_LARGE}: {len(payload)} bytes > {limit}"
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return wire.REASON_NOT_UTF8
    if "\x00" in text:
        return wire.REASON_NOT_UTF8
    return ""
