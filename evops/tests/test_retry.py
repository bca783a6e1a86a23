"""The one retry policy (evops/integrations/retry.py): bounds, jitter, Retry-After,
and when the in-call loop gives up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tenacity import RetryCallState

from evops.integrations.retry import (
    CACHE_SERVER_RETRY,
    ERR_BACKOFF,
    ERR_RETRIES,
    NO_WAIT,
    Backoff,
    PeerRetry,
    RetryableAnswer,
    RetryPolicy,
)

SAMPLES = 2000


def test_backoff_doubles_from_base_up_to_the_cap():
    backoff = Backoff(1.0, 10.0)
    assert [backoff.nominal(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    # Attempt 0 (nothing failed yet) waits like the first retry, never less.
    assert backoff.nominal(0) == 1.0
    assert backoff.nominal(10_000) == 10.0


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 30])
def test_scheduled_delay_stays_within_half_and_one_and_a_half_of_nominal(attempt):
    backoff = Backoff(2.0, 600.0)
    nominal = backoff.nominal(attempt)
    delays = [backoff.delay(attempt) for _ in range(SAMPLES)]
    assert all(0.5 * nominal <= d <= 1.5 * nominal for d in delays)
    assert max(delays) <= 1.5 * 600.0


def test_jitter_spreads_over_its_whole_range():
    backoff = Backoff(1.0, 1.0)
    delays = [backoff.delay(1) for _ in range(SAMPLES)]
    # 2000 uniform draws: the extremes lie within 0.05 of the ends unless something
    # is badly wrong (the chance of a miss is about 1e-87).
    assert min(delays) < 0.55
    assert max(delays) > 1.45
    assert len(set(delays)) > SAMPLES // 2


def test_in_call_backoff_is_full_jitter_capped_at_five_seconds():
    backoff = CACHE_SERVER_RETRY.backoff
    for attempt in range(1, 12):
        ceiling = min(5.0, 0.2 * 2 ** (attempt - 1))
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
    assert min(backoff.delay(1) for _ in range(SAMPLES)) < 0.01


def test_no_wait_waits_nothing():
    assert {NO_WAIT.delay(n) for n in range(1, 10)} == {0.0}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": -1.0, "cap": 1.0},
        {"base": 1.0, "cap": -1.0},
        {"base": 1.0, "cap": 1.0, "jitter": (1.5, 0.5)},
        {"base": 1.0, "cap": 1.0, "jitter": (-0.1, 1.0)},
    ],
)
def test_a_malformed_backoff_is_refused(kwargs):
    with pytest.raises(ValueError, match=ERR_BACKOFF):
        Backoff(**kwargs)


def test_negative_counts_are_refused():
    with pytest.raises(ValueError, match=ERR_RETRIES):
        PeerRetry(retries=-1)
    with pytest.raises(ValueError, match=ERR_RETRIES):
        RetryPolicy(max_attempts=-1)


# --- Retry-After ----------------------------------------------------------------------


def test_retry_after_lengthens_the_wait_up_to_its_cap():
    peer = PeerRetry(
        retries=4, backoff=Backoff(0.01, 0.01, (0.0, 1.0)), retry_after_cap=30
    )
    assert peer.wait(1, "7") == 7.0
    assert peer.wait(1, "0") <= 0.01
    assert peer.wait(1, "999999") == 30.0


def test_retry_after_never_shortens_the_backoff():
    peer = PeerRetry(
        retries=4, backoff=Backoff(10.0, 10.0, (1.0, 1.0)), retry_after_cap=30
    )
    assert peer.wait(1, "2") == 10.0


@pytest.mark.parametrize(
    "header", ["", "-5", "1.5", "Wed, 21 Oct 2015 07:28:00 GMT", "9" * 5000, " 3"]
)
def test_a_retry_after_that_is_not_delta_seconds_is_ignored_or_capped(header):
    peer = PeerRetry(
        retries=1, backoff=Backoff(0.01, 0.01, (1.0, 1.0)), retry_after_cap=30
    )
    assert peer.wait(1, header) in (0.01, 30.0)
    if not header.isdigit():
        assert peer.wait(1, header) == 0.01


def test_a_peer_without_a_retry_after_cap_ignores_the_header():
    assert PeerRetry(retries=1).wait(1, "60") == 0.0


# --- the in-call loop (tenacity) ---------------------------------------------------


@pytest.fixture(params=["retrying", "call"])
def via(request) -> str:
    """Each loop test runs through `PeerRetry.retrying` and through `PeerRetry.call`
    (its first try outside tenacity), which must retry alike."""
    return str(request.param)


async def _run(
    peer: PeerRetry, fail: BaseException, via: str = "retrying", **kwargs
) -> tuple[int, list[float]]:
    """Run a call that always fails with `fail`; (calls made, waits planned)."""
    calls = 0
    waits: list[float] = []

    def log(state: RetryCallState) -> None:
        waits.append(float(state.upcoming_sleep))

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise fail

    with pytest.raises(type(fail)):
        if via == "call":
            await peer.call(call, log=log, **kwargs)
        else:
            async for attempt in peer.retrying(log=log, **kwargs):
                with attempt:
                    await call()
    return calls, waits


@pytest.mark.parametrize("retries", [0, 1, 4])
async def test_the_loop_gives_up_after_the_first_try_and_its_retries(retries, via):
    calls, waits = await _run(
        PeerRetry(retries=retries), RetryableAnswer("HTTP 503"), via
    )
    assert calls == retries + 1
    assert len(waits) == retries


async def test_a_per_call_retry_count_overrides_the_peers(via):
    calls, _ = await _run(PeerRetry(retries=4), RetryableAnswer("x"), via, retries=0)
    assert calls == 1


async def test_the_loop_honours_retry_after_from_the_failed_attempt(via):
    peer = PeerRetry(retries=2, retry_after_cap=0.02)
    calls, waits = await _run(peer, RetryableAnswer("HTTP 429", retry_after="120"), via)
    assert calls == 3
    assert waits == [0.02, 0.02]


async def test_errors_a_retry_cannot_mend_are_raised_at_once(via):
    calls, waits = await _run(PeerRetry(retries=4), ValueError("permanent"), via)
    assert (calls, waits) == (1, [])


async def test_the_loop_returns_the_first_success():
    peer = PeerRetry(retries=4)
    answers = iter([RetryableAnswer("timeout"), RetryableAnswer("timeout"), None])
    result = None
    async for attempt in peer.retrying():
        with attempt:
            answer = next(answers)
            if answer is not None:
                raise answer
            result = "ok"
    assert result == "ok"
    assert next(answers, "spent") == "spent"


async def test_call_returns_the_first_success_and_logs_each_failed_try():
    answers: Iterator[RetryableAnswer | str] = iter(
        [RetryableAnswer("timeout"), RetryableAnswer("timeout"), "ok"]
    )
    logged: list[tuple[int, str]] = []

    def log(state: RetryCallState) -> None:
        assert state.outcome is not None
        logged.append((state.attempt_number, str(state.outcome.exception())))

    async def call() -> str:
        answer = next(answers)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert await PeerRetry(retries=4).call(call, log=log) == "ok"
    assert logged == [(1, "timeout"), (2, "timeout")]
    assert next(answers, "spent") == "spent"


# --- scheduled retries -------------------------------------------------------------


def test_the_policy_gives_up_at_max_attempts():
    policy = RetryPolicy(max_attempts=3)
    assert [policy.gives_up(n) for n in range(5)] == [False, False, False, True, True]


def test_scheduled_and_in_call_retries_come_from_one_object():
    policy = RetryPolicy(backoff=Backoff(1.0, 4.0))
    assert all(0.5 * 4.0 <= policy.delay(9) <= 1.5 * 4.0 for _ in range(100))
    assert policy.cache_server is CACHE_SERVER_RETRY
    assert (policy.chain_nonce.retries, policy.chain_dropped.retries) == (3, 2)
