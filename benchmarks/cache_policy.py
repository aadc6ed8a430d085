"""Part 5: hit ratio of the edge's eviction policies on Zipf traces (cdnlab/cache_sim.py).

Objects are unit-sized, so the comparison is about which keys each policy keeps. The
cache sizes are 1 % and 10 % of the working set (the distinct objects of the trace), and
the edge's default store size expressed in objects of a typical size.
"""

from __future__ import annotations

from benchmarks.report import Table, fmt
from cdnlab.cache_sim import hit_ratios, zipf_trace
from edge.config import CACHE_BYTES
from edge.eviction import POLICIES

ALPHAS = (0.8, 1.0)
WORKING_SET = 100_000  # distinct objects
CACHE_SHARES = (0.01, 0.10)
TYPICAL_OBJECT_BYTES = 100 * 1024  # for expressing the edge's byte budget in objects
SEED = 11


def cache_sizes() -> list[tuple[str, int]]:
    sizes = [(f"{share:.0%} of working set", int(WORKING_SET * share)) for share in CACHE_SHARES]
    edge_objects = CACHE_BYTES // TYPICAL_OBJECT_BYTES
    label = f"edge default {CACHE_BYTES >> 20} MiB at {TYPICAL_OBJECT_BYTES >> 10} KiB/object"
    return [*sizes, (label, edge_objects)]


def cache_table(requests: int) -> Table:
    """Hit ratio of every policy for each Zipf exponent and cache size."""
    policies = list(POLICIES)
    rows = []
    for alpha in ALPHAS:
        trace = zipf_trace(WORKING_SET, requests, alpha, SEED)
        for label, capacity in cache_sizes():
            ratios = hit_ratios(trace, capacity, policies)
            best = max(ratios, key=lambda name: ratios[name])
            cells = [fmt(100 * ratios[name], 1) for name in policies]
            rows.append([f"{alpha:g}", f"{label} ({capacity:,})", *cells, best])
    notes = [
        f"Zipf traces of {requests:,} requests over {WORKING_SET:,} objects (seed {SEED}); "
        "hit ratio in %, warm-up included.",
    ]
    columns = ["alpha", "cache size (objects)", *(f"{p} hit %" for p in policies), "best"]
    return Table("Eviction policy hit ratio", columns, rows, notes)
