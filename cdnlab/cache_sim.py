"""Trace-driven hit-ratio simulation of the edge's eviction policies.

Importable by the benchmarks (which run 1 M-request traces): ``zipf_trace``
builds a seeded, repeatable trace; ``simulate_hit_ratio`` replays it through a
policy holding at most ``capacity_objects`` keys (unit-size objects, so the
comparison is about ordering, not sizes).
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterable, Sequence

from edge.eviction import EvictionPolicy, make_policy


def zipf_trace(objects: int, requests: int, alpha: float, seed: int) -> list[int]:
    """``requests`` keys drawn from Zipf(alpha) over ``objects`` keys (rank 0 hottest).

    Ranks are shuffled onto key ids so popularity is unrelated to key order.
    """
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) ** alpha for rank in range(objects)]
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]
    ids = list(range(objects))
    rng.shuffle(ids)
    return [ids[bisect.bisect_left(cumulative, rng.random() * total)] for _ in range(requests)]


def simulate_hit_ratio(policy_name: str, trace: Iterable[int], capacity_objects: int) -> float:
    """Share of requests in ``trace`` that hit a cache of ``capacity_objects`` keys."""
    policy: EvictionPolicy[int] = make_policy(policy_name)
    present: set[int] = set()
    hits = requests = 0
    for key in trace:
        requests += 1
        if key in present:
            hits += 1
            policy.touch(key)
            continue
        if len(present) >= capacity_objects:
            victim = policy.victim()
            policy.remove(victim)
            present.discard(victim)
        policy.insert(key)
        present.add(key)
    return hits / requests if requests else 0.0


def hit_ratios(
    trace: Sequence[int], capacity_objects: int, policies: Iterable[str]
) -> dict[str, float]:
    """``simulate_hit_ratio`` for several policies over the same trace."""
    return {name: simulate_hit_ratio(name, trace, capacity_objects) for name in policies}
