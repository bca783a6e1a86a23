"""Where a published credential's revocation is read: the hub's status lists and
the on-chain `ClaimsRevocationRegistry`.

- `StatusListClient`: `GET <hub>/v1/status-list/<credentialId>` (public, no login):
  204 = not revoked, 200 = the signed `StatusList2021Credential`. The request goes
  to the configured hub whatever host the token's URL names (a token is the issuer's
  text; evops does not fetch arbitrary URLs for it). The answer is read with the
  hostile-peer limits (size, one overall deadline) and decoded by
  `evops.protocol.status_list`.
- `RevocationRegistry`: `isRevoked(bytes32 namehash(role), address subject)` and
  `getRevocationDetail(...) -> (revoker, block)` of `@energyweb/onchain-claims`
  2.2.0, hand-encoded and called through the chain client's `eth_call`.

Every failure is a `RevocationCheckError`: `permanent=False` when the peer could not
be reached or answered oddly (a later sweep asks again), `permanent=True` when the
answer is well-formed but unusable (staff must look). Neither ever means "revoked":
nothing is removed on a guess.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

import aiohttp
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.address import to_checksum_address

from evops.integrations.http import BodyTooLarge, read_limited
from evops.protocol._crypto import keccak256
from evops.protocol.status_list import (
    MAX_LIST_BYTES,
    StatusList,
    StatusListError,
    namehash,
    parse_status_list,
)

ERR_UNREACHABLE = "status list unreachable"
ERR_TIMEOUT = "status list: no complete answer within {timeout:g} s"
ERR_STATUS = "status list answered HTTP {status}"
ERR_TOO_LARGE = "status list answer larger than {limit} bytes"
ERR_NOT_JSON = "status list answer is not JSON"
ERR_REGISTRY_UNREACHABLE = "revocation registry unreachable"
ERR_REGISTRY_ANSWER = "revocation registry answer does not decode"
ERR_REGISTRY_MISSING = "no contract answers at the revocation registry address"

IS_REVOKED_SELECTOR = keccak256(b"isRevoked(bytes32,address)")[:4]
REVOCATION_DETAIL_SELECTOR = keccak256(b"getRevocationDetail(bytes32,address)")[:4]

# Where Energy Web deployed the registry (for operators; the setting names it).
VOLTA_REVOCATION_REGISTRY = "0x9876d992D124f8E05e3eB35132226a819aaC840A"
EWC_REVOCATION_REGISTRY = "0xd72B4c8D5B1a1A4C7085259548bDF1A175CFc48D"


class RevocationCheckError(Exception):
    """A revocation source could not give an answer; never read as 'revoked'."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class StatusListClient:
    """Reads status lists from the hub at `base_url` (without `/v1`)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        max_response_bytes: int = 4 * MAX_LIST_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=True
            )
            self._loop = loop
        return self._session

    def url_for(self, credential_id: str) -> str:
        return f"{self.base_url}/v1/status-list/{quote(credential_id, safe='')}"

    async def fetch(self, credential_id: str) -> StatusList | None:
        """The decoded list, or None for 204 (the credential is not revoked)."""
        url = self.url_for(credential_id)
        try:
            async with asyncio.timeout(self.timeout):
                async with self._client().get(
                    url, allow_redirects=False, headers={"Accept": "application/json"}
                ) as response:
                    status = response.status
                    if status == 204:
                        return None
                    if status != 200:
                        raise RevocationCheckError(ERR_STATUS.format(status=status))
                    body = await read_limited(response, self.max_response_bytes)
        except TimeoutError:
            raise RevocationCheckError(
                ERR_TIMEOUT.format(timeout=self.timeout)
            ) from None
        except BodyTooLarge:
            raise RevocationCheckError(
                ERR_TOO_LARGE.format(limit=self.max_response_bytes)
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise RevocationCheckError(
                f"{ERR_UNREACHABLE}: {type(exc).__name__}"
            ) from None
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise RevocationCheckError(ERR_NOT_JSON) from None
        try:
            return parse_status_list(document)
        except StatusListError as exc:
            raise RevocationCheckError(str(exc), permanent=True) from None

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


class ContractCaller(Protocol):
    async def call(self, to: str, data: bytes, block: str = "latest") -> bytes: ...


@dataclass(frozen=True)
class Revocation:
    revoker: str
    block: int


class RevocationRegistry:
    """The on-chain `ClaimsRevocationRegistry` at `address`, read through `chain`."""

    def __init__(self, chain: ContractCaller, address: str) -> None:
        self.chain = chain
        self.address = to_checksum_address(address)

    def _calldata(self, selector: bytes, role: str, subject: str) -> bytes:
        return selector + abi_encode(
            ["bytes32", "address"], [namehash(role), to_checksum_address(subject)]
        )

    async def _call(self, data: bytes) -> bytes:
        try:
            return await self.chain.call(self.address, data)
        except Exception as exc:
            permanent = bool(getattr(exc, "permanent", False))
            raise RevocationCheckError(
                f"{ERR_REGISTRY_UNREACHABLE}: {exc}", permanent=permanent
            ) from None

    async def revocation(self, role: str, subject: str) -> Revocation | None:
        """Who revoked `role` for `subject` and in which block; None if not revoked."""
        answer = await self._call(self._calldata(IS_REVOKED_SELECTOR, role, subject))
        if not answer:
            raise RevocationCheckError(ERR_REGISTRY_MISSING, permanent=True)
        try:
            (revoked,) = abi_decode(["bool"], answer)
        except Exception:
            raise RevocationCheckError(ERR_REGISTRY_ANSWER) from None
        if not revoked:
            return None
        detail = await self._call(
            self._calldata(REVOCATION_DETAIL_SELECTOR, role, subject)
        )
        try:
            revoker, block = abi_decode(["address", "uint256"], detail)
        except Exception:
            raise RevocationCheckError(ERR_REGISTRY_ANSWER) from None
        return Revocation(revoker=to_checksum_address(revoker), block=int(block))


def revocation_storage_slots(role: str, subject: str) -> tuple[int, int]:
    """The storage slots of `revokedClaims[namehash(role)][subject]` (revoker,
    revokedTimestamp): mapping at slot 0, as solc 0.8.6 lays it out. For tests and
    the sandbox, which mark a claim revoked with `anvil_setStorageAt`."""
    inner = keccak256(namehash(role) + (0).to_bytes(32, "big"))
    address = bytes.fromhex(to_checksum_address(subject)[2:]).rjust(32, b"\x00")
    slot = int.from_bytes(keccak256(address + inner), "big")
    return slot, slot + 1
