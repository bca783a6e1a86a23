"""Sign-In with Ethereum (EIP-4361) messages, built and parsed by hand.

Newer cache servers (SSI Hub) log an account in with SIWE instead of, or beside, the
identity token (protocol.md §4). The `siwe` PyPI package pins old web3/eth-account
releases, so the small subset evops needs lives here: build the exact text the
reference `siwe` JS library prepares, parse it back (the cache-server stand-in does),
and sign / recover with EIP-191 `personal_sign` over the UTF-8 message.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.address import to_checksum_address

from evops.protocol.signer import Signer

ERR_MALFORMED = "SIWE message is malformed"
ERR_SIGNATURE = "SIWE signature does not recover the message's address"
ERR_EXPIRED = "SIWE message has expired"
ERR_NOT_YET_VALID = "SIWE message is not yet valid"

_HEADER_SUFFIX = " wants you to sign in with your Ethereum account:"
_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}\Z")
_NONCE_RE = re.compile(r"[A-Za-z0-9]{8,}\Z")
_NONCE_ALPHABET = string.ascii_letters + string.digits


class SiweError(ValueError):
    """A SIWE message cannot be parsed or does not verify."""


def generate_nonce(length: int = 17) -> str:
    """A random alphanumeric nonce, as `siwe.generateNonce()` (17 characters)."""
    return "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(length))


def format_time(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and `Z`, as JS `Date.toISOString()`."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (the EIP-4361 `date-time`); aware result."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SiweError(ERR_MALFORMED) from None
    if value.tzinfo is None:
        raise SiweError(ERR_MALFORMED)
    return value


@dataclass(frozen=True)
class SiweMessage:
    """The fields of an EIP-4361 message; `prepare()` gives the text to sign."""

    domain: str
    address: str
    uri: str
    chain_id: int
    nonce: str
    issued_at: str
    version: str = "1"
    statement: str | None = None
    expiration_time: str | None = None
    not_before: str | None = None
    request_id: str | None = None
    resources: tuple[str, ...] = field(default_factory=tuple)
    scheme: str | None = None

    def prepare(self) -> str:
        """The exact message text, as `SiweMessage.prepareMessage()` of siwe 2.x.

        Without a statement the text keeps the empty statement line pair, so the
        address is followed by three newlines before `URI:` (EIP-4361 ABNF).
        """
        header = (f"{self.scheme}://" if self.scheme else "") + self.domain
        prefix = f"{header}{_HEADER_SUFFIX}\n{self.address}\n\n"
        if self.statement:
            prefix += f"{self.statement}\n"
        lines = [
            f"URI: {self.uri}",
            f"Version: {self.version}",
            f"Chain ID: {self.chain_id}",
            f"Nonce: {self.nonce}",
            f"Issued At: {self.issued_at}",
        ]
        if self.expiration_time:
            lines.append(f"Expiration Time: {self.expiration_time}")
        if self.not_before:
            lines.append(f"Not Before: {self.not_before}")
        if self.request_id is not None:
            lines.append(f"Request ID: {self.request_id}")
        if self.resources:
            lines.append("Resources:")
            lines.extend(f"- {resource}" for resource in self.resources)
        return prefix + "\n" + "\n".join(lines)

    @classmethod
    def parse(cls, text: str) -> SiweMessage:
        """Parse the text form (strictly: the line layout of EIP-4361)."""
        if not isinstance(text, str):
            raise SiweError(ERR_MALFORMED)
        lines = text.split("\n")
        if len(lines) < 8 or not lines[0].endswith(_HEADER_SUFFIX):
            raise SiweError(ERR_MALFORMED)
        origin = lines[0][: -len(_HEADER_SUFFIX)]
        scheme, sep, domain = origin.partition("://")
        if not sep:
            scheme, domain = "", origin
        address = lines[1]
        if not domain or not _ADDRESS_RE.match(address) or lines[2] != "":
            raise SiweError(ERR_MALFORMED)
        index = 3
        statement: str | None = None
        if lines[index] != "":
            statement = lines[index]
            index += 1
        if lines[index] != "":
            raise SiweError(ERR_MALFORMED)
        index += 1
        values: dict[str, str] = {}
        resources: list[str] = []
        order = [
            "URI",
            "Version",
            "Chain ID",
            "Nonce",
            "Issued At",
            "Expiration Time",
            "Not Before",
            "Request ID",
        ]
        position = 0
        while index < len(lines):
            line = lines[index]
            index += 1
            if line == "Resources:":
                resources = [item[2:] for item in lines[index:]]
                if not all(item.startswith("- ") for item in lines[index:]):
                    raise SiweError(ERR_MALFORMED)
                break
            tag, sep, value = line.partition(": ")
            if not sep or tag not in order[position:]:
                raise SiweError(ERR_MALFORMED)
            position = order.index(tag) + 1
            values[tag] = value
        for required in ("URI", "Version", "Chain ID", "Nonce", "Issued At"):
            if required not in values:
                raise SiweError(ERR_MALFORMED)
        if values["Version"] != "1" or not _NONCE_RE.match(values["Nonce"]):
            raise SiweError(ERR_MALFORMED)
        try:
            chain_id = int(values["Chain ID"])
        except ValueError:
            raise SiweError(ERR_MALFORMED) from None
        for tag in ("Issued At", "Expiration Time", "Not Before"):
            if tag in values:
                parse_time(values[tag])
        return cls(
            domain=domain,
            address=address,
            uri=values["URI"],
            chain_id=chain_id,
            nonce=values["Nonce"],
            issued_at=values["Issued At"],
            version=values["Version"],
            statement=statement,
            expiration_time=values.get("Expiration Time"),
            not_before=values.get("Not Before"),
            request_id=values.get("Request ID"),
            resources=tuple(resources),
            scheme=scheme or None,
        )


def sign_message(signer: Signer, message: SiweMessage) -> str:
    """`personal_sign` of the prepared text; `0x` + 130 hex digits."""
    signature = signer.sign_message(message.prepare().encode("utf-8"))
    return "0x" + signature.hex()


def recover_address(text: str, signature: str) -> str:
    """The EIP-55 address that signed `text` (EIP-191), or `SiweError`."""
    try:
        raw = bytes.fromhex(signature.removeprefix("0x"))
        if len(raw) != 65:
            raise ValueError
        recovered: str = Account.recover_message(
            encode_defunct(text=text), signature=raw
        )
    except Exception:
        raise SiweError(ERR_SIGNATURE) from None
    return to_checksum_address(recovered)


def verify(text: str, signature: str, *, now: datetime | None = None) -> SiweMessage:
    """Parse `text`, check its time window and that `signature` recovers its address.

    What `SiweMessage.verify({signature})` of the reference library checks; nonce,
    domain and URI policy are the caller's (the server's) business.
    """
    message = SiweMessage.parse(text)
    moment = now or datetime.now(UTC)
    if message.expiration_time and parse_time(message.expiration_time) <= moment:
        raise SiweError(ERR_EXPIRED)
    if message.not_before and parse_time(message.not_before) > moment:
        raise SiweError(ERR_NOT_YET_VALID)
    if recover_address(text, signature) != to_checksum_address(message.address):
        raise SiweError(ERR_SIGNATURE)
    return message
