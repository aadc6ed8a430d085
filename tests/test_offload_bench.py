"""The offload part of `make bench` (benchmarks/offload.py) in a small run: real edges and
shields, the origin's own count of its fetches."""

from __future__ import annotations

from benchmarks import offload
from benchmarks.__main__ import PARTS

TINY = offload.Plan(requests=400, objects=60, clients=8)


def test_the_workload_is_seeded_and_spreads_over_every_edge() -> None:
    stream = offload.workload(TINY)
    assert stream == offload.workload(TINY) and len(stream) == TINY.requests
    assert {edge for edge, _ in stream} == set(range(offload.EDGES))
    paths = [path for _, path in stream]
    assert paths.count("/o/0") > paths.count("/o/59")  # Zipf: the first object is hottest


def test_shields_bring_origin_fetches_per_object_to_one() -> None:
    assert "offload" in PARTS
    table = offload.measure(TINY)
    direct, shielded = (dict(zip(offload.COLUMNS, row, strict=True)) for row in table.rows)
    assert direct["errors"] == shielded["errors"] == "0"
    assert direct["objects"] == shielded["objects"]
    # Every edge fetches a popular object itself when it goes to the origin directly ...
    assert float(direct["per object"]) > 1.5
    # ... behind the shields each object is fetched once (rendezvous hash + coalescing).
    assert float(shielded["per object"]) <= offload.GOAL and shielded["goal"] == "met"
