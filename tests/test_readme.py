"""The docs stay in step with the code: every exported metric is documented under the name
Prometheus shows, every relative link in README.md, THREAT_MODEL.md and docs/ reaches an
existing file and heading, and the README's benchmark headline is the one generated from
docs/benchmarks.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import headline
from edge.metrics import EdgeMetrics
from georouter.metrics import RouterMetrics

REPO = Path(__file__).resolve().parent.parent
METRICS_PAGE = REPO / "docs" / "metrics.md"
PAGES = sorted([REPO / "README.md", REPO / "THREAT_MODEL.md", *(REPO / "docs").glob("*.md")])
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+?)\s*$", re.MULTILINE)
EXTERNAL = ("http://", "https://", "mailto:")


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
    text = METRICS_PAGE.read_text(encoding="utf-8")
    names = exposed_names(metrics.registry)
    assert names, "the registry exported no metric families"
    # Documented as `name` or with its labels, `name{label,...}`.
    missing = sorted(name for name in names if not re.search(rf"`{name}[`{{]", text))
    assert not missing, f"docs/metrics.md does not document: {missing}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, … as on GitHub."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    """Link targets outside code blocks and code spans."""
    prose = CODE_SPAN.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    return LINK.findall(prose)


def test_slug_follows_github() -> None:
    assert (
        slug("More than one core: `router.dns_workers`") == "more-than-one-core-routerdns_workers"
    )
    assert slug("Conformance: http-tests/cache-tests") == "conformance-http-testscache-tests"
    assert slug("Edge metrics (`edge_*`)") == "edge-metrics-edge_"


def test_a_repeated_heading_gets_a_numbered_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A\n\n## Notes\n\n```\n# not a heading\n```\n\n## Notes\n")
    assert anchors(page) == {"a", "notes", "notes-1"}


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_every_relative_link_reaches_a_file_and_heading(page: Path) -> None:
    broken = []
    for target in links(page):
        if target.startswith(EXTERNAL):
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{target}: no heading #{fragment} in {file.name}")
    assert not broken, f"{page.name}: {broken}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme_links = {target.partition("#")[0] for target in links(REPO / "README.md")}
    pages = {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")} | {"THREAT_MODEL.md"}
    assert pages <= readme_links, f"not linked from README.md: {sorted(pages - readme_links)}"


def test_readme_headline_is_the_one_generated_from_docs_benchmarks() -> None:
    report = (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    summary = headline.headline(headline.tables_in(report))
    block = headline.readme_block(headline.header_in(report), summary)
    assert summary.rows, "docs/benchmarks.md gave no headline rows"
    assert block in (REPO / "README.md").read_text(encoding="utf-8"), (
        "README.md's headline is stale: run .venv/bin/python -m benchmarks.headline"
    )
