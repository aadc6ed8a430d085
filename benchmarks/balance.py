"""Part 4: herding. The seeded simulation of cdnlab/simulation.py run as a benchmark.

One region of unequal nodes takes a steady stream of answers while load reports arrive
late by the given delay; each selector is scored by max/mean node utilisation over time
(1.0 is a perfect spread in proportion to capacity).
"""

from __future__ import annotations

from dataclasses import replace

from benchmarks.report import Table, fmt
from cdnlab.simulation import SELECTORS, SimParams, simulate

REPORT_DELAYS_S = (0.5, 1.0, 3.0)
QUICK_DURATION_S = 120.0


def balance_table(seeds: int, quick: bool) -> Table:
    """Every selector at every report delay; medians over `seeds` seeded runs."""
    base = SimParams(duration_s=QUICK_DURATION_S) if quick else SimParams()
    rows = []
    for delay in REPORT_DELAYS_S:
        for name in SELECTORS:
            results = [
                simulate(name, replace(base, report_delay_s=delay, seed=seed))
                for seed in range(1, seeds + 1)
            ]
            peak = max(r.peak_ratio for r in results)
            mean = sorted(r.mean_ratio for r in results)[len(results) // 2]
            top = max(r.peak_utilization for r in results)
            rows.append([f"{delay:g}", name, fmt(mean, 3), fmt(peak, 3), fmt(top, 2)])
    capacities = ", ".join(f"{c:g}" for c in base.capacities)
    offered = base.queries_per_s * base.rps_per_answer * base.ttl_s
    notes = [
        f"Nodes of {capacities} rps; {offered:,.0f} rps offered "
        f"({offered / sum(base.capacities):.0%} of capacity); answer TTL {base.ttl_s} s; "
        f"reports every {base.report_interval_s:g} s; {base.duration_s:g} s simulated after "
        f"{base.warmup_s:g} s warm-up; {seeds} seed(s).",
        "mean and peak of max(node utilisation) / mean utilisation, sampled every second; "
        "peak util: the highest utilisation any node reached.",
    ]
    columns = ["report delay s", "selector", "max/mean (median)", "max/mean (peak)", "peak util"]
    return Table("Load spread with delayed reports", columns, rows, notes)
