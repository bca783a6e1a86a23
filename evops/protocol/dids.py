"""`did:ethr` identifiers (protocol.md §2).

The cache server, its login check, its SQL lookups and the verifiers compare DIDs as
strings, so evops always emits one canonical form, `did:ethr:<chain>:<EIP-55 address>`,
while accepting every form the peers send: `did:ethr:0x..` (older messages),
`did:ethr:volta:0x..`, `did:ethr:ewc:0x..`, `did:ethr:0x<chain id hex>:0x..`
(ethr-did-resolver's multi-network form), with the address in any case.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from evops.protocol._crypto import checksum
from evops.protocol.errors import DIDError

VOLTA = "volta"
EWC = "ewc"

ERR_NOT_A_STRING = "DID must be a string"
ERR_NOT_ETHR = "DID must start with 'did:ethr:'"
ERR_SHAPE = "DID must be did:ethr:[<chain>:]0x<40 hex digits>"
ERR_ADDRESS = "address must be 0x followed by 40 hex digits"
ERR_CHECKSUM = "mixed-case address has a bad EIP-55 checksum"
ERR_UNKNOWN_CHAIN = "unknown chain"
ERR_UNKNOWN_CHAIN_ID = "unknown chain id"
ERR_CHAIN_NAME = "chain name must be lowercase letters, digits, '-' or '_'"

_MAX_DID_LENGTH = 200
_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}\Z")
_CHAIN_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")
_CHAIN_ID_RE = re.compile(r"0x[0-9a-fA-F]{1,16}\Z")

_CHAIN_IDS: dict[str, int] = {VOLTA: 73799, EWC: 246}
_CHAIN_NAMES: dict[int, str] = {73799: VOLTA, 246: EWC}


def register_chain(name: str, chain_id: int) -> None:
    """Make `did:ethr:<name>:` (and chain id `chain_id`) acceptable.

    Mirrors the network configuration of ethr-did-resolver / iam-client-lib, where
    each deployment lists the networks it resolves. Re-registering the same pair is a
    no-op; the first name registered for a chain id stays its canonical name (a local
    anvil on 73799 is "volta").
    """
    if not isinstance(name, str) or not _CHAIN_NAME_RE.match(name):
        raise ValueError(ERR_CHAIN_NAME)
    if name.startswith("0x"):
        raise ValueError(ERR_CHAIN_NAME)
    if isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id <= 0:
        raise ValueError("chain id must be a positive integer")
    known = _CHAIN_IDS.get(name)
    if known is not None and known != chain_id:
        raise ValueError(f"chain {name!r} is already registered as {known}")
    _CHAIN_IDS[name] = chain_id
    _CHAIN_NAMES.setdefault(chain_id, name)


def chain_id_for(name: str) -> int:
    """The EVM chain id of a DID chain name (volta 73799, ewc 246).

    Mirrors the network table of ethr-did-resolver / iam-client-lib; unknown names
    raise `DIDError`.
    """
    try:
        return _CHAIN_IDS[name]
    except (KeyError, TypeError):
        raise DIDError(f"{ERR_UNKNOWN_CHAIN}: {str(name)[:40]!r}") from None


def chain_name_for(chain_id: int) -> str:
    """The canonical DID chain name of an EVM chain id (73799 volta, 246 ewc).

    Mirrors ethr-did-resolver's `did:ethr:0x<chain id hex>:` form, which names the
    same network as its registered name.
    """
    try:
        return _CHAIN_NAMES[chain_id]
    except (KeyError, TypeError):
        raise DIDError(f"{ERR_UNKNOWN_CHAIN_ID}: {chain_id!r}") from None


def normalize_address(address: str) -> str:
    """Return the EIP-55 form of `address`, accepting any single case.

    Mirrors ethers' `getAddress`: all-lowercase and all-uppercase hex are accepted
    as is, a mixed-case address must carry a valid checksum (a typo is caught rather
    than silently turned into another account).
    """
    if not isinstance(address, str):
        raise DIDError(ERR_ADDRESS)
    return _normalize_address(address)


# EIP-55 checksumming (keccak of the address) is the costliest step of parsing a DID
# and the pipeline parses the same few DIDs again and again (the subject, the
# payload, the tokens, the asset): results of these pure functions are cached.
# Errors are not cached (lru_cache keeps return values only).
_CACHE_SIZE = 8192


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _normalize_address(address: str) -> str:
    if not _ADDRESS_RE.match(address):
        raise DIDError(ERR_ADDRESS)
    hexpart = address[2:]
    checksummed = checksum(bytes.fromhex(hexpart))
    mixed = hexpart not in (hexpart.lower(), hexpart.upper())
    if mixed and checksummed != address:
        raise DIDError(ERR_CHECKSUM)
    return checksummed


@dataclass(frozen=True)
class DID:
    """A `did:ethr` identity: an EIP-55 address on a named chain.

    Construct with `DID.parse` or `DID.for_address`; direct construction validates
    too, so a `DID` value is always canonical and two DIDs compare equal exactly when
    the peers would consider their strings equal.
    """

    address: str
    chain: str = VOLTA

    def __post_init__(self) -> None:
        if not isinstance(self.address, str) or not _ADDRESS_RE.match(self.address):
            raise DIDError(ERR_ADDRESS)
        if normalize_address(self.address) != self.address:
            raise DIDError("DID address must be EIP-55 checksummed; use DID.parse")
        chain_id_for(self.chain)

    @classmethod
    def parse(cls, text: str, *, default_chain: str = VOLTA) -> DID:
        """Parse any DID form the peers send (see module docstring).

        Mirrors the cache server and iam-client-lib, which accept the legacy
        `did:ethr:0x..` form and treat it as the deployment's chain; `default_chain`
        is that chain.
        """
        if not isinstance(text, str):
            raise DIDError(ERR_NOT_A_STRING)
        if cls is DID and isinstance(default_chain, str):
            return _parse(text, default_chain)
        return cls._parse_uncached(text, default_chain)

    @classmethod
    def _parse_uncached(cls, text: str, default_chain: str) -> DID:
        if len(text) > _MAX_DID_LENGTH:
            raise DIDError(ERR_SHAPE)
        if not text.startswith("did:ethr:"):
            raise DIDError(ERR_NOT_ETHR)
        parts = text[len("did:ethr:") :].split(":")
        if len(parts) == 1:
            chain = default_chain
            chain_id_for(chain)
        elif len(parts) == 2:
            network = parts[0]
            if _CHAIN_ID_RE.match(network):
                chain = chain_name_for(int(network, 16))
            elif _CHAIN_NAME_RE.match(network):
                chain_id_for(network)
                chain = network
            else:
                raise DIDError(ERR_SHAPE)
        else:
            raise DIDError(ERR_SHAPE)
        return cls(normalize_address(parts[-1]), chain)

    @classmethod
    def for_address(cls, address: str, chain: str = VOLTA) -> DID:
        """The DID of an account address (any case) on `chain`.

        Mirrors iam-client-lib, which builds `did:ethr:<chain>:<getAddress(a)>`.
        """
        return cls(normalize_address(address), chain)

    @classmethod
    def coerce(cls, value: DID | str, *, default_chain: str = VOLTA) -> DID:
        """Accept a `DID` or any string form; convenience for API boundaries.

        Strings are parsed as `parse` does (the peers' accepted forms).
        """
        if isinstance(value, DID):
            return value
        return cls.parse(value, default_chain=default_chain)

    @property
    def canonical(self) -> str:
        """`did:ethr:<chain>:<EIP-55 address>`, the only form evops emits."""
        return f"did:ethr:{self.chain}:{self.address}"

    @property
    def chain_id(self) -> int:
        """The EVM chain id of this DID's chain."""
        return chain_id_for(self.chain)

    def same_identity(self, other: DID) -> bool:
        """True when both DIDs name the same account, whatever the chain label.

        Mirrors the registry, which knows addresses only: one key controls the
        identity on every chain, while the cache server compares full DID strings.
        """
        return self.address == other.address

    def __str__(self) -> str:
        return self.canonical


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parse(text: str, default_chain: str) -> DID:
    # A DID is frozen, so one parsed value can be shared by every caller.
    return DID._parse_uncached(text, default_chain)
