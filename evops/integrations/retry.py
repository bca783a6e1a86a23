"""The one retry policy: how long to wait before another try, and when to stop.

Two kinds of retry use it. In-call retries (a peer client trying again within one
call: the cache server after a timeout, a 5xx or a 429; the chain after a rejected
nonce or a dropped transaction) run through tenacity (`PeerRetry.retrying`).
Scheduled retries (the inbox deferring a message, the claim state machine scheduling
a step again) store a next time computed by the same `Backoff`
(`RetryPolicy.delay`, `RetryPolicy.gives_up`).

Pure and free of Django: the project builds the policy from its settings
(`claims.retry.retry_policy`: `RETRY_BASE_SECONDS`, `RETRY_MAX_SECONDS`,
`MAX_ATTEMPTS`) and hands it to the clients as plain values. tenacity rather than
stamina: its `AsyncRetrying` takes any wait callable, which lets a 429's
`Retry-After` lengthen one wait, and it keeps no process-wide state.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)

T = TypeVar("T")

ERR_BACKOFF = "backoff needs 0 <= base, 0 <= cap and 0 <= low <= high jitter"
ERR_RETRIES = "retries and max_attempts must not be negative"


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter, as a tenacity wait strategy.

    The wait before retry `n` (the first retry is 1) is
    `min(cap, base * 2**(n-1))` times a factor drawn uniformly from `jitter`: (0.5,
    1.5) spreads scheduled retries around the nominal time, (0, 1) is "full jitter"
    for in-call retries, so many callers hitting one peer do not retry in step.
    """

    base: float
    cap: float
    jitter: tuple[float, float] = (0.5, 1.5)

    def __post_init__(self) -> None:
        low, high = self.jitter
        if self.base < 0 or self.cap < 0 or not 0 <= low <= high:
            raise ValueError(ERR_BACKOFF)

    def nominal(self, attempt: int) -> float:
        """The un-jittered wait before retry `attempt`."""
        try:
            return min(self.cap, self.base * 2.0 ** max(0, attempt - 1))
        except OverflowError:  # attempt in the thousands
            return self.cap

    def delay(self, attempt: int) -> float:
        """The jittered wait before retry `attempt`, in seconds."""
        low, high = self.jitter
        return self.nominal(attempt) * random.uniform(low, high)  # noqa: S311 - jitter

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.delay(retry_state.attempt_number)


NO_WAIT = Backoff(0.0, 0.0, (0.0, 0.0))


class RetryableAnswer(Exception):
    """One in-call attempt ended in a way that a retry may mend.

    Raised inside `PeerRetry.retrying`; once the retries are spent the last one is
    re-raised for the client to turn into its own transient error. `retry_after`
    carries a 429's `Retry-After` header, if any.
    """

    def __init__(
        self, reason: str, *, status: int | None = None, retry_after: str = ""
    ):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class PeerRetry:
    """A peer client's in-call retries: how many after the first try, and the waits.

    `retry_after_cap` bounds how long a peer's `Retry-After` (delta-seconds; an
    HTTP date is ignored) may stretch one wait; 0 ignores the header.
    """

    retries: int
    backoff: Backoff = NO_WAIT
    retry_after_cap: float = 0.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(ERR_RETRIES)

    def wait(self, attempt: int, retry_after: str = "") -> float:
        """The wait before retry `attempt`, honouring `Retry-After` up to the cap."""
        delay = self.backoff.delay(attempt)
        if retry_after.isdigit() and self.retry_after_cap > 0:
            delay = max(delay, min(float(retry_after), self.retry_after_cap))
        return delay

    def _wait(self, retry_state: RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = error.retry_after if isinstance(error, RetryableAnswer) else ""
        return self.wait(retry_state.attempt_number, retry_after)

    def retrying(
        self,
        *,
        on: type[BaseException] | tuple[type[BaseException], ...] = RetryableAnswer,
        retries: int | None = None,
        log: Callable[[RetryCallState], None] | None = None,
    ) -> AsyncRetrying:
        """A tenacity loop: retry on `on` up to `retries` (default this peer's)
        times, then re-raise the last error. `log` runs before each wait."""
        count = self.retries if retries is None else retries
        return AsyncRetrying(
            stop=stop_after_attempt(count + 1),
            wait=self._wait,
            retry=retry_if_exception_type(on),
            before_sleep=log,
            reraise=True,
        )

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        on: type[BaseException] | tuple[type[BaseException], ...] = RetryableAnswer,
        retries: int | None = None,
        log: Callable[[RetryCallState], None] | None = None,
    ) -> T:
        """`await fn()` with the retries of `retrying`, the same tries and waits.

        The first try runs before any tenacity loop is built (~80 us of CPU, and
        nearly every call succeeds at once); after a failure it is handed to the
        loop as its first attempt's outcome, so the count, the waits and `log` are
        those of `retrying` from the start.
        """
        failed: BaseException | None = None
        try:
            return await fn()
        except on as exc:
            failed = exc
        async for attempt in self.retrying(on=on, retries=retries, log=log):
            with attempt:
                if failed is not None:
                    error, failed = failed, None
                    raise error
                return await fn()
        raise AssertionError("unreachable")  # pragma: no cover


# The peers' in-call retries. The cache server: four retries within one call, waits
# from 0.2 s doubling to 5 s with full jitter, a 429's Retry-After honoured up to 30 s.
# The chain: a nonce the node rejects is re-read and signed again up to three more
# times, a transaction the node dropped is sent again up to twice; both at once (the
# node answers, nothing to wait for). Chain reads are not retried within a call: a
# dead RPC becomes a transient error promptly and the claim is scheduled again.
CACHE_SERVER_RETRY = PeerRetry(
    retries=4, backoff=Backoff(0.2, 5.0, (0.0, 1.0)), retry_after_cap=30.0
)
CHAIN_NONCE_RETRY = PeerRetry(retries=3)
CHAIN_DROPPED_RETRY = PeerRetry(retries=2)


@dataclass(frozen=True)
class RetryPolicy:
    """The whole policy: scheduled retries and each peer's in-call retries.

    `backoff` spaces scheduled retries; a step gives up once it has been tried
    `max_attempts` times.
    """

    backoff: Backoff = Backoff(2.0, 600.0)
    max_attempts: int = 10
    cache_server: PeerRetry = CACHE_SERVER_RETRY
    chain_nonce: PeerRetry = CHAIN_NONCE_RETRY
    chain_dropped: PeerRetry = CHAIN_DROPPED_RETRY

    def __post_init__(self) -> None:
        if self.max_attempts < 0:
            raise ValueError(ERR_RETRIES)

    def gives_up(self, attempts: int) -> bool:
        """True once `attempts` tries have been made and no more are allowed."""
        return attempts >= self.max_attempts

    def delay(self, attempts: int) -> float:
        """Seconds until the next scheduled try after `attempts` failed ones."""
        return self.backoff.delay(attempts)


DEFAULT_RETRY = RetryPolicy()
