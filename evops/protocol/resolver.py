"""DID-document resolution from the ERC-1056 registry (protocol.md §7).

The chain integration supplies a `RegistryReader` (or `AsyncRegistryReader`); this
module walks the registry's `previousChange` linked list and assembles the document
with one pure function, `build_did_document`, shared by the sync and async paths.

Deliberate improvement over the reference reader (ethr-did-resolver as used by the
EW cache server and iam-client-lib): that reader fetches the logs of a block and
keeps only the first event for the identity, so a second change written in the same
block is invisible to it. This resolver processes **every** log of each block, in
log order, and follows the previous-change pointers of all of them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from cachetools import LRUCache

from evops.protocol.dids import DID, normalize_address
from evops.protocol.erc1056 import (
    AttributeChanged,
    DelegateChanged,
    OwnerChanged,
    RegistryEvent,
)
from evops.protocol.errors import DIDError, EncodingError, ProtocolError

DID_CONTEXT = "https://www.w3.org/ns/did/v1"
OWNER_KEY_TYPE = "Secp256k1VerificationKey2018"
AUTHENTICATION_TYPE = "Secp256k1SignatureAuthentication2018"
MAX_HISTORY_BLOCKS = 10_000
ERR_HISTORY_TOO_LONG = "registry history is longer than the resolver's limit"

__all__ = [
    "AsyncRegistryReader",
    "BatchRegistryReader",
    "RegistryEvent",
    "RegistryHistory",
    "RegistryHistoryCache",
    "RegistryReader",
    "build_did_document",
    "find_service_by_hash",
    "find_service_for_claim",
    "resolve_did_document",
    "resolve_did_document_async",
    "resolve_did_documents_async",
]


class RegistryReader(Protocol):
    """Read access to an ERC-1056 registry (the chain integration implements it)."""

    def changed(self, identity: str) -> int:
        """`changed(identity)`: block of the identity's last change, 0 if none."""
        ...

    def logs(self, identity: str, block_number: int) -> Sequence[RegistryEvent]:
        """Every decoded registry event with topic1 = identity in that block."""
        ...

    def identity_owner(self, identity: str) -> str:
        """`identityOwner(identity)`."""
        ...


class AsyncRegistryReader(Protocol):
    """`RegistryReader` with coroutine methods (web3's async provider)."""

    async def changed(self, identity: str) -> int: ...

    async def logs(
        self, identity: str, block_number: int
    ) -> Sequence[RegistryEvent]: ...

    async def identity_owner(self, identity: str) -> str: ...


class BatchRegistryReader(Protocol):
    """`AsyncRegistryReader` for many identities per call (JSON-RPC batches)."""

    async def changed_many(self, identities: Sequence[str]) -> list[int]: ...

    async def logs_many(
        self, queries: Sequence[tuple[str, int]]
    ) -> Sequence[Sequence[RegistryEvent]]: ...

    async def identity_owners(self, identities: Sequence[str]) -> list[str]: ...


@dataclass(frozen=True)
class RegistryHistory:
    """What the walk read for one identity: its events up to `changed`, its owner."""

    changed: int
    events: tuple[RegistryEvent, ...]
    owner: str


class RegistryHistoryCache:
    """Registry histories by identity address, at most `size` (least recently used
    dropped first).

    ERC-1056 sets `changed[identity]` to the current block on every change of the
    identity (attribute, delegate, owner), so a history read when `changed` was N
    is still the whole history while `changed` reads N: the document is rebuilt
    from it (validity is judged at each build) without reading the logs again.
    """

    def __init__(self, size: int) -> None:
        self.size = max(0, size)
        # cachetools refuses a zero maxsize's every entry; `put` keeps none then.
        self._entries: LRUCache[str, RegistryHistory] = LRUCache(max(1, self.size))

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, address: str, changed: int) -> RegistryHistory | None:
        entry = self._entries.get(address)  # a hit counts as a use
        if entry is None or entry.changed != changed:
            return None
        return entry

    def put(self, address: str, history: RegistryHistory) -> None:
        if self.size:
            self._entries[address] = history


def _now_seconds(now: datetime | float) -> float:
    if isinstance(now, datetime):
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        return now.timestamp()
    return float(now)


def _own_events(did: DID, events: Iterable[RegistryEvent]) -> list[RegistryEvent]:
    return [e for e in events if e.identity.lower() == did.address.lower()]


def _next_block(block: int, events: Sequence[RegistryEvent]) -> int:
    """The block to visit after `block`: the newest previousChange before it.

    Every event of the block points either at an older block (the first change in
    the block) or at `block` itself (later changes in the same block); pointers to
    `block` or newer are not followed, so a corrupt reader cannot make us loop.
    """
    older = [e.previous_change for e in events if 0 < e.previous_change < block]
    return max(older, default=0)


def resolve_did_document(
    did: DID | str, reader: RegistryReader, *, now: datetime | float
) -> dict[str, Any]:
    """Resolve `did` from chain, as every reader does (§7), but seeing all logs.

    Mirrors ethr-did-resolver's `changeLog` walk: start at `changed(identity)`,
    fetch that block's logs, continue at `previousChange` until 0.
    """
    subject = DID.coerce(did)
    events: list[RegistryEvent] = []
    block = reader.changed(subject.address)
    visited = 0
    while block:
        visited += 1
        if visited > MAX_HISTORY_BLOCKS:
            raise ProtocolError(ERR_HISTORY_TOO_LONG)
        found = _own_events(subject, reader.logs(subject.address, block))
        events.extend(found)
        block = _next_block(block, found)
    owner = reader.identity_owner(subject.address)
    return build_did_document(subject, events, owner=owner, now=now)


async def resolve_did_document_async(
    did: DID | str, reader: AsyncRegistryReader, *, now: datetime | float
) -> dict[str, Any]:
    """Async twin of `resolve_did_document` (same walk, same assembly).

    Mirrors ethr-did-resolver's `changeLog` walk like the sync version, for
    web3's async provider.
    """
    subject = DID.coerce(did)
    events: list[RegistryEvent] = []
    block = await reader.changed(subject.address)
    visited = 0
    while block:
        visited += 1
        if visited > MAX_HISTORY_BLOCKS:
            raise ProtocolError(ERR_HISTORY_TOO_LONG)
        found = _own_events(subject, await reader.logs(subject.address, block))
        events.extend(found)
        block = _next_block(block, found)
    owner = await reader.identity_owner(subject.address)
    return build_did_document(subject, events, owner=owner, now=now)


async def resolve_did_documents_async(
    dids: Sequence[DID | str],
    reader: BatchRegistryReader,
    *,
    now: datetime | float,
    cache: RegistryHistoryCache | None = None,
    settled_block: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Many DID documents at once, by canonical DID: the same walk as
    `resolve_did_document_async`, one level of every identity's history per call.

    `changed` is read for every identity; an identity whose `changed` matches its
    history in `cache` is rebuilt from it without reading logs or owner. A history
    read now is kept in `cache` only if its newest change is at or below
    `settled_block` (deep enough that a reorganisation will not replace it).
    """
    subjects = list({s.canonical: s for s in map(DID.coerce, dids)}.values())
    if not subjects:
        return {}
    changed = await reader.changed_many([s.address for s in subjects])
    histories: dict[str, RegistryHistory] = {}
    todo: list[tuple[DID, int]] = []
    for subject, block in zip(subjects, changed, strict=True):
        hit = cache.get(subject.address, block) if cache is not None else None
        if hit is not None:
            histories[subject.canonical] = hit
        else:
            todo.append((subject, block))
    if todo:
        events: dict[str, list[RegistryEvent]] = {s.canonical: [] for s, _ in todo}
        frontier = [(s, block) for s, block in todo if block]
        visited = 0
        while frontier:
            visited += 1
            if visited > MAX_HISTORY_BLOCKS:
                raise ProtocolError(ERR_HISTORY_TOO_LONG)
            answers = await reader.logs_many([(s.address, b) for s, b in frontier])
            following: list[tuple[DID, int]] = []
            for (subject, block), logs in zip(frontier, answers, strict=True):
                found = _own_events(subject, logs)
                events[subject.canonical].extend(found)
                if older := _next_block(block, found):
                    following.append((subject, older))
            frontier = following
        owners = await reader.identity_owners([s.address for s, _ in todo])
        for (subject, block), owner in zip(todo, owners, strict=True):
            history = RegistryHistory(
                changed=block, events=tuple(events[subject.canonical]), owner=owner
            )
            histories[subject.canonical] = history
            if cache is not None and (settled_block is None or block <= settled_block):
                cache.put(subject.address, history)
    return {
        subject.canonical: build_did_document(
            subject,
            histories[subject.canonical].events,
            owner=histories[subject.canonical].owner,
            now=now,
        )
        for subject in subjects
    }


def _public_key_entry(
    doc_id: str, index: int, event: AttributeChanged, parts: list[str]
) -> dict[str, Any] | None:
    # did/pub/<algorithm>/<purpose>/<encoding>, as ethr-did-resolver reads it
    if len(parts) < 4:
        return None
    algorithm, purpose = parts[2], parts[3]
    encoding = parts[4] if len(parts) > 4 else "hex"
    entry: dict[str, Any] = {
        "id": f"{doc_id}#key-{index}",
        "type": f"{algorithm}{purpose}",
        "controller": doc_id,
    }
    if encoding in ("hex", ""):
        entry["publicKeyHex"] = event.value.hex()
    elif encoding == "base64":
        entry["publicKeyBase64"] = base64.b64encode(event.value).decode("ascii")
    else:
        try:
            entry[f"publicKey{encoding.capitalize()}"] = event.value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return entry


def build_did_document(
    did: DID | str,
    events: Iterable[RegistryEvent],
    *,
    owner: str | None = None,
    now: datetime | float,
) -> dict[str, Any]:
    """Assemble a DID document from registry events (pure, order-independent).

    Mirrors ethr-did-resolver's `wrapDidDocument` as the EW peers use it, with the
    §7 rules: events are applied newest first (block, then log index) and the newest
    event per key wins; entries with `validTo <= now` are dropped (revocation writes
    `validTo` 0, so it removes the key); `did/svc/*` values are JSON objects keyed by
    their `id`. `owner` is `identityOwner(identity)`; when omitted the newest
    `DIDOwnerChanged` (or the identity itself) is used.
    """
    subject = DID.coerce(did)
    doc_id = subject.canonical
    now_s = _now_seconds(now)
    ordered = sorted(
        _own_events(subject, events),
        key=lambda e: (e.block_number, e.log_index),
        reverse=True,
    )

    if owner is None:
        owner = next(
            (e.owner for e in ordered if isinstance(e, OwnerChanged)),
            subject.address,
        )
    try:
        owner_address = normalize_address(owner)
    except DIDError as exc:
        raise EncodingError(f"identity owner: {exc}") from None

    seen: set[tuple[Any, ...]] = set()
    # (block, log index, entry) of winning, still-valid entries, to emit oldest first
    keys: list[tuple[int, int, dict[str, Any]]] = []
    auth: list[tuple[int, int, dict[str, Any]]] = []
    services: list[tuple[int, int, dict[str, Any]]] = []
    position = (0, 0)
    counter = 0
    for event in ordered:
        position = (event.block_number, event.log_index)
        counter += 1
        if isinstance(event, OwnerChanged):
            continue
        valid = event.valid_to > now_s
        if isinstance(event, DelegateChanged):
            delegate_type = event.delegate_type_text
            key: tuple[Any, ...] = ("delegate", delegate_type, event.delegate.lower())
            if key in seen:
                continue
            seen.add(key)
            if not valid:
                continue
            key_id = f"{doc_id}#delegate-{delegate_type}-{event.delegate}"
            keys.append(
                (
                    *position,
                    {
                        "id": key_id,
                        "type": delegate_type,
                        "controller": doc_id,
                        "ethereumAddress": event.delegate,
                    },
                )
            )
            if delegate_type == "sigAuth":
                auth.append((*position, {"type": "sigAuth", "publicKey": key_id}))
            continue

        name = event.name_text
        parts = name.split("/")
        if name.startswith("did/svc/"):
            try:
                service: dict[str, Any] = json.loads(event.value.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                service = {}
            if isinstance(service, dict) and isinstance(service.get("id"), str):
                key = ("service", service["id"])
            else:
                # Not a JSON object with an id: keep it the way ethr-did-resolver
                # does, keyed by name and value.
                key = ("service-raw", name, event.value)
                service = {
                    "id": f"{doc_id}#service-{counter}",
                    "type": parts[2] if len(parts) > 2 else "",
                    "serviceEndpoint": event.value.decode("utf-8", "replace"),
                }
            if key in seen:
                continue
            seen.add(key)
            if valid:
                services.append((*position, service))
        elif name.startswith("did/pub/"):
            key = ("pub", name, event.value)
            if key in seen:
                continue
            seen.add(key)
            entry = _public_key_entry(doc_id, counter, event, parts)
            if valid and entry is not None:
                keys.append((*position, entry))

    def oldest_first(items: list[tuple[int, int, dict[str, Any]]]) -> list[Any]:
        return [entry for *_, entry in sorted(items, key=lambda i: (i[0], i[1]))]

    owner_key_id = f"{doc_id}#owner"
    return {
        "@context": DID_CONTEXT,
        "id": doc_id,
        "publicKey": [
            {
                "id": owner_key_id,
                "type": OWNER_KEY_TYPE,
                "controller": doc_id,
                "ethereumAddress": owner_address,
            },
            *oldest_first(keys),
        ],
        "authentication": [
            {"type": AUTHENTICATION_TYPE, "publicKey": owner_key_id},
            *oldest_first(auth),
        ],
        "service": oldest_first(services),
    }


def _services(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    services = document.get("service")
    if not isinstance(services, list):
        return []
    return [s for s in services if isinstance(s, Mapping)]


def find_service_by_hash(
    document: Mapping[str, Any], token_sha256: str
) -> dict[str, Any] | None:
    """The service entry publishing the token with this sha256, if any.

    Mirrors §8's "counts as published": reconciliation compares by hash, so a
    restart never republishes (the original client republished everything).
    Tolerates a `0x` prefix and upper case in either hash.
    """
    wanted = token_sha256.lower().removeprefix("0x")
    for service in _services(document):
        value = service.get("hash")
        if isinstance(value, str) and value.lower().removeprefix("0x") == wanted:
            return dict(service)
    return None


def find_service_for_claim(
    document: Mapping[str, Any],
    claim_type: str,
    version: int,
    *,
    claims_by_hash: Mapping[str, tuple[str, int]] | None = None,
) -> dict[str, Any] | None:
    """The service entry for this claim type and version, whose `id` to reuse.

    Mirrors iam-client-lib's `publishPublicClaim`, which replaces the entry of the
    same claimType/claimTypeVersion. Cache-server documents carry those fields in
    the service entry; documents resolved from chain do not, so pass
    `claims_by_hash` (token sha256 -> (claim type, version)) for them. The newest
    matching entry (last in the list) wins.
    """
    found: dict[str, Any] | None = None
    for service in _services(document):
        entry_type = service.get("claimType")
        entry_version: Any = service.get("claimTypeVersion")
        value = service.get("hash")
        if entry_type is None and claims_by_hash and isinstance(value, str):
            known = claims_by_hash.get(value.lower().removeprefix("0x"))
            if known is not None:
                entry_type, entry_version = known
        try:
            matches = entry_type == claim_type and int(entry_version) == version
        except (TypeError, ValueError):
            matches = False
        if matches:
            found = dict(service)
    return found
