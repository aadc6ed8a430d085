"""The README documents every metric the programs export, under the name Prometheus shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edge.metrics import EdgeMetrics
from georouter.metrics import RouterMetrics

README = Path(__file__).resolve().parent.parent / "README.md"


def exposed_names(registry: CollectorRegistry) -> set[str]:
    """Metric names as scraped: counters carry `_total` in the exposition.

    prometheus-client adds a `*_created` timestamp series beside each unlabelled counter and
    histogram; it is bookkeeping, not a metric of ours.
    """
    names = set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if not family.name.endswith("_created"):
            names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


@pytest.mark.parametrize("metrics", [RouterMetrics(), EdgeMetrics()], ids=["router", "edge"])
def test_every_exported_metric_is_documented(metrics: RouterMetrics | EdgeMetrics) -> None:
    text = README.read_text(encoding="utf-8")
    names = exposed_names(metrics.registry)
    assert names, "the registry exported no metric families"
    # Documented as `name` or with its labels, `name{label,...}`.
    missing = sorted(name for name in names if not re.search(rf"`{name}[`{{]", text))
    assert not missing, f"README.md does not document: {missing}"
