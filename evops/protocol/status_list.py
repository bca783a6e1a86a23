"""Credential revocation data: StatusList2021 entries and lists, role namehashes.

Pure decoding, no I/O (the hub and chain clients fetch the bytes):

- an issued token's `credentialStatus` (`StatusList2021Entry`, written by
  iam-client-lib 6.0 and later): the `statusListCredential` URL and the
  `statusListIndex`;
- the hub's answer to `GET /v1/status-list/<credentialId>`: 204 means not revoked,
  200 carries the signed `StatusList2021Credential` whose `issuer` is the revoker and
  whose `credentialSubject.encodedList` is base64(gzip(bytes)), one byte per entry,
  1 = revoked;
- the ENS namehash of a role namespace (the `role` key of the on-chain
  `ClaimsRevocationRegistry`).

Everything read from a peer is hostile until proven otherwise: the list is bounded
before and after decompression (a gzip bomb stops at the limit), malformed input is a
`StatusListError` with a specific message, and an index outside the list is an error
rather than "not revoked" (nothing is decided on a guess, either way).
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from evops.protocol._crypto import keccak256

ENTRY_TYPE = "StatusList2021Entry"
LIST_TYPE = "StatusList2021Credential"
REVOKED_BYTE = 1

# One byte per entry: a list of a million credentials is 1 MB decompressed.
MAX_LIST_BYTES = 1024 * 1024
MAX_ENCODED_CHARS = 4 * MAX_LIST_BYTES
MAX_INDEX = MAX_LIST_BYTES - 1

ERR_STATUS_NOT_OBJECT = "credentialStatus is not a JSON object"
ERR_STATUS_TYPE = "credentialStatus type is {type!r}, not StatusList2021Entry"
ERR_STATUS_URL = "credentialStatus has no http(s) statusListCredential URL"
ERR_STATUS_INDEX = "credentialStatus statusListIndex is not a small whole number"
ERR_CREDENTIAL_ID = "statusListCredential URL names no credential id"
ERR_LIST_NOT_OBJECT = "status list is not a JSON object"
ERR_LIST_TYPE = "status list is not a StatusList2021Credential"
ERR_LIST_PURPOSE = "status list purpose is {purpose!r}, not revocation"
ERR_LIST_ISSUER = "status list has no issuer"
ERR_LIST_ENCODED = "status list has no string credentialSubject.encodedList"
ERR_LIST_BASE64 = "status list encodedList is not base64"
ERR_LIST_GZIP = "status list encodedList is not gzip data"
ERR_LIST_TOO_LARGE = "status list is larger than {limit} bytes"
ERR_LIST_INDEX = "status list has {length} entries; index {index} is outside it"
ERR_LIST_BYTE = "status list entry {index} is {value}, neither 0 nor 1"


class StatusListError(ValueError):
    """A status entry or list that does not decode; never read as 'not revoked'."""


@dataclass(frozen=True)
class StatusEntry:
    """Where a credential's revocation status is published."""

    url: str
    index: int

    @property
    def credential_id(self) -> str:
        """The `<credentialId>` of `.../v1/status-list/<credentialId>`."""
        return credential_id_of(self.url)


def parse_status_entry(value: Any) -> StatusEntry | None:
    """The token payload's `credentialStatus`, or None when there is none.

    Mirrors iam-client-lib's `StatusList2021Entry` (`statusListIndex` as a string
    of digits, or a number). Raises `StatusListError` for an entry that is present
    but malformed: the caller records it for staff rather than ignoring it.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise StatusListError(ERR_STATUS_NOT_OBJECT)
    kind = value.get("type")
    if kind != ENTRY_TYPE:
        raise StatusListError(ERR_STATUS_TYPE.format(type=kind))
    url = value.get("statusListCredential")
    if (
        not isinstance(url, str)
        or len(url) > 2000
        or urlsplit(url).scheme not in ("http", "https")
        or not urlsplit(url).netloc
    ):
        raise StatusListError(ERR_STATUS_URL)
    raw = value.get("statusListIndex")
    index: int | None = None
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 9:
        index = int(raw)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        index = raw
    if index is None or not 0 <= index <= MAX_INDEX:
        raise StatusListError(ERR_STATUS_INDEX)
    credential_id_of(url)
    return StatusEntry(url=url, index=index)


def credential_id_of(url: str) -> str:
    """The last path segment of a status-list URL, percent-decoded.

    The hub's URL is `<domain>/v1/status-list/<credentialId>`; the id is asked of
    the configured hub, never of whatever host the token names.
    """
    path = urlsplit(url).path.rstrip("/")
    segment = unquote(path.rsplit("/", 1)[-1]) if "/" in path else ""
    if not segment or segment in (".", "..") or "/" in segment or len(segment) > 200:
        raise StatusListError(ERR_CREDENTIAL_ID)
    return segment


@dataclass(frozen=True)
class StatusList:
    """A decoded `StatusList2021Credential`."""

    issuer: str
    entries: bytes

    def revoked(self, index: int) -> bool:
        """Whether entry `index` is revoked; an index outside the list is an error."""
        if not 0 <= index < len(self.entries):
            raise StatusListError(
                ERR_LIST_INDEX.format(length=len(self.entries), index=index)
            )
        value = self.entries[index]
        if value not in (0, REVOKED_BYTE):
            raise StatusListError(ERR_LIST_BYTE.format(index=index, value=value))
        return value == REVOKED_BYTE


def _issuer_of(value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("id")
    if not isinstance(value, str) or not value or len(value) > 200:
        raise StatusListError(ERR_LIST_ISSUER)
    return value


def decode_list(encoded: str, *, limit: int = MAX_LIST_BYTES) -> bytes:
    """base64 (standard or url-safe, padding optional) of gzip, bounded by `limit`."""
    if len(encoded) > 4 * limit:
        raise StatusListError(ERR_LIST_TOO_LARGE.format(limit=limit))
    text = encoded.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        compressed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise StatusListError(ERR_LIST_BASE64) from None
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(compressed, limit + 1)
    except zlib.error:
        raise StatusListError(ERR_LIST_GZIP) from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise StatusListError(ERR_LIST_TOO_LARGE.format(limit=limit))
    if not inflater.eof:
        raise StatusListError(ERR_LIST_GZIP)
    return data


def encode_list(entries: bytes) -> str:
    """base64(gzip(entries)): what the hub writes (the stand-in and tests use it)."""
    import gzip

    return base64.b64encode(gzip.compress(bytes(entries), mtime=0)).decode("ascii")


def parse_status_list(document: Any, *, limit: int = MAX_LIST_BYTES) -> StatusList:
    """Decode the hub's 200 answer. The issuer is read, not yet trusted.

    The caller checks the issuer against the role's revokers; the list's proof is
    not verified here (see the README: the list is taken from the configured hub).
    """
    if not isinstance(document, Mapping):
        raise StatusListError(ERR_LIST_NOT_OBJECT)
    types = document.get("type")
    if not (types == LIST_TYPE or (isinstance(types, list) and LIST_TYPE in types)):
        raise StatusListError(ERR_LIST_TYPE)
    subject = document.get("credentialSubject")
    if not isinstance(subject, Mapping):
        raise StatusListError(ERR_LIST_ENCODED)
    purpose = subject.get("statusPurpose", "revocation")
    if purpose != "revocation":
        raise StatusListError(ERR_LIST_PURPOSE.format(purpose=purpose))
    encoded = subject.get("encodedList")
    if not isinstance(encoded, str):
        raise StatusListError(ERR_LIST_ENCODED)
    issuer = _issuer_of(document.get("issuer"))
    return StatusList(issuer=issuer, entries=decode_list(encoded, limit=limit))


def role_revokers(definition: Mapping[str, Any] | None) -> tuple[str, tuple[str, ...]]:
    """(revoker type, DIDs) of a role definition, as a revocation is checked.

    `definition.revoker` (`{"revokerType": "DID", "did": [...]}` or `"ROLE"` with
    `roleName`) when the role has one; otherwise the issuers, who are the
    revokers of roles defined before revokers existed.
    """
    definition = definition or {}
    spec = definition.get("revoker")
    kind_key, list_key = "revokerType", "did"
    if not isinstance(spec, Mapping) or not spec:
        spec = definition.get("issuer")
        kind_key = "issuerType"
    if not isinstance(spec, Mapping):
        return "", ()
    kind = str(spec.get(kind_key) or "").upper()
    dids = spec.get(list_key)
    listed = (
        tuple(d for d in dids if isinstance(d, str)) if isinstance(dids, list) else ()
    )
    return kind, listed


def namehash(name: str) -> bytes:
    """ENS namehash of a role namespace: the registry's `bytes32 role`."""
    node = b"\x00" * 32
    if name:
        for label in reversed(name.split(".")):
            node = keccak256(node + keccak256(label.encode("utf-8")))
    return node
