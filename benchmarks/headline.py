"""The headline of a benchmark run: a few figures picked from its result tables.

`make bench` writes it at the top of docs/benchmarks.md and into README.md between the
`<!-- bench:headline -->` and `<!-- /bench:headline -->` markers, so the README never
quotes a stale run. Every figure is read from a rendered table (by title and column name),
so `python -m benchmarks.headline` can rebuild the page's headline and the README's copy
from docs/benchmarks.md alone, as `python -m benchmarks --splice` does after it replaced
some parts. A part that did not run (or was skipped) leaves its rows out.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.report import Table

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
REPORT = REPO / "docs" / "benchmarks.md"
START = "<!-- bench:headline -->"
END = "<!-- /bench:headline -->"
TITLE = "Headline"
COLUMNS = ("comparison", "result")
OURS_SUFFIX = " / server"  # the throughput table's ratio columns: "<ours> / server"

Row = tuple[str, str]


class HeadlineError(Exception):
    """README.md has no well-formed pair of headline markers."""


def _find(tables: Sequence[Table], prefix: str) -> Table | None:
    return next((t for t in tables if t.title.startswith(prefix)), None)


def _records(table: Table) -> list[dict[str, str]]:
    return [dict(zip(table.columns, row, strict=True)) for row in table.rows]


def _k(cell: str) -> str:
    """ "54,751" → "55 k"."""
    return f"{float(cell.replace(',', '')) / 1000:.0f} k"


def _throughput(table: Table) -> list[Row]:
    ours = [c.removesuffix(OURS_SUFFIX) for c in table.columns if c.endswith(OURS_SUFFIX)]
    records = _records(table)
    mixes = list(dict.fromkeys(r["mix"] for r in records))
    peers = [s for s in dict.fromkeys(r["server"] for r in records) if s not in ours]

    def cells(server: str, column: str, shape: Callable[[str], str] = str) -> str:
        by_mix = {r["mix"]: r[column] for r in records if r["server"] == server}
        return " / ".join(shape(by_mix.get(mix, "n/a")) for mix in mixes)

    rows = []
    mix_names = " / ".join(mixes)
    for peer in peers:
        ratios = "; ".join(f"{name} {cells(peer, name + OURS_SUFFIX)}" for name in ours)
        rows.append((f"georouter vs {peer}, max q/s ({mix_names})", ratios))
    servers = ", ".join(f"{s} {cells(s, 'q/s', _k)}" for s in [*ours, *peers])
    rows.append((f"max q/s ({mix_names})", servers))
    return rows


def _latency(table: Table) -> list[Row]:
    rate = table.title.removeprefix("Latency at a fixed ")
    cells = [f"{r['server']} {r['p50 ms']} / {r['p99 ms']}" for r in _records(table)]
    return [(f"latency at a fixed {rate} (ecs), p50 / p99 ms", ", ".join(cells))]


def _hits(table: Table) -> list[Row]:
    records = _records(table)
    ours = next(r["server"] for r in records if not r["edge / server"])
    objects = list(dict.fromkeys(r["object"] for r in records))
    sizes = " / ".join(re.sub(r".*\((.+)\)$", r"\1", o) for o in objects)

    def per_object(server: str, column: str) -> str:
        by_object = {r["object"]: r[column] for r in records if r["server"] == server}
        return " / ".join(by_object.get(o, "n/a") for o in objects)

    rows = []
    for peer in dict.fromkeys(r["server"] for r in records if r["server"] != ours):
        result = (
            f"{per_object(peer, 'edge / server')} ({per_object(ours, 'req/s')} against "
            f"{per_object(peer, 'req/s')})"
        )
        rows.append((f"edge vs {peer}, cache hits req/s ({sizes})", result))
    return rows


def _failover(table: Table) -> list[Row]:
    """Our rows (one per fault: kill -9, SIGSTOP) first, then the peers' defaults."""
    column = "time until a dead node leaves answers"
    records = _records(table)
    ours = [r for r in records if r["system"].startswith("georouter")]
    peers = [r for r in records if not r["system"].startswith("georouter")]
    defaults = ", ".join(f"{p['system']} {p[column].split(' (')[0].split(';')[0]}" for p in peers)
    if len(ours) == 1:
        result = ours[0][column]
    else:  # "georouter, SIGSTOP (georouter/data/cdn.toml)" → "SIGSTOP"
        faults = [r["system"].removeprefix("georouter, ").split(" (")[0] for r in ours]
        result = "; ".join(
            f"{fault}: {r[column].removeprefix('measured: ')}"
            for fault, r in zip(faults, ours, strict=True)
        )
    result += f"; documented defaults: {defaults}" if defaults else ""
    what = "a crashed edge" if len(ours) == 1 else "a crashed or frozen edge"
    return [(f"{what} leaves the answers", result)]


def _figures(cell: str) -> list[str]:
    """ "80 / **213** / 225" → ["80", "213", "225"]."""
    return [part.strip().strip("*") for part in cell.split(" / ")]


SHARED = "**shared**"  # how the purge tables mark a machine shared with other work


def _shared(records: list[dict[str, str]]) -> str:
    shared = any(r.get("other work", "").startswith(SHARED) for r in records)
    return " (the machine shared with other work)" if shared else ""


def _purge(table: Table) -> list[Row]:
    cells = []
    records = _records(table)
    for r in records:
        p50, p99, _ = _figures(r["last edge serves new: p50 / p99 / max ms"])
        cells.append(f"{r['edges']} edges {p50} / {p99} ms")
    cells[-1] += _shared(records)
    return [
        ("purge everywhere, until the last edge serves the new object, p50 / p99", ", ".join(cells))
    ]


def _cut(table: Table) -> list[Row]:
    (r,) = _records(table)
    median, most = _figures(r["restore → new version: median / max ms"])
    stale = r["stale after up"].strip("*")
    result = f"new object {median} ms after (max {most} ms), {stale} stale answers once counted up"
    result += _shared([r])
    return [("an edge cut off during a purge, once reachable again", result)]


def _balance(table: Table) -> list[Row]:
    records = _records(table)
    delay = max(records, key=lambda r: float(r["report delay s"]))["report delay s"]
    cells = [
        f"{r['selector']} {r['max/mean (median)']}" for r in records if r["report delay s"] == delay
    ]
    return [(f"herding, max/mean utilisation with reports {delay} s late", ", ".join(cells))]


def _cache(table: Table) -> list[Row]:
    records = _records(table)
    alpha = max(records, key=lambda r: float(r["alpha"]))["alpha"]
    first = next(r for r in records if r["alpha"] == alpha)
    policies = [c for c in table.columns if c.endswith(" hit %")]
    cells = [f"{p.removesuffix(' hit %')} {first[p]} %" for p in policies]
    size = first["cache size (objects)"]
    return [(f"hit ratio, Zipf alpha {alpha}, cache {size}", ", ".join(cells))]


def _memory(table: Table) -> list[Row]:
    cells = [f"{r['process']} {r['RSS MiB']}" for r in _records(table)]
    return [("resident memory, MiB", ", ".join(cells))]


RULES: tuple[tuple[str, Callable[[Table], list[Row]]], ...] = (
    ("Throughput", _throughput),
    ("Latency at a fixed", _latency),
    ("Cache hits", _hits),
    ("Failover", _failover),
    ("Load spread", _balance),
    ("Eviction policy", _cache),
    ("Purge everywhere", _purge),
    ("An edge cut off", _cut),
    ("Resident memory", _memory),
)


def headline(tables: Sequence[Table]) -> Table:
    """The headline rows of the tables present, in the order of the run's parts."""
    rows: list[Row] = []
    for prefix, rule in RULES:
        if (table := _find(tables, prefix)) is not None:
            rows += rule(table)
    return Table(TITLE, COLUMNS, [list(row) for row in rows])


def table_lines(table: Table) -> list[str]:
    """A table's Markdown rows without its heading or notes."""
    return table.markdown().split("\n")[2:][: len(table.rows) + 2]


def readme_block(header: Sequence[str], summary: Table) -> str:
    """What goes between the README's markers: when the run was, the table, a link."""
    when = next((h.removeprefix("- Date: ") for h in header if h.startswith("- Date: ")), "")
    lines = [
        START,
        f"Generated by `make bench` from its last run ({when}).",
        "Every table, the method and the machine: [docs/benchmarks.md](docs/benchmarks.md).",
        "",
        *table_lines(summary),
        END,
    ]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """`text` with everything from START to END (both included) replaced by `block`."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise HeadlineError(f"expected one {START} … {END} pair in README.md")
    before, rest = text.split(START)
    return before + block + rest.split(END, 1)[1]


def update_readme(readme: Path, header: Sequence[str], summary: Table) -> None:
    readme.write_text(replace_block(readme.read_text(), readme_block(header, summary)))


def with_headline(markdown: str, summary: Table) -> str:
    """A rendered report with its headline section rebuilt from `summary`."""
    start = markdown.index(f"## {TITLE}\n")
    end = markdown.index("\n## ", start + 1) + 1
    section = "\n".join([f"## {TITLE}", "", *table_lines(summary), "", ""])
    return markdown[:start] + section + markdown[end:]


def rebuild(report: Path, readme: Path | None) -> None:
    """The headline of `report` (and `readme`'s copy) rebuilt from the report's own tables:
    after `--splice` replaced some parts, or by hand (no benchmark is run)."""
    text = report.read_text()
    summary = headline(tables_in(text))
    report.write_text(with_headline(text, summary))
    if readme is not None:
        update_readme(readme, header_in(text), summary)


def tables_in(markdown: str) -> list[Table]:
    """The `### title` tables of a rendered report, read back (cells hold no `|`)."""
    tables = []
    lines = markdown.split("\n")
    for i, line in enumerate(lines[:-3]):
        if line.startswith("### ") and lines[i + 2].startswith("|"):
            block = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                block.append([cell.strip() for cell in row.strip().strip("|").split("|")])
            tables.append(Table(line.removeprefix("### "), block[0], block[2:]))
    return tables


def header_in(markdown: str) -> list[str]:
    return [line for line in markdown.split("\n") if line.startswith("- Date: ")][:1]


def main() -> int:
    """Rebuild the headline of docs/benchmarks.md and README.md's copy from the tables of
    docs/benchmarks.md (no benchmark is run)."""
    try:
        rebuild(REPORT, README)
    except HeadlineError as exc:
        print(f"benchmarks.headline: {exc}", file=sys.stderr)
        return 1
    print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
