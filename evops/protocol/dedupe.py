"""The duplicate key of an inbound message, computed from what it means.

A key over the raw bytes lets a publisher defeat the duplicate window with a space,
a reordered key or another spelling of the DID, and each copy of a prequalification
request costs a login and a claim request in the asset's name. The key here is built
from the parsed, canonical fields instead: the message kind, the DID in canonical
checksummed form, and the claim id.

The claim id is kept exactly as sent. Folding its case or spacing would let a
variant that names no claim at the hub (looked up, refused) make the genuine notice
that follows count as its duplicate; the pipeline looks claims up by the exact id,
so the key must distinguish exactly what the lookup distinguishes. The DID is
normalised because the pipeline acts on the canonical DID too.
"""

from __future__ import annotations

import hashlib

from evops.protocol.dids import DID, VOLTA

# Bumped if the key's recipe changes, so old and new keys never collide.
_VERSION = b"evops-dedupe/1"


def message_key(
    kind: str, did: DID | str, claim_id: str = "", *, default_chain: str = VOLTA
) -> str:
    """Hex sha256 of (kind, canonical DID, claim id): one key per meaning.

    `kind` is the parsed message type (prequalification, issue-credential,
    reject-credential, request-credential); a legacy full-claim message and a
    notice of the same type about the same claim share a key. A prequalification
    request has no claim id, so all requests for one asset share a key: at most
    one is in flight per window. Raises `DIDError` for a malformed DID string.
    """
    canonical = DID.coerce(did, default_chain=default_chain).canonical
    parts = (
        _VERSION,
        kind.encode("utf-8"),
        canonical.encode(),
        claim_id.encode("utf-8"),
    )
    # Length-prefixed, so no choice of fields can make two tuples encode alike.
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return digest.hexdigest()
