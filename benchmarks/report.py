"""Result tables: printed as each part finishes and written together to docs/benchmarks.md.

Every run rewrites the file; it ends with benchmarks/improvements.md, the hand-kept
before/after figures of the profile-driven DNS-path changes.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

IMPROVEMENTS = Path(__file__).resolve().parent / "improvements.md"


@dataclass(frozen=True, slots=True)
class Table:
    """One result table: a heading, column names, rows of cells, and notes under it."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[str]]
    notes: Sequence[str] = field(default_factory=tuple)

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "---|" * len(self.columns))
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        lines += [""] + [f"- {note}" for note in self.notes] if self.notes else []
        return "\n".join(lines) + "\n"

    def text(self) -> str:
        """A fixed-width rendering for the terminal."""
        cells = [list(self.columns), *[list(r) for r in self.rows]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        out = [self.title, "-" * len(self.title)]
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
        return "\n".join(out) + "\n"


@dataclass(slots=True)
class Part:
    """One numbered part of the benchmark: an introduction and its tables."""

    title: str
    intro: str
    tables: list[Table] = field(default_factory=list)


def intro(docstring: str | None) -> str:
    """A part's introduction: its module docstring without the one-line summary."""
    body = (docstring or "").split("\n\n", 1)
    return body[1].strip() if len(body) > 1 else ""


def fmt(value: float, digits: int = 0) -> str:
    """A number for a table cell ("n/a" when missing)."""
    if value != value:  # NaN
        return "n/a"
    return f"{value:,.{digits}f}"


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs and theirs == theirs and ours == ours else "n/a"


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def machine_lines(versions: dict[str, str], mode: str) -> list[str]:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    tools = ", ".join(f"{name} {version or 'absent'}" for name, version in versions.items())
    return [
        f"- Date: {today}; mode: {mode}",
        f"- Machine: {os.cpu_count()} cores, {cpu_model()}, Linux {platform.release()}",
        f"- Python {platform.python_version()}; {tools}",
    ]


def render(parts: Sequence[Part], header: Sequence[str], improvements: str) -> str:
    lines = ["# Benchmarks", "", "Written by `make bench` (`python -m benchmarks`).", ""]
    lines += [*header, ""]
    for number, part in enumerate(parts, start=1):
        lines += [f"## {number}. {part.title}", "", part.intro, ""]
        lines += [table.markdown() for table in part.tables]
    lines.append(improvements)
    return "\n".join(lines)


def write(path: Path, parts: Sequence[Part], header: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(parts, header, IMPROVEMENTS.read_text()))


def bottleneck(server_cpu: float, tool_cpu: float, other_cpu: float, tool: str) -> str:
    """Which side limited a run, judged from the CPU used (in % of one core) by the server,
    the load generator and everything else on the machine (other tests, other benchmarks)."""
    capacity = 100.0 * (os.cpu_count() or 1)
    if server_cpu + tool_cpu + other_cpu >= 0.9 * capacity:
        if other_cpu >= 0.25 * capacity:
            return f"shared machine (others {other_cpu:.0f} %)"
        return f"all cores busy ({'server' if server_cpu >= tool_cpu else tool} most)"
    if server_cpu >= 90.0 and server_cpu >= tool_cpu:
        return "server (one core full)"
    if tool_cpu >= 90.0:
        return tool
    return "neither CPU-bound (window)"
