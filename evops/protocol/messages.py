"""The NATS messages evops receives: subjects and payload parsing (protocol.md §5).

Pure: `classify_subject` and `parse_message` turn a subject and raw payload bytes into
a typed message or raise `MessageError` with a stable reason code (the `REASON_*`
constants), which the listener stores on the inbound row. Both the current
`{"type", "claimId"}` payload and the legacy full claim message are accepted; either
is only a *hint* that the pipeline verifies against the cache server (or, for the
legacy token, against the protocol core's checks). The connection lives in
`evops.integrations.nats`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from evops.protocol.dids import DID
from evops.protocol.errors import DIDError

log = logging.getLogger(__name__)

ISSUE_CREDENTIAL = "issue-credential"
REJECT_CREDENTIAL = "reject-credential"
REQUEST_CREDENTIAL = "request-credential"
CLAIM_EXCHANGE_TYPES = (ISSUE_CREDENTIAL, REJECT_CREDENTIAL, REQUEST_CREDENTIAL)

DEFAULT_PREQUALIFICATION_SUBJECT = "*.prequalification.exchange"
DEFAULT_CLAIM_EXCHANGE_SUBJECTS = ("*.claim-exchange.*.*", "*.claim.exchange")

# Reason codes stored on rejected inbound messages (tests assert on them).
REASON_BAD_SUBJECT = "bad_subject"
REASON_TOO_LARGE = "payload_too_large"
REASON_NOT_UTF8 = "payload_not_utf8"
REASON_NOT_JSON = "payload_not_json"
REASON_NOT_OBJECT = "payload_not_object"
REASON_BAD_FIELD = "bad_field"
REASON_INVALID_DID = "invalid_did"
REASON_DID_MISMATCH = "did_mismatch"
REASON_UNKNOWN_TYPE = "unknown_type"
REASON_TYPE_MISMATCH = "type_mismatch"

_MAX_CLAIM_ID = 100
_MAX_TOKEN = 64 * 1024


def printable(text: str) -> str:
    """`text` safe to store and show: control characters and undecodable bytes
    (lone surrogates from `surrogateescape`) written as backslash escapes.

    PostgreSQL refuses NUL in text, and a reason that carries one poisons every
    statement it is batched with; a terminal or log line must not be steered by
    what a peer sent either.
    """
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        elif 0xDC80 <= ord(char) <= 0xDCFF:
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def subject_problem(subject: str) -> str:
    """Why a subject cannot be stored as it is ("" when it can)."""
    try:
        subject.encode("utf-8")
    except UnicodeEncodeError:
        return DETAIL_SUBJECT_NOT_UTF8
    if not subject.isprintable():
        return DETAIL_CONTROL_CHARACTERS
    return ""


DETAIL_SUBJECT_NOT_UTF8 = "subject is not UTF-8 text"
DETAIL_CONTROL_CHARACTERS = "control characters"


class MessageError(Exception):
    """A message that cannot be acted on; `reason` is one of the `REASON_*` codes."""

    def __init__(self, reason: str, detail: str = "") -> None:
        # The detail may quote the message: keep it storable and showable.
        detail = printable(detail)
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SubjectKind(StrEnum):
    PREQUALIFICATION = "prequalification"
    CLAIM_EXCHANGE = "claim-exchange"
    LEGACY_CLAIM = "legacy-claim"


@dataclass(frozen=True)
class SubjectInfo:
    """What a subject says: its family, the DID token and `<env>` when present."""

    kind: SubjectKind
    prefix: str = ""
    did_text: str = ""
    env: str = ""


class MessageType(StrEnum):
    PREQUALIFICATION = "prequalification"
    ISSUE = ISSUE_CREDENTIAL
    REJECT = REJECT_CREDENTIAL
    REQUEST = REQUEST_CREDENTIAL


@dataclass(frozen=True)
class InboundHint:
    """A parsed message: what it asks for, about which asset, which claim.

    `legacy` is True for the old full-claim payload; then `issued_token` (if any) is
    the token carried in the message and `rejection_reason` the issuer's reason.
    """

    type: MessageType
    did: DID
    claim_id: str = ""
    legacy: bool = False
    issued_token: str = ""
    rejection_reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match: `*` is exactly one token, a final `>` one or more."""
    p_tokens = pattern.split(".")
    s_tokens = subject.split(".")
    for index, part in enumerate(p_tokens):
        if part == ">":
            return index == len(p_tokens) - 1 and len(s_tokens) > index
        if index >= len(s_tokens):
            return False
        if part not in ("*", s_tokens[index]):
            return False
    return len(p_tokens) == len(s_tokens)


def classify_subject(subject: str) -> SubjectInfo:
    """Tell which §5 family a subject belongs to, or raise `MessageError`.

    Mirrors the cache server's subjects: `<token>.prequalification.exchange`,
    `<type>.claim-exchange.<did>.<env>` and the legacy `<did>.claim.exchange`.
    """
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise MessageError(REASON_BAD_SUBJECT, "empty or too long")
    problem = subject_problem(subject)
    if problem:
        raise MessageError(REASON_BAD_SUBJECT, problem)
    tokens = subject.split(".")
    if any(not token for token in tokens):
        raise MessageError(REASON_BAD_SUBJECT, "empty token")
    if len(tokens) == 3 and tokens[1:] == ["prequalification", "exchange"]:
        return SubjectInfo(SubjectKind.PREQUALIFICATION, prefix=tokens[0])
    if len(tokens) == 4 and tokens[1] == "claim-exchange":
        return SubjectInfo(
            SubjectKind.CLAIM_EXCHANGE,
            prefix=tokens[0],
            did_text=tokens[2],
            env=tokens[3],
        )
    if len(tokens) == 3 and tokens[1:] == ["claim", "exchange"]:
        return SubjectInfo(SubjectKind.LEGACY_CLAIM, did_text=tokens[0])
    raise MessageError(REASON_BAD_SUBJECT, "not a prequalification or claim subject")


def _did(value: Any, what: str) -> DID:
    if not isinstance(value, str):
        raise MessageError(REASON_BAD_FIELD, f"{what} must be a string")
    try:
        return DID.parse(value)
    except DIDError as exc:
        raise MessageError(REASON_INVALID_DID, f"{what}: {exc}") from None


def _claim_id(value: Any) -> str:
    # The cache server's ids are uuids, but older ones were numbers: accept both.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MessageError(REASON_BAD_FIELD, "claimId must be a string")
    text = str(value).strip()
    if not text or len(text) > _MAX_CLAIM_ID:
        raise MessageError(REASON_BAD_FIELD, "claimId is empty or too long")
    if not _CLAIM_ID_CHARS.fullmatch(text):
        raise MessageError(REASON_BAD_FIELD, "claimId has characters ids never have")
    return text


# Ids are uuids (older ones numbers); anything outside visible ASCII is hostile.
_CLAIM_ID_CHARS = re.compile(r"[\x21-\x7e]+")


def _optional_str(payload: dict[str, Any], key: str, limit: int) -> str:
    value = payload.get(key)
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise MessageError(REASON_BAD_FIELD, f"{key} must be a string")
    return value


def decode_payload(raw: bytes, *, limit: int) -> dict[str, Any]:
    """Decode a payload as a JSON object no larger than `limit` bytes."""
    if len(raw) > limit:
        raise MessageError(REASON_TOO_LARGE, f"{len(raw)} bytes > {limit}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MessageError(REASON_NOT_UTF8) from None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise MessageError(REASON_NOT_JSON) from None
    if not isinstance(value, dict):
        raise MessageError(REASON_NOT_OBJECT)
    return value


def parse_message(subject: str, raw: bytes, *, limit: int) -> InboundHint:
    """Parse one message into an `InboundHint`, or raise `MessageError`.

    The DID in a claim-exchange subject and the one in a legacy payload must name
    the same account; a mismatch is refused rather than guessed at.
    """
    info = classify_subject(subject)
    payload = decode_payload(raw, limit=limit)
    if info.kind is SubjectKind.PREQUALIFICATION:
        return InboundHint(
            MessageType.PREQUALIFICATION, _did(payload.get("did"), "did")
        )
    subject_did = _did(info.did_text, "subject DID")
    if "type" in payload or "claimId" in payload:
        return _current(info, subject_did, payload)
    return _legacy(info, subject_did, payload)


def _current(info: SubjectInfo, did: DID, payload: dict[str, Any]) -> InboundHint:
    kind = payload.get("type")
    if not isinstance(kind, str):
        raise MessageError(REASON_BAD_FIELD, "type must be a string")
    if kind not in CLAIM_EXCHANGE_TYPES:
        raise MessageError(REASON_UNKNOWN_TYPE, kind[:40])
    if info.prefix in CLAIM_EXCHANGE_TYPES and info.prefix != kind:
        raise MessageError(REASON_TYPE_MISMATCH, f"subject {info.prefix}, type {kind}")
    return InboundHint(
        MessageType(kind), did, claim_id=_claim_id(payload.get("claimId"))
    )


def _legacy(info: SubjectInfo, did: DID, payload: dict[str, Any]) -> InboundHint:
    """The old full RoleClaim message: decide its meaning from its fields."""
    claim_id = _claim_id(payload.get("id"))
    for key in ("requester", "subject"):
        if payload.get(key) is not None:
            other = _did(payload.get(key), key)
            if not other.same_identity(did):
                raise MessageError(REASON_DID_MISMATCH, f"{key} is not the subject DID")
    token = _optional_str(payload, "issuedToken", _MAX_TOKEN)
    reason = _optional_str(payload, "rejectionReason", 1000)
    rejected = payload.get("isRejected")
    if rejected is not None and not isinstance(rejected, bool):
        raise MessageError(REASON_BAD_FIELD, "isRejected must be a boolean")
    if token:
        kind = MessageType.ISSUE
    elif rejected:
        kind = MessageType.REJECT
    else:
        kind = MessageType.REQUEST
    if info.prefix in CLAIM_EXCHANGE_TYPES and info.prefix != kind.value:
        raise MessageError(
            REASON_TYPE_MISMATCH, f"subject {info.prefix}, message {kind}"
        )
    return InboundHint(
        kind,
        did,
        claim_id=claim_id,
        legacy=True,
        issued_token=token,
        rejection_reason=reason,
    )


def subjects_for(prequalification: str, claim_exchange: Sequence[str]) -> list[str]:
    """The subjects to subscribe to, without duplicates, in a stable order."""
    seen: list[str] = []
    for subject in (prequalification, *claim_exchange):
        if subject and subject not in seen:
            seen.append(subject)
    return seen
