"""Eviction policies: each algorithm's defining behaviour, the protocol's
invariants under random operations, and hit ratios on a Zipf trace."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdnlab.cache_sim import hit_ratios, simulate_hit_ratio, zipf_trace
from edge.eviction import (
    LRU,
    MAX_FREQUENCY,
    POLICIES,
    S3FIFO,
    SIEVE,
    EvictionPolicy,
    make_policy,
)


def fill(policy: EvictionPolicy[str], keys: str) -> EvictionPolicy[str]:
    for key in keys:
        policy.insert(key)
    return policy


def evict(policy: EvictionPolicy[str]) -> str:
    victim = policy.victim()
    policy.remove(victim)
    return victim


def test_lru_evicts_least_recently_used() -> None:
    policy = fill(LRU(), "abc")
    policy.touch("a")
    assert [evict(policy) for _ in range(3)] == ["b", "c", "a"]


def test_sieve_spares_visited_keys_and_clears_their_bit() -> None:
    policy = fill(SIEVE(), "abcd")
    policy.touch("a")
    policy.touch("b")
    # The hand sweeps from the oldest: a and b lose their bit, c goes.
    assert evict(policy) == "c"
    # The hand resumes after c (at d), not at the oldest key again.
    assert evict(policy) == "d"
    assert evict(policy) == "a"


def test_sieve_hit_does_not_reorder_queue() -> None:
    policy = fill(SIEVE(), "abc")
    policy.touch("c")
    policy.touch("c")
    assert evict(policy) == "a"


def test_sieve_all_visited_wraps_around_to_oldest() -> None:
    policy = fill(SIEVE(), "abc")
    for key in "abc":
        policy.touch(key)
    assert evict(policy) == "a"


def test_s3fifo_one_hit_wonders_leave_before_reused_keys() -> None:
    policy = fill(S3FIFO(), "abcdefghij")
    policy.touch("a")  # used while on probation: promoted to main instead of evicted
    assert evict(policy) == "b"
    assert evict(policy) == "c"


def test_s3fifo_ghost_hit_enters_main_directly() -> None:
    policy: S3FIFO[str] = S3FIFO()
    fill(policy, "ab")
    policy.touch("a")
    assert evict(policy) == "b"  # b remembered in the ghost queue
    policy.insert("b")  # back soon: admitted straight to main
    policy.insert("c")
    policy.insert("d")
    # Probationary c is the victim before b, although b is older than c.
    assert evict(policy) == "c"


def test_s3fifo_frequency_is_capped_at_three() -> None:
    policy: S3FIFO[str] = S3FIFO()
    fill(policy, "ab")
    for _ in range(10):
        policy.touch("a")
    # A 2-bit counter: ten hits buy no more than three second chances.
    assert policy._freq["a"] == MAX_FREQUENCY == 3


def test_s3fifo_main_queue_reinserts_used_keys() -> None:
    policy = fill(S3FIFO(), "ab")
    policy.touch("a")
    assert evict(policy) == "b"  # a promoted to main, b remembered as a ghost
    policy.insert("b")  # ghost hit: main is now [a, b]
    policy.touch("a")
    # FIFO with reinsertion: the older but used a goes round again, b leaves.
    assert evict(policy) == "b"
    assert evict(policy) == "a"


def test_make_policy_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown eviction policy 'arc'"):
        make_policy("arc")


operations = st.lists(
    st.tuples(st.sampled_from(["insert", "touch", "remove", "evict"]), st.integers(0, 20)),
    max_size=200,
)


@pytest.mark.parametrize("name", POLICIES)
@settings(max_examples=150, deadline=None)
@given(ops=operations)
def test_victim_is_always_a_present_key(name: str, ops: list[tuple[str, int]]) -> None:
    policy: EvictionPolicy[int] = make_policy(name)
    present: set[int] = set()
    for op, key in ops:
        if op == "insert" and key not in present:
            policy.insert(key)
            present.add(key)
        elif op == "touch" and key in present:
            policy.touch(key)
        elif op == "remove" and key in present:
            policy.remove(key)
            present.discard(key)
        elif op == "evict" and present:
            victim = policy.victim()
            assert victim in present
            policy.remove(victim)
            present.discard(victim)
    drained = set()
    while present:
        victim = policy.victim()
        assert victim in present
        policy.remove(victim)
        present.discard(victim)
        drained.add(victim)


ZIPF_TRACE = zipf_trace(objects=10_000, requests=100_000, alpha=1.0, seed=2024)


@pytest.mark.parametrize("capacity", [100, 1000])
def test_sieve_and_s3fifo_beat_lru_on_zipf_1_0(capacity: int) -> None:
    ratios = hit_ratios(ZIPF_TRACE, capacity, POLICIES)
    assert ratios["sieve"] >= ratios["lru"]
    assert ratios["s3fifo"] >= ratios["lru"]


def test_simulation_is_seeded_and_repeatable() -> None:
    again = zipf_trace(objects=10_000, requests=100_000, alpha=1.0, seed=2024)
    assert again == ZIPF_TRACE
    assert zipf_trace(objects=10_000, requests=1_000, alpha=1.0, seed=7) != again[:1_000]


def test_simulation_counts_every_repeat_as_hit_when_everything_fits() -> None:
    trace = [1, 2, 1, 2, 3, 1]
    assert simulate_hit_ratio("lru", trace, capacity_objects=3) == pytest.approx(3 / 6)
    assert simulate_hit_ratio("lru", trace, capacity_objects=1) == 0.0
