"""Content identifiers (CIDs) that a credential store hands back (protocol.md §6).

The CID a store returns is written into the asset's DID document on chain, for every
reader to fetch; a store that answers garbage (an error page, a path, a CID with
a trailing newline) must not get it there. Parsing is py-cid's (the multiformats
reference implementation for Python), so "valid" means what IPFS and the cache
server's store mean by it: CIDv0 (`Qm…`, base58btc) or CIDv1 in any multibase.
"""

from __future__ import annotations

import hashlib
from typing import Any

import cid as _cid

from evops.protocol.errors import EncodingError

# Longer than any real CID (a CIDv1 with a sha2-512 digest in base16 is ~140
# characters); refusing early keeps a hostile answer from reaching the decoder.
MAX_CID_LENGTH = 200

ERR_CID_NOT_STR = "CID must be a string"
ERR_CID_LENGTH = "CID is empty or longer than the limit"
ERR_CID_CHARS = "CID contains characters no multibase encoding uses"
ERR_CID_INVALID = "not a valid CID"


class CIDError(EncodingError):
    """A string is not a CID (v0 or v1) as the stores and IPFS define it."""


def validate_cid(text: Any) -> str:
    """Return `text` unchanged if it is a valid CIDv0 or CIDv1, else raise `CIDError`.

    The exact string is kept (no re-encoding): the cache server and IPFS look the
    content up by the string the store gave, so evops writes that string on chain.
    """
    if not isinstance(text, str):
        raise CIDError(ERR_CID_NOT_STR)
    if not text or len(text) > MAX_CID_LENGTH:
        raise CIDError(ERR_CID_LENGTH)
    # Every multibase alphabet a store uses (base58btc, base32, base36, base16,
    # unpadded base64url) is letters, digits, `-` and `_`: whitespace, paths, NULs
    # and quotes are refused before the decoder sees them.
    if not text.isascii() or not all(c.isalnum() or c in "-_" for c in text):
        raise CIDError(ERR_CID_CHARS)
    try:
        valid = _cid.is_cid(text)
    except Exception:  # a decoder error on hostile input means "invalid"
        valid = False
    if not valid:
        raise CIDError(f"{ERR_CID_INVALID}: {text[:80]!r}")
    return text


def sha256_hex(content: str) -> str:
    """Lowercase hex sha256 of `content`'s UTF-8 bytes (the service entry's `hash`)."""
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


# The size of the chunks IPFS cuts a file into when adding it (kubo and js-ipfs:
# `size-262144`); content up to one chunk is one block.
IPFS_CHUNK_BYTES = 262_144
# The multihash prefix of a sha2-256 digest: the code 0x12, the length 32.
_SHA2_256 = b"\x12\x20"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def ipfs_file_cid(content: bytes, cid_version: int) -> str | None:
    """The CID an IPFS node's `add` gives `content` with its default settings (the
    sha2-256 hash, chunks of 256 KiB; CIDv1 with raw leaves, in base32), or None
    when this cannot say (empty or larger than one chunk: the node decides).

    CIDv0: the dag-pb node of one UnixFS file block, `PBNode{Data: UnixFS{Type:
    File, Data: content, filesize}}`, hashed. CIDv1: the raw block itself. The
    tests pin both to a real node's answers. The protobuf is written here: three
    fields, no library for UnixFS writing is kept up for Python.
    """
    if not content or len(content) > IPFS_CHUNK_BYTES:
        return None
    if cid_version == 1:
        digest = _SHA2_256 + hashlib.sha256(content).digest()
        encoded: bytes = _cid.make_cid(1, "raw", digest).encode("base32")
        return encoded.decode("ascii")
    if cid_version != 0:
        return None
    size = _varint(len(content))
    unixfs = b"\x08\x02" + b"\x12" + size + content + b"\x18" + size
    node = b"\x0a" + _varint(len(unixfs)) + unixfs
    digest = _SHA2_256 + hashlib.sha256(node).digest()
    return str(_cid.make_cid(0, "dag-pb", digest))
