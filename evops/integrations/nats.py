"""NATS: subject patterns, payload parsing, and the connection helper (protocol.md §5).

The parsing half is pure: `classify_subject` and `parse_message` turn a subject and raw
payload bytes into a typed message or raise `MessageError` with a stable reason code
(the `REASON_*` constants), which the listener stores on the inbound row. Both the
current `{"type", "claimId"}` payload and the legacy full claim message are accepted;
either is only a *hint* that the pipeline verifies against the cache server (or, for
the legacy token, against the protocol core's checks).

The connection half wraps nats-py: credentials and TLS options, reconnect forever, and
connection-state callbacks. Nothing here imports Django models.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
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

ERR_STOPPED = "stopped before the NATS connection was made"

_MAX_CLAIM_ID = 100
_MAX_TOKEN = 64 * 1024


class MessageError(Exception):
    """A message that cannot be acted on; `reason` is one of the `REASON_*` codes."""

    def __init__(self, reason: str, detail: str = "") -> None:
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
    return text


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


# --- connection ----------------------------------------------------------------------


@dataclass(frozen=True)
class NatsOptions:
    """How to reach NATS; built from settings by `nats_options_from_settings`."""

    url: str = "nats://127.0.0.1:4222"
    user: str = ""
    password: str = ""
    creds: str = ""
    tls_ca: str = ""
    name: str = "evops"
    connect_timeout: float = 5.0
    reconnect_wait: float = 2.0

    def __repr__(self) -> str:
        return f"NatsOptions(url={self.url!r}, name={self.name!r})"


def nats_options_from_settings(name: str = "evops") -> NatsOptions:
    from django.conf import settings

    return NatsOptions(
        url=settings.NATS_URL,
        user=settings.NATS_USER,
        password=settings.NATS_PASSWORD,
        creds=settings.NATS_CREDS,
        tls_ca=settings.NATS_TLS_CA,
        name=name,
    )


StateCallback = Callable[[str], Awaitable[None]]


async def connect(
    options: NatsOptions,
    *,
    on_state: StateCallback | None = None,
    stop: asyncio.Event | None = None,
) -> Any:
    """Connect, and reconnect forever (`max_reconnect_attempts=-1`).

    The first connect is retried too (every `reconnect_wait`) until `stop` is set,
    which raises `ConnectionAbortedError`. `on_state` hears "reconnecting" (also
    while the first connect fails), "connected" and "disconnected" (closed).
    Returns the nats-py client.
    """
    import nats

    async def notify(state: str) -> None:
        if on_state is not None:
            await on_state(state)

    async def disconnected() -> None:
        await notify("reconnecting")

    async def reconnected() -> None:
        await notify("connected")

    async def closed() -> None:
        await notify("disconnected")

    connected = False

    async def error(exc: Exception) -> None:
        log.warning("nats error: %s", exc, extra={"nats_url": options.url})
        if not connected:
            await notify("reconnecting")

    kwargs: dict[str, Any] = {
        "servers": [options.url],
        "name": options.name,
        "connect_timeout": options.connect_timeout,
        "reconnect_time_wait": options.reconnect_wait,
        "max_reconnect_attempts": -1,
        "allow_reconnect": True,
        "disconnected_cb": disconnected,
        "reconnected_cb": reconnected,
        "closed_cb": closed,
        "error_cb": error,
    }
    if options.user:
        kwargs["user"] = options.user
        kwargs["password"] = options.password
    if options.creds:
        kwargs["user_credentials"] = options.creds
    if options.tls_ca:
        kwargs["tls"] = ssl.create_default_context(cafile=options.tls_ca)
    # With reconnect allowed, nats-py keeps retrying the first connect by itself;
    # run it as a task so that `stop` can interrupt the wait.
    attempt = asyncio.create_task(nats.connect(**kwargs))
    if stop is None:
        client = await attempt
    else:
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait(
            {attempt, stopped}, return_when=asyncio.FIRST_COMPLETED
        )
        if attempt not in done:
            attempt.cancel()
            with contextlib.suppress(BaseException):
                await attempt
            raise ConnectionAbortedError(ERR_STOPPED)
        stopped.cancel()
        client = attempt.result()
    connected = True
    await notify("connected")
    return client


def subjects_for(prequalification: str, claim_exchange: Sequence[str]) -> list[str]:
    """The subjects to subscribe to, without duplicates, in a stable order."""
    seen: list[str] = []
    for subject in (prequalification, *claim_exchange):
        if subject and subject not in seen:
            seen.append(subject)
    return seen
