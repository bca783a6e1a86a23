"""The ERC-1056 DID registry on an EVM chain, through web3.py's async HTTP provider.

One `Chain` object per process talks to one RPC endpoint. It writes service attributes
into an asset's DID document in one of two modes and reads the registry back for the
protocol core's resolver (`protocol.md` §7-§8).

- `asset` mode: the asset signs `setAttribute` and pays the gas, as the original did.
- `relay` mode: the asset signs the `setAttributeSigned` digest (it needs no funds) and
  the operator account sends it and pays.

Every failure surfaces as `ChainError` whose `permanent` flag tells the caller whether a
retry can help: a revert, `status 0` or missing funds will not fix themselves; an
unreachable RPC, a timeout or a base fee above the cap will.

Ordering rules this module enforces (not the caller):

- Nonces of a sending account are allocated locally under a per-account lock held only
  for the `eth_sendRawTransaction` call, so concurrent publications through one operator
  never collide, and a send that fails does not consume its nonce (no gap that stalls
  the account). "nonce too low", a duplicate in the pool and a dropped transaction
  resynchronise from the node's pending count.
- Per identity at most one DID-document change is in flight (a per-identity lock held
  until the receipt), and never two changes for one identity in one block: the reference
  reader only reads the first log of each block.

JSON-RPC is encoded and decoded by web3's `AsyncHTTPProvider` but sent here, on the
provider's pooled aiohttp session: web3's method formatters and middleware cost about
a millisecond of CPU per call, which made them, not the chain, the limit of the relay
benchmark (`bench/chain.py`); and web3 reads a whole answer into memory, where this
module reads at most `max_response_bytes` within `request_timeout` in all (a node that
floods or drips is cut off with a transient error). Calls that many publications make
at the same moment (a burst: reads, sends, receipt polls) go out as one JSON-RPC batch
of at most `max_batch` calls (`CHAIN_RPC_BATCH`), each caller getting its own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, cast

import aiohttp
from eth_utils.address import to_checksum_address as _to_checksum_address
from eth_utils.crypto import keccak
from tenacity import RetryCallState
from web3 import AsyncWeb3
from web3.exceptions import TimeExhausted, Web3Exception, Web3RPCError
from web3.providers.rpc import AsyncHTTPProvider
from web3.providers.rpc.utils import ExceptionRetryConfiguration
from web3.types import RPCEndpoint

from evops.integrations.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    BodyTooLarge,
    read_limited,
)
from evops.integrations.registry import REGISTRY_ADDRESSES
from evops.integrations.retry import DEFAULT_RETRY, RetryPolicy
from evops.protocol import erc1056
from evops.protocol.dids import DID
from evops.protocol.resolver import (
    RegistryHistoryCache,
    resolve_did_document_async,
    resolve_did_documents_async,
)

if TYPE_CHECKING:
    from evops.protocol.signer import Signer

logger = logging.getLogger(__name__)

Mode = Literal["asset", "relay"]
MODES: tuple[Mode, ...] = ("asset", "relay")

DEFAULT_GAS_MARGIN = 0.25
# Calls per JSON-RPC batch (`Chain._raw`); public RPC providers take 50-100.
DEFAULT_MAX_BATCH = 50
# Fixed gas added on top of the proportional margin: the gas trap (test-stack.md) is a
# constant ~631 gas, which a small proportional margin on a cheap call may not cover.
GAS_MARGIN_FLOOR = 2_000

# Error messages (tests assert on these; the reason string carries them first).
RPC_UNREACHABLE = "chain RPC unreachable"
RPC_TIMEOUT = "chain RPC timed out"
RPC_ERROR = "chain RPC returned an error"
RPC_TOO_LARGE = "chain RPC sent an answer larger than the limit"
RPC_BAD_ANSWER = "chain RPC sent an answer that is not JSON-RPC"
REVERTED = "transaction reverted"
REVERTED_ON_CHAIN = "transaction mined with status 0"
OUT_OF_GAS = "transaction ran out of gas"
INSUFFICIENT_FUNDS = "insufficient funds for gas"
FEE_ABOVE_CAP = "network fee is above the configured cap"
RECEIPT_TIMEOUT = "no receipt before the timeout"
PREVIOUS_PENDING = "a previous change for this identity is still pending"
TX_REPLACED = "the transaction's nonce was used by another transaction"
TX_DROPPED = "the transaction was dropped by the node repeatedly"
NONCE_RETRIES_EXHAUSTED = "could not get a nonce accepted"
CHAIN_ID_MISMATCH = "the RPC endpoint serves another chain"
NO_OPERATOR = "relay mode needs an operator signer"
NOT_OWNER = "the signer is not the identity's owner"
NO_REGISTRY = "no contract answers at the registry address"

_CHANGED = keccak(b"changed(address)")[:4]
_NONCE = keccak(b"nonce(address)")[:4]
_IDENTITY_OWNER = keccak(b"identityOwner(address)")[:4]
_TRANSPORT_ERRORS = (Web3Exception, aiohttp.ClientError, OSError, TimeoutError)
# Consecutive "unknown transaction" answers before a sent transaction counts as dropped;
# a load-balanced RPC can briefly answer from a node that has not seen it yet.
_DROP_OBSERVATIONS = 3


class ChainError(Exception):
    """A chain operation failed; `permanent` says whether retrying can help."""

    def __init__(
        self, reason: str, *, permanent: bool, tx_hash: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.tx_hash = tx_hash

    def __repr__(self) -> str:
        return (
            f"ChainError({self.reason!r}, permanent={self.permanent}, "
            f"tx_hash={self.tx_hash!r})"
        )


@dataclass(frozen=True)
class PublishResult:
    """A mined, successful DID-document write."""

    tx_hash: str
    block_number: int
    gas_used: int
    mode: str


@dataclass
class _InFlight:
    """A sent change whose outcome we did not learn (receipt timeout, RPC loss)."""

    tx_hash: str
    name: bytes
    value: bytes
    # "set" (setAttribute) or "revoke" (revokeAttribute): a lost revoke must never
    # pass for a lost publication of the same bytes, nor the other way round.
    kind: str = "set"


@dataclass(frozen=True)
class _Head:
    """What the latest block says about fees, fetched once per poll interval."""

    number: int
    base_fee: int | None
    priority_fee: int
    gas_price: int


class _NonceRejected(Exception):
    """The node refused our nonce (used elsewhere): resync and sign again."""


class _Dropped(Exception):
    """The node forgot a transaction that never got mined: send it again."""


class _Account:
    """Local nonce bookkeeping for one sending account."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.next_nonce: int | None = None


def _classify_rpc_error(exc: BaseException) -> tuple[str, bool]:
    """Map a transport exception or JSON-RPC error to (reason, permanent)."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError | TimeExhausted):
        return RPC_TIMEOUT, False
    if isinstance(exc, aiohttp.ClientError | ConnectionError | OSError):
        return f"{RPC_UNREACHABLE}: {type(exc).__name__}", False
    if isinstance(exc, Web3RPCError):
        message = _rpc_message(exc)
        lowered = message.lower()
        if "insufficient funds" in lowered:
            return f"{INSUFFICIENT_FUNDS}: {message}", True
        if "revert" in lowered:
            return f"{REVERTED}: {message}", True
        if "intrinsic gas too low" in lowered or "exceeds block gas limit" in lowered:
            return f"{RPC_ERROR}: {message}", True
        return f"{RPC_ERROR}: {message}", False
    return f"{RPC_ERROR}: {type(exc).__name__}: {exc}", False


def _rpc_message(exc: Web3RPCError) -> str:
    response = exc.rpc_response or {}
    error = response.get("error") if isinstance(response, Mapping) else None
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):
        return str(error["message"])
    return str(exc.message)


# The checksum is a keccak per call, and the same few addresses (each asset's, the
# registry's) come back on every call of a publication: computed once per address.
to_checksum_address = functools.lru_cache(maxsize=65536)(_to_checksum_address)


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()


def _quantity(value: Any) -> int:
    """A JSON-RPC quantity ("0x1a") as int."""
    return int(str(value), 16)


def _address_word(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(to_checksum_address(address)[2:])


class _BatchTooLarge(Exception):
    """A batch's answers together are larger than one answer may be."""


@dataclass
class _Call:
    """One JSON-RPC call waiting to go out with the others (`Chain._raw`)."""

    method: str
    params: list[Any]
    tx_hash: str | None
    future: asyncio.Future[Mapping[str, Any]]

    @property
    def done(self) -> bool:
        return self.future.done()

    def settle(self, answer: Mapping[str, Any] | ChainError) -> None:
        if isinstance(answer, ChainError):
            self.fail(answer)
        elif not self.future.done():
            self.future.set_result(answer)

    def fail(self, exc: BaseException) -> None:
        if self.future.done():
            return
        if isinstance(exc, ChainError):
            # Each caller gets its own error (callers amend theirs), naming its
            # own transaction.
            own = ChainError(
                exc.reason, permanent=exc.permanent, tx_hash=exc.tx_hash or self.tx_hash
            )
            own.__cause__ = exc.__cause__
            exc = own
        if isinstance(exc, Exception):
            self.future.set_exception(exc)
        else:
            self.future.cancel()


def _word_address(word: str) -> str:
    """The address in a 32-byte word (hex), checksummed."""
    return to_checksum_address("0x" + word[-40:])


def _identity_word(address: str) -> bytes:
    """`_address_word` for an address taken from a parsed DID (already checked):
    no second checksum, which costs a keccak per identity of a batch."""
    raw = bytes.fromhex(address.removeprefix("0x"))
    if len(raw) != 20:
        raise ValueError(f"not an address: {address!r}")
    return bytes(12) + raw


def _decode_logs(entries: Any) -> list[erc1056.RegistryEvent]:
    """An `eth_getLogs` answer as registry events, in log order."""
    return [
        erc1056.decode_registry_log(
            [bytes.fromhex(t[2:]) for t in entry["topics"]],
            bytes.fromhex(entry["data"][2:]),
            _quantity(entry["blockNumber"]),
            _quantity(entry["logIndex"]),
        )
        for entry in sorted(entries, key=lambda e: _quantity(e["logIndex"]))
    ]


@dataclass(frozen=True)
class _Receipt:
    block_number: int
    gas_used: int
    status: int


class Chain:
    """Async access to the ERC-1056 registry on one chain.

    `operator` is the relay-mode sender (the caller owns its key storage). Fees are
    EIP-1559 capped at `max_fee_gwei`, legacy when the chain has no base fee. Gas is the
    node's estimate plus `gas_margin` (a fraction) plus a fixed floor. A publication
    returns once its receipt is `confirmations` blocks deep, or fails after
    `receipt_timeout` seconds. Every RPC call times out after `request_timeout`.
    """

    def __init__(
        self,
        rpc_url: str,
        *,
        chain_id: int,
        registry_address: str,
        mode: str = "asset",
        operator: Signer | None = None,
        max_fee_gwei: Decimal | float | int,
        confirmations: int = 0,
        receipt_timeout: float = 60.0,
        gas_margin: float = DEFAULT_GAS_MARGIN,
        request_timeout: float = 10.0,
        poll_interval: float = 0.25,
        max_connections: int = 50,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_batch: int = DEFAULT_MAX_BATCH,
        document_cache_size: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if mode == "relay" and operator is None:
            raise ValueError(NO_OPERATOR)
        if confirmations < 0 or receipt_timeout <= 0 or gas_margin < 0:
            raise ValueError("confirmations, receipt_timeout and gas_margin are >= 0")
        self.rpc_url = rpc_url
        self.chain_id = chain_id
        self.registry_address = to_checksum_address(registry_address)
        self.mode: Mode = cast(Mode, mode)
        self.operator = operator
        self.max_fee_wei = int(Decimal(str(max_fee_gwei)) * 10**9)
        self.confirmations = confirmations
        self.receipt_timeout = receipt_timeout
        self.gas_margin = gas_margin
        self.poll_interval = poll_interval
        self.request_timeout = request_timeout
        self.max_response_bytes = max_response_bytes
        self.max_batch = max(1, int(max_batch))
        # Registry histories for `resolve_documents` (reconciliation's reads).
        self.histories = RegistryHistoryCache(document_cache_size)
        self._retry = retry
        # Calls made while the event loop is busy, sent together (`_raw`).
        self._queue: list[_Call] = []
        self._sending: set[asyncio.Future[None]] = set()
        self._batches_refused = False
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = {}
        # No automatic retries inside web3: a dead RPC must become a transient
        # ChainError promptly, and the caller schedules the retry. The only
        # in-call retries (a rejected nonce, a dropped transaction) follow `retry`.
        self._provider = AsyncHTTPProvider(
            rpc_url,
            request_kwargs={"timeout": aiohttp.ClientTimeout(total=request_timeout)},
            exception_retry_configuration=ExceptionRetryConfiguration(
                errors=(), retries=1
            ),
        )
        self.w3 = AsyncWeb3(self._provider)
        self._max_connections = max_connections
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._accounts: dict[str, _Account] = {}
        self._identity_locks: dict[str, asyncio.Lock] = {}
        self._identity_users: dict[str, int] = {}
        self._inflight: dict[str, _InFlight] = {}
        self._chain_checked = False
        # The chain head, shared by every waiter for up to `poll_interval`, so that a
        # hundred publications in flight poll the node once, not a hundred times.
        self._head_cache: tuple[float, _Head] | None = None
        self._head_fetch: asyncio.Future[_Head] | None = None

    def __repr__(self) -> str:
        return (
            f"Chain({self.rpc_url!r}, chain_id={self.chain_id}, "
            f"registry={self.registry_address}, mode={self.mode!r})"
        )

    # --- plumbing --------------------------------------------------------------------

    async def _raw(
        self, method: str, params: list[Any], *, tx_hash: str | None = None
    ) -> Mapping[str, Any]:
        """One JSON-RPC call's answer; transport failures become transient ChainErrors.

        Calls made by many tasks while the event loop is busy (a burst of
        publications reads, sends and polls at the same moments) go to the node
        together as one JSON-RPC batch of at most `max_batch` calls: one HTTP
        exchange instead of one each. A lone call is sent as before; a node that
        refuses batches gets every call on its own from then on.
        """
        loop = asyncio.get_running_loop()
        if self._session_loop is not loop:
            await self._ensure_session()
        if self.max_batch == 1 or self._batches_refused:
            return await self._exchange(method, params, tx_hash=tx_hash)
        call = _Call(method, params, tx_hash, loop.create_future())
        self._queue.append(call)
        if len(self._queue) == 1:
            # After the tasks that are ready now had their turn to add theirs.
            loop.call_soon(self._flush)
        return await call.future

    def _flush(self) -> None:
        queued, self._queue = self._queue, []
        for start in range(0, len(queued), self.max_batch):
            batch = [c for c in queued[start : start + self.max_batch] if not c.done]
            if batch:
                task = asyncio.ensure_future(self._send_batch(batch))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    async def _send_batch(self, calls: list[_Call]) -> None:
        """Send `calls` (one exchange), and give each caller its own answer."""
        try:
            if len(calls) == 1:
                call = calls[0]
                call.settle(
                    await self._exchange(call.method, call.params, tx_hash=call.tx_hash)
                )
                return
            try:
                answers = await self._exchange_batch(calls)
            except _BatchTooLarge:
                # Their answers together pass the limit: each on its own, each with
                # the whole limit (memory stays bounded by one limit per exchange).
                await asyncio.gather(*(self._send_batch([c]) for c in calls))
                return
            if answers is None:
                # Refused as a batch: every call on its own, now and from now on.
                self._batches_refused = True
                logger.warning("the chain RPC refuses JSON-RPC batches")
                await asyncio.gather(*(self._send_batch([c]) for c in calls))
                return
            for call, answer in zip(calls, answers, strict=True):
                call.settle(answer)
        except BaseException as exc:
            for call in calls:
                call.fail(exc)
            if not isinstance(exc, Exception):
                raise

    async def _exchange_batch(
        self, calls: list[_Call]
    ) -> list[Mapping[str, Any] | ChainError] | None:
        """One HTTP exchange carrying `calls`; their answers in order (None: the node
        does not take batches). Limits as for one call: `request_timeout` for the
        exchange, `max_response_bytes` for the whole answer (`_BatchTooLarge` past it,
        and the calls go out one by one)."""
        body = json.dumps(
            [
                {"jsonrpc": "2.0", "method": c.method, "params": c.params, "id": i}
                for i, c in enumerate(calls)
            ],
            separators=(",", ":"),
        ).encode()
        methods = ",".join(sorted({c.method for c in calls}))
        try:
            raw = await self._post(body)
        except BodyTooLarge as exc:
            raise _BatchTooLarge(methods) from exc
        except _TRANSPORT_ERRORS as exc:
            reason, permanent = _classify_rpc_error(exc)
            raise ChainError(reason, permanent=permanent) from exc
        try:
            decoded = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ChainError(f"{RPC_BAD_ANSWER}: {methods}", permanent=False) from exc
        if isinstance(decoded, Mapping):
            return None
        by_id = {
            item.get("id"): item
            for item in (decoded if isinstance(decoded, list) else [])
            if isinstance(item, Mapping)
        }
        return [
            by_id.get(i)
            or ChainError(
                f"{RPC_BAD_ANSWER}: {c.method}", permanent=False, tx_hash=c.tx_hash
            )
            for i, c in enumerate(calls)
        ]

    async def _post(self, body: bytes) -> bytes:
        """POST one JSON-RPC body (a call or a batch): the answer's bytes, the whole
        exchange within `request_timeout`, at most `max_response_bytes` read
        (`BodyTooLarge` past it; transport errors as aiohttp raises them)."""
        assert self._session is not None
        async with (
            asyncio.timeout(self.request_timeout),
            self._session.post(
                self.rpc_url,
                data=body,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self.request_timeout),
            ) as answer,
        ):
            return await read_limited(answer, self.max_response_bytes)

    async def _exchange(
        self, method: str, params: list[Any], *, tx_hash: str | None = None
    ) -> Mapping[str, Any]:
        """One JSON-RPC exchange of one call.

        The whole exchange ends within `request_timeout` and reads at most
        `max_response_bytes`, whatever the node sends.
        """
        body = self._provider.encode_rpc_request(RPCEndpoint(method), params)
        try:
            raw = await self._post(body)
        except BodyTooLarge as exc:
            raise ChainError(
                f"{RPC_TOO_LARGE}: {method}: {exc}", permanent=False, tx_hash=tx_hash
            ) from exc
        except _TRANSPORT_ERRORS as exc:
            reason, permanent = _classify_rpc_error(exc)
            raise ChainError(reason, permanent=permanent, tx_hash=tx_hash) from exc
        try:
            response = self._provider.decode_rpc_response(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ChainError(
                f"{RPC_BAD_ANSWER}: {method}", permanent=False, tx_hash=tx_hash
            ) from exc
        if not isinstance(response, Mapping):
            raise ChainError(
                f"{RPC_BAD_ANSWER}: {method}", permanent=False, tx_hash=tx_hash
            )
        return cast(Mapping[str, Any], response)

    async def _request(
        self, method: str, params: list[Any], *, tx_hash: str | None = None
    ) -> Any:
        """The result; a JSON-RPC error answer becomes a classified ChainError."""
        response = await self._raw(method, params, tx_hash=tx_hash)
        if response.get("error"):
            exc = Web3RPCError(str(response["error"]), rpc_response=response)  # type: ignore[arg-type]
            reason, permanent = _classify_rpc_error(exc)
            raise ChainError(reason, permanent=permanent, tx_hash=tx_hash) from exc
        return response.get("result")

    async def _batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """Many calls at once, results in order.

        They are made together, so `_raw` sends them as JSON-RPC batches of at most
        `max_batch` (`CHAIN_RPC_BATCH`). Any error answer, a missing one or a
        malformed body fails the whole read, as transient as a failed single call
        (a read is tried again by the next pass).
        """
        answers = await asyncio.gather(
            *(self._raw(method, params) for method, params in calls),
            return_exceptions=True,
        )
        results: list[Any] = []
        for (method, _), answer in zip(calls, answers, strict=True):
            if isinstance(answer, ChainError):
                raise ChainError(answer.reason, permanent=False) from answer
            if isinstance(answer, BaseException):
                raise answer
            if "result" not in answer:
                error = answer.get("error", "no result")
                raise ChainError(f"{RPC_ERROR}: {method}: {error}", permanent=False)
            results.append(answer["result"])
        return results

    async def _view(self, selector: bytes, address: str, block: str = "latest") -> str:
        """eth_call of a registry view taking one address; the 32-byte word as hex."""
        call = self._view_call(selector, _address_word(address), block)
        return self._registry_word(await self._request(*call))

    def _view_call(
        self, selector: bytes, word: bytes, block: str = "latest"
    ) -> tuple[str, list[Any]]:
        """The eth_call of a registry view taking one address word."""
        call = {"to": self.registry_address, "data": _hex(selector + word)}
        return ("eth_call", [call, block])

    def _registry_word(self, result: Any) -> str:
        """A view's answer as a 32-byte word; anything else: no registry there."""
        word = str(result)
        if len(word) != 66:
            raise ChainError(f"{NO_REGISTRY}: {self.registry_address}", permanent=True)
        return word

    def _logs_call(self, word: bytes, block: int) -> tuple[str, list[Any]]:
        """The eth_getLogs of the registry's events for one identity in one block."""
        query = {
            "address": self.registry_address,
            "fromBlock": hex(block),
            "toBlock": hex(block),
            "topics": [None, _hex(word)],
        }
        return ("eth_getLogs", [query])

    async def _ensure_session(self) -> None:
        """Give the provider a pooled keep-alive session on this event loop.

        web3's default session closes the connection after every request; with a
        hundred publications in flight that is a TCP handshake (and a resolver thread
        hop) per call.
        """
        loop = asyncio.get_running_loop()
        if self._session_loop is loop:
            return
        self._session_loop = loop
        self._queue = []
        self._sending = set()
        session = aiohttp.ClientSession(
            raise_for_status=True,
            connector=aiohttp.TCPConnector(limit=self._max_connections),
        )
        # Set before the await below: a concurrent call on this loop returns at once
        # and must find the session.
        self._session = session
        self._headers = dict(self._provider.get_request_headers())
        # Cached in the provider too: its `disconnect()` closes it, and `self.w3`
        # (tests, tools) shares the pool.
        await self._provider.cache_async_session(session)

    async def _ensure_chain(self) -> None:
        if self._chain_checked:
            return
        served = _quantity(await self._request("eth_chainId", []))
        if served != self.chain_id:
            raise ChainError(
                f"{CHAIN_ID_MISMATCH}: expected {self.chain_id}, got {served}",
                permanent=True,
            )
        self._chain_checked = True

    @contextlib.asynccontextmanager
    async def _identity_lock(self, identity: str) -> AsyncIterator[None]:
        """One DID-document change per identity at a time; locks are freed when idle."""
        lock = self._identity_locks.setdefault(identity, asyncio.Lock())
        self._identity_users[identity] = self._identity_users.get(identity, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._identity_users[identity] -= 1
            if self._identity_users[identity] == 0:
                del self._identity_users[identity]
                del self._identity_locks[identity]

    # --- read side -------------------------------------------------------------------

    async def block_number(self) -> int:
        return _quantity(await self._request("eth_blockNumber", []))

    async def changed(self, identity: str, block: str = "latest") -> int:
        """Block number of the identity's last change (0 when never changed).

        `block` is a block tag or a hex block number ("pending" sees the pool).
        """
        return _quantity(await self._view(_CHANGED, identity, block))

    async def registry_nonce(self, identity: str) -> int:
        """The registry's `nonce(identity)`, which `setAttributeSigned` signs over.

        The shipped 0.0.3 bytecode uses `nonce[identity]` for `setAttributeSigned`
        (and `nonce[identityOwner(identity)]` only for the owner/delegate calls); the
        test suite pins this against the deployed bytecode.
        """
        return _quantity(await self._view(_NONCE, identity))

    async def identity_owner(self, identity: str) -> str:
        return _word_address(await self._view(_IDENTITY_OWNER, identity))

    async def logs(
        self, identity: str, block_number: int
    ) -> list[erc1056.RegistryEvent]:
        """Every registry event for `identity` in one block, in log order."""
        call = self._logs_call(_address_word(identity), block_number)
        return _decode_logs(await self._request(*call))

    async def _views(self, selector: bytes, identities: Sequence[str]) -> list[str]:
        """`_view` of each identity, the calls made together (JSON-RPC batches)."""
        calls = [self._view_call(selector, _identity_word(i)) for i in identities]
        return [self._registry_word(result) for result in await self._batch(calls)]

    async def changed_many(self, identities: Sequence[str]) -> list[int]:
        """`changed(identity)` of each, in JSON-RPC batches."""
        return [_quantity(word) for word in await self._views(_CHANGED, identities)]

    async def identity_owners(self, identities: Sequence[str]) -> list[str]:
        """`identityOwner(identity)` of each, in JSON-RPC batches."""
        words = await self._views(_IDENTITY_OWNER, identities)
        return [_word_address(word) for word in words]

    async def logs_many(
        self, queries: Sequence[tuple[str, int]]
    ) -> list[list[erc1056.RegistryEvent]]:
        """`logs(identity, block)` of each (identity, block), in JSON-RPC batches."""
        calls = [self._logs_call(_identity_word(i), block) for i, block in queries]
        return [_decode_logs(entries) for entries in await self._batch(calls)]

    def reader(self) -> Chain:
        """The `AsyncRegistryReader` the protocol resolver walks."""
        return self

    async def resolve_documents(self, dids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Many DID documents, by canonical DID, in JSON-RPC batches: one batch of
        `changed` reads, and the logs and owner of the identities whose history is
        not cached (`CHAIN_DOCUMENT_CACHE_SIZE`) or changed since. What every reader
        sees, like `resolve_document`; histories less than `confirmations` blocks
        deep are not kept."""
        if not dids:
            return {}
        settled = await self.block_number() - self.confirmations
        return await resolve_did_documents_async(
            dids,
            self,
            now=int(time.time()),
            cache=self.histories,
            settled_block=settled,
        )

    async def resolve_document(self, did: DID | str) -> dict[str, Any]:
        """The DID document as every reader sees it, straight from chain."""
        document = await resolve_did_document_async(
            did, self.reader(), now=int(time.time())
        )
        return dict(document)

    async def balance(self, address: str) -> int:
        return _quantity(
            await self._request(
                "eth_getBalance", [to_checksum_address(address), "latest"]
            )
        )

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._provider.disconnect()

    # --- write side ------------------------------------------------------------------

    async def publish_attribute(
        self, asset: Signer, *, name: bytes, value: bytes, validity: int
    ) -> PublishResult:
        """Write one attribute into `asset`'s DID document and wait for it to be mined.

        Idempotent across a lost outcome: if the previous attempt for this identity
        (same name and value) was sent but its receipt never arrived, its result is
        returned once mined instead of writing the attribute twice.
        """
        return await self._write_attribute(asset, name, value, validity)

    async def revoke_attribute(
        self, asset: Signer, *, name: bytes, value: bytes
    ) -> PublishResult:
        """Remove one attribute from `asset`'s DID document and wait for it to be mined.

        `name` and `value` must be exactly the bytes that were published: the
        registry's event carries them with `validTo` 0, and a reader keyed by name
        and value drops only that entry. Asset mode sends `revokeAttribute` as the
        asset; relay mode sends `revokeAttributeSigned`, signed by the asset over the
        registry's digest with the nonce read just before signing. Idempotent across
        a lost outcome like `publish_attribute`.
        """
        return await self._write_attribute(asset, name, value, None)

    async def _write_attribute(
        self, asset: Signer, name: bytes, value: bytes, validity: int | None
    ) -> PublishResult:
        """`publish_attribute` (a `validity`) or `revoke_attribute` (None): one write
        path, so both are serialised per identity, idempotent and signed alike."""
        kind = "set" if validity is not None else "revoke"
        await self._ensure_chain()
        identity = to_checksum_address(asset.address)
        async with self._identity_lock(identity):
            previous = await self._settle_inflight(identity, name, value, kind)
            if previous is not None:
                return previous
            await self._wait_identity_free(identity)
            if self.mode == "relay":
                assert self.operator is not None
                sender = self.operator
                # Read just before signing: the digest is only valid for this nonce.
                registry_nonce = await self.registry_nonce(identity)
                data = self._signed_calldata(
                    asset, identity, registry_nonce, name, value, validity
                )
            else:
                sender = asset
                data = (
                    erc1056.set_attribute_calldata(identity, name, value, validity)
                    if validity is not None
                    else erc1056.revoke_attribute_calldata(identity, name, value)
                )
            return await self._transact(sender, identity, data, name, value, kind)

    def _signed_calldata(
        self,
        asset: Signer,
        identity: str,
        registry_nonce: int,
        name: bytes,
        value: bytes,
        validity: int | None,
    ) -> bytes:
        """`setAttributeSigned` (a `validity`) or `revokeAttributeSigned` (None)
        calldata, signed by `asset` over the registry's digest for `registry_nonce`."""
        if validity is None:
            digest = erc1056.revoke_attribute_signed_digest(
                registry=self.registry_address,
                nonce=registry_nonce,
                identity=identity,
                name=name,
                value=value,
            )
            v, r, s = erc1056.split_signature(asset.sign_hash(digest))
            return erc1056.revoke_attribute_signed_calldata(
                identity, v, r, s, name, value
            )
        digest = erc1056.set_attribute_signed_digest(
            registry=self.registry_address,
            nonce=registry_nonce,
            identity=identity,
            name=name,
            value=value,
            validity=validity,
        )
        v, r, s = erc1056.split_signature(asset.sign_hash(digest))
        return erc1056.set_attribute_signed_calldata(
            identity, v, r, s, name, value, validity
        )

    async def call(self, to: str, data: bytes, block: str = "latest") -> bytes:
        """`eth_call` of any contract view: the raw return bytes.

        For the views of contracts other than the registry (the claims revocation
        registry); the same deadline, size limit and error classification apply.
        """
        call = {"to": to_checksum_address(to), "data": _hex(data)}
        result = await self._request("eth_call", [call, block])
        if not isinstance(result, str) or not result.startswith("0x"):
            raise ChainError(RPC_BAD_ANSWER, permanent=False)
        try:
            return bytes.fromhex(result[2:])
        except ValueError:
            raise ChainError(RPC_BAD_ANSWER, permanent=False) from None

    async def code_size(self, address: str) -> int:
        """Bytes of code at `address` (0: no contract there)."""
        code = await self._request(
            "eth_getCode", [to_checksum_address(address), "latest"]
        )
        return max(0, (len(str(code)) - 2) // 2)

    async def _settle_inflight(
        self, identity: str, name: bytes, value: bytes, kind: str = "set"
    ) -> PublishResult | None:
        """Learn the outcome of a change sent earlier whose receipt never came."""
        inflight = self._inflight.get(identity)
        if inflight is None:
            return None
        receipt = await self._receipt_or_none(inflight.tx_hash)
        if receipt is None:
            known = await self._request(
                "eth_getTransactionByHash", [inflight.tx_hash], tx_hash=inflight.tx_hash
            )
            if known is None:
                # The node no longer knows it: it will never be mined.
                del self._inflight[identity]
                return None
            raise ChainError(
                PREVIOUS_PENDING, permanent=False, tx_hash=inflight.tx_hash
            )
        del self._inflight[identity]
        if receipt.status == 1 and (inflight.name, inflight.value, inflight.kind) == (
            name,
            value,
            kind,
        ):
            await self._wait_confirmations(receipt, inflight.tx_hash)
            return PublishResult(
                tx_hash=inflight.tx_hash,
                block_number=receipt.block_number,
                gas_used=receipt.gas_used,
                mode=self.mode,
            )
        return None

    async def _wait_identity_free(self, identity: str) -> None:
        """Never put two changes for one identity into one block.

        A change by anyone else that sits in the pending block shows as
        `changed@pending > latest block`; wait for it to be mined so ours lands in a
        later block. (Our own changes are serialised by the identity lock.)
        """
        deadline = time.monotonic() + self.receipt_timeout
        while True:
            latest = (await self._head()).number
            pending_change = await self.changed(identity, "pending")
            if pending_change <= latest:
                return
            if time.monotonic() > deadline:
                raise ChainError(PREVIOUS_PENDING, permanent=False)
            await asyncio.sleep(self.poll_interval)

    async def _head(self) -> _Head:
        """The latest block's number and fee data, at most `poll_interval` old."""
        cached = self._head_cache
        if cached is not None and time.monotonic() - cached[0] < self.poll_interval:
            return cached[1]
        if self._head_fetch is None or self._head_fetch.done():
            self._head_fetch = asyncio.ensure_future(self._fetch_head())
        # shield: one caller giving up must not cancel the fetch the others await.
        return await asyncio.shield(self._head_fetch)

    async def _fetch_head(self) -> _Head:
        block = await self._request("eth_getBlockByNumber", ["latest", False])
        base_fee = block.get("baseFeePerGas")
        if base_fee is None:
            priority = 0
            gas_price = _quantity(await self._request("eth_gasPrice", []))
        else:
            priority = _quantity(await self._request("eth_maxPriorityFeePerGas", []))
            gas_price = 0
        head = _Head(
            number=_quantity(block["number"]),
            base_fee=None if base_fee is None else _quantity(base_fee),
            priority_fee=priority,
            gas_price=gas_price,
        )
        self._head_cache = (time.monotonic(), head)
        return head

    async def _next_head(self, seen: int, max_wait: float) -> int:
        """Sleep until the head passes `seen` or `max_wait` elapses; the head number."""
        waited = 0.0
        while True:
            await asyncio.sleep(self.poll_interval)
            waited += self.poll_interval
            number = (await self._head()).number
            if number > seen or waited >= max_wait:
                return number

    async def _fees(self) -> dict[str, int]:
        """EIP-1559 fields capped at `max_fee_wei`, or a capped legacy gas price."""
        head = await self._head()
        base_fee = head.base_fee
        if base_fee is None:
            gas_price = head.gas_price
            if gas_price > self.max_fee_wei:
                raise ChainError(
                    f"{FEE_ABOVE_CAP}: gas price {gas_price} wei > cap "
                    f"{self.max_fee_wei} wei",
                    permanent=False,
                )
            return {"gasPrice": gas_price}
        # The next block's base fee may rise 12.5%; the cap must still clear it.
        if base_fee * 9 // 8 > self.max_fee_wei:
            raise ChainError(
                f"{FEE_ABOVE_CAP}: base fee {base_fee} wei > cap "
                f"{self.max_fee_wei} wei",
                permanent=False,
            )
        priority = head.priority_fee
        max_fee = min(2 * base_fee + priority, self.max_fee_wei)
        priority = min(priority, max_fee - base_fee)
        return {"type": 2, "maxFeePerGas": max_fee, "maxPriorityFeePerGas": priority}

    async def _transact(
        self,
        sender: Signer,
        identity: str,
        data: bytes,
        name: bytes,
        value: bytes,
        kind: str = "set",
    ) -> PublishResult:
        sender_address = to_checksum_address(sender.address)
        call = {"from": sender_address, "to": self.registry_address, "data": _hex(data)}
        try:
            # Explicitly "latest" (nodes differ in their default): the estimate may
            # then be short (the gas trap), which the margin covers.
            estimate = _quantity(
                await self._request("eth_estimateGas", [call, "latest"])
            )
        except ChainError as exc:
            if exc.permanent and self.mode == "relay":
                exc.reason = f"{exc.reason} (bad signature, replay or not the owner)"
            elif exc.permanent:
                exc.reason = f"{exc.reason} ({NOT_OWNER} or invalid call)"
            exc.args = (exc.reason,)
            raise
        gas = int(estimate * (1 + self.gas_margin)) + GAS_MARGIN_FLOOR
        fees = await self._fees()
        if self.mode == "asset":
            # An unfunded asset is the common set-up mistake in asset mode: say so
            # with the figures. (The relay operator's shortfall comes back from the
            # node as "insufficient funds", classified the same way.)
            price = fees.get("maxFeePerGas", fees.get("gasPrice", 0))
            balance = await self.balance(sender_address)
            if balance < gas * price:
                raise ChainError(
                    f"{INSUFFICIENT_FUNDS}: {sender_address} holds {balance} wei, "
                    f"needs up to {gas * price} wei",
                    permanent=True,
                )
        transaction: dict[str, Any] = {
            "chainId": self.chain_id,
            "to": self.registry_address,
            "value": 0,
            "data": _hex(data),
            "gas": gas,
            **fees,
        }

        def dropped(state: RetryCallState) -> None:
            self._inflight.pop(identity, None)
            error = state.outcome.exception() if state.outcome else None
            logger.warning(
                "transaction %s dropped by the node; sending it again", error
            )

        try:
            async for attempt in self._retry.chain_dropped.retrying(
                on=_Dropped, log=dropped
            ):
                with attempt:
                    tx_hash, nonce = await self._send(sender, transaction)
                    self._inflight[identity] = _InFlight(tx_hash, name, value, kind)
                    receipt = await self._wait_receipt(tx_hash, sender_address, nonce)
        except _Dropped:
            self._inflight.pop(identity, None)
            raise ChainError(TX_DROPPED, permanent=False) from None
        del self._inflight[identity]
        return self._result(receipt, tx_hash, gas)

    def _result(self, receipt: _Receipt, tx_hash: str, gas: int) -> PublishResult:
        if receipt.status != 1:
            reason = OUT_OF_GAS if receipt.gas_used >= gas else REVERTED_ON_CHAIN
            raise ChainError(
                f"{reason} (gas limit {gas}, used {receipt.gas_used})",
                permanent=True,
                tx_hash=tx_hash,
            )
        return PublishResult(
            tx_hash=tx_hash,
            block_number=receipt.block_number,
            gas_used=receipt.gas_used,
            mode=self.mode,
        )

    async def _send(
        self, sender: Signer, transaction: Mapping[str, Any]
    ) -> tuple[str, int]:
        """Sign with a locally allocated nonce and send; return (tx hash, nonce).

        The account lock is held only around signing and sending, so receipts are
        awaited concurrently. The local counter advances only when the node accepted
        the transaction, so a failed send leaves no nonce gap.
        """
        address = to_checksum_address(sender.address)
        account = self._accounts.setdefault(address, _Account())
        async with account.lock:
            try:
                async for attempt in self._retry.chain_nonce.retrying(
                    on=_NonceRejected
                ):
                    with attempt:
                        return await self._send_once(
                            sender, transaction, address, account
                        )
            except _NonceRejected:
                pass
        raise ChainError(NONCE_RETRIES_EXHAUSTED, permanent=False)

    async def _send_once(
        self,
        sender: Signer,
        transaction: Mapping[str, Any],
        address: str,
        account: _Account,
    ) -> tuple[str, int]:
        """One signed send under the account lock; `_NonceRejected` to sign again."""
        if account.next_nonce is None:
            account.next_nonce = _quantity(
                await self._request("eth_getTransactionCount", [address, "pending"])
            )
        nonce = account.next_nonce
        raw = sender.sign_transaction({**transaction, "nonce": nonce})
        tx_hash = _hex(keccak(raw))
        try:
            response = await self._raw(
                "eth_sendRawTransaction", [_hex(raw)], tx_hash=tx_hash
            )
        except ChainError:
            # The node may or may not have the transaction: resync next time rather
            # than guess.
            account.next_nonce = None
            raise
        error = response.get("error")
        if not error:
            account.next_nonce = nonce + 1
            return tx_hash, nonce
        exc = Web3RPCError(str(error), rpc_response=response)  # type: ignore[arg-type]
        message = _rpc_message(exc).lower()
        if "already known" in message or "already imported" in message:
            # Our exact bytes are in the pool (an earlier send whose answer got
            # lost): that is a successful send.
            account.next_nonce = nonce + 1
            return tx_hash, nonce
        if "nonce too low" in message or "underpriced" in message:
            # Someone else used this nonce (another process, a manual transfer):
            # resync from the node and sign again.
            logger.warning(
                "nonce %s rejected for %s (%s); resyncing", nonce, address, message
            )
            account.next_nonce = None
            raise _NonceRejected(nonce)
        reason, permanent = _classify_rpc_error(exc)
        raise ChainError(reason, permanent=permanent) from exc

    async def _receipt_or_none(self, tx_hash: str) -> _Receipt | None:
        receipt = await self._request(
            "eth_getTransactionReceipt", [tx_hash], tx_hash=tx_hash
        )
        if receipt is None:
            return None
        return _Receipt(
            block_number=_quantity(receipt["blockNumber"]),
            gas_used=_quantity(receipt["gasUsed"]),
            status=_quantity(receipt["status"]),
        )

    async def _wait_receipt(self, tx_hash: str, sender: str, nonce: int) -> _Receipt:
        """Poll for the receipt until `receipt_timeout`, then for confirmations.

        Raises `_Dropped` when the node no longer knows the transaction and its nonce
        is still unused, so the caller can send it again.
        """
        deadline = time.monotonic() + self.receipt_timeout
        unknown = 0
        polls = 0
        try:
            seen = (await self._head()).number
            while True:
                receipt = await self._receipt_or_none(tx_hash)
                if receipt is not None:
                    await self._wait_confirmations(receipt, tx_hash, deadline)
                    return receipt
                polls += 1
                if polls % 2 == 0:
                    unknown = await self._check_dropped(tx_hash, sender, nonce, unknown)
                if time.monotonic() > deadline:
                    raise ChainError(RECEIPT_TIMEOUT, permanent=False, tx_hash=tx_hash)
                # Look again when a block arrives, or every few intervals regardless
                # (a chain that mines on demand, or a transaction the node dropped).
                seen = await self._next_head(seen, max_wait=4 * self.poll_interval)
        except ChainError as exc:
            # Shared reads (the head) do not know which transaction waited on them.
            if exc.tx_hash is None:
                exc.tx_hash = tx_hash
            raise

    async def _check_dropped(
        self, tx_hash: str, sender: str, nonce: int, unknown: int
    ) -> int:
        known = await self._request(
            "eth_getTransactionByHash", [tx_hash], tx_hash=tx_hash
        )
        if known is not None:
            return 0
        unknown += 1
        if unknown < _DROP_OBSERVATIONS:
            return unknown
        # A receipt may have appeared between the two calls.
        if await self._receipt_or_none(tx_hash) is not None:
            return 0
        mined_count = _quantity(
            await self._request(
                "eth_getTransactionCount", [sender, "latest"], tx_hash=tx_hash
            )
        )
        account = self._accounts.get(sender)
        if account is not None:
            account.next_nonce = None
        if mined_count > nonce:
            raise ChainError(TX_REPLACED, permanent=False, tx_hash=tx_hash)
        raise _Dropped(tx_hash)

    async def _wait_confirmations(
        self, receipt: _Receipt, tx_hash: str, deadline: float | None = None
    ) -> None:
        if self.confirmations == 0:
            return
        if deadline is None:
            deadline = time.monotonic() + self.receipt_timeout
        target = receipt.block_number + self.confirmations
        head = (await self._head()).number
        while head < target:
            if time.monotonic() > deadline:
                raise ChainError(RECEIPT_TIMEOUT, permanent=False, tx_hash=tx_hash)
            head = await self._next_head(head, max_wait=self.poll_interval)


def default_registry_address(chain_id: int) -> str | None:
    """The registry Energy Web deployed on `chain_id`, if it is Volta or EWC."""
    return REGISTRY_ADDRESSES.get(chain_id)


def chain_from_settings(
    *,
    operator: Signer | None = None,
    read_only: bool = False,
    request_timeout: float | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> Chain:
    """Build the process's `Chain` from Django settings (read only here).

    `read_only=True` gives a client for reads (block number, DID documents, balances)
    that never needs the relay operator, whatever `CHAIN_WRITE_MODE` says: the console
    and the sandbox tools read the chain but never publish.
    """
    from django.conf import settings

    extra: dict[str, Any] = {
        "request_timeout": settings.CHAIN_RPC_TIMEOUT,
        "max_response_bytes": settings.CHAIN_RPC_MAX_RESPONSE_BYTES,
        "max_batch": settings.CHAIN_RPC_BATCH,
    }
    if request_timeout is not None:
        extra["request_timeout"] = request_timeout
    return Chain(
        settings.CHAIN_RPC_URL,
        chain_id=settings.CHAIN_ID,
        registry_address=settings.DID_REGISTRY_ADDRESS,
        mode="asset" if read_only else settings.CHAIN_WRITE_MODE,
        operator=None if read_only else operator,
        max_fee_gwei=settings.CHAIN_MAX_FEE_GWEI,
        confirmations=settings.CHAIN_CONFIRMATIONS,
        receipt_timeout=settings.CHAIN_RECEIPT_TIMEOUT,
        gas_margin=settings.CHAIN_GAS_MARGIN,
        retry=retry,
        document_cache_size=settings.CHAIN_DOCUMENT_CACHE_SIZE,
        **extra,
    )
