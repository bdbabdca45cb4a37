"""The egress service's bounds on one worker (``egress.limits``): connections, open files, and
the log of its refusals, as data and a clock."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from worker_manager.egress.limits import (
    ByteLimit,
    ConnectionLimit,
    DenialLog,
    raise_open_files_limit,
)


def test_each_worker_holds_at_most_its_bound_and_gets_back_what_it_closes() -> None:
    limit = ConnectionLimit(3)
    assert [limit.acquire("a") for _ in range(4)] == [True, True, True, False]
    assert limit.acquire("b"), "another worker's bound is its own"
    assert limit.open("a") == 3 and limit.open("b") == 1
    limit.release("a")
    assert limit.acquire("a") and not limit.acquire("a")
    for _ in range(5):  # more releases than acquisitions never go below nothing
        limit.release("b")
    assert limit.open("b") == 0 and limit.acquire("b")
    with pytest.raises(ValueError, match="at least one"):
        ConnectionLimit(0)


@pytest.fixture
def low_soft_limit() -> Iterator[int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_soft_limit_of_open_files_is_raised_to_the_hard_one(low_soft_limit: int) -> None:
    hard = low_soft_limit
    expected = hard if hard != resource.RLIM_INFINITY else 1 << 20
    assert raise_open_files_limit() == expected
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (expected, hard)
    assert raise_open_files_limit() == expected  # already there: unchanged


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_refusals_is_logged_then_one_a_second_counting_the_rest() -> None:
    clock = Clock()
    log = DenialLog(burst=5, per_second=1.0, clock=clock)
    admitted = [log.admit("a") for _ in range(1000)]
    assert admitted[:5] == [0, 0, 0, 0, 0]
    assert admitted[5:] == [None] * 995
    assert log.admit("b") == 0, "another worker has its own burst"
    clock.now += 1.0
    assert log.admit("a") == 995, "the next logged line counts what was left out"
    assert log.admit("a") is None
    clock.now += 3600
    assert [log.admit("a") for _ in range(6)] == [1, 0, 0, 0, 0, None], "a full burst again"


def test_the_denial_log_remembers_a_bounded_number_of_workers() -> None:
    log = DenialLog(burst=1, per_second=0.001, max_workers=10, clock=Clock())
    for n in range(10_000):
        log.admit(f"w{n}")
    assert len(log._buckets) == 10


def test_bytes_held_per_worker_are_bounded_and_given_back() -> None:
    limit = ByteLimit(100)
    assert limit.take("a", 60) and limit.take("a", 40)
    assert not limit.take("a", 1)
    assert limit.held("a") == 100
    assert limit.take("b", 100)  # another worker has its own bound
    limit.give_back("a", 40)
    assert limit.take("a", 30) and limit.held("a") == 90
    limit.give_back("a", 90)
    assert limit.held("a") == 0
    with pytest.raises(ValueError, match="at least one byte"):
        ByteLimit(0)
