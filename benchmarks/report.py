"""Result tables: printed as each part finishes and written together to docs/benchmarks.md.

Every run rewrites the file: the run's headline (benchmarks/headline.py), how the run works
(benchmarks/method.md, kept by hand), the parts' tables, and last benchmarks/improvements.md,
the hand-kept before/after figures of the profile-driven DNS-path changes.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.processes import CpuShares

IMPROVEMENTS = Path(__file__).resolve().parent / "improvements.md"
METHOD = Path(__file__).resolve().parent / "method.md"
CPU_NOTE = (
    "CPU in % of one core over the run, from /proc (server: its whole process tree; others: "
    "the rest of the machine's busy time, e.g. idle peers or other test suites; stolen: time "
    "the hypervisor ran other guests while a vCPU of this machine was ready, /proc/stat steal)."
)
EQUAL_TERMS_NOTE = (
    "Every server and the load generator run in the harness's session, so in one CPU "
    'autogroup, unpinned (see "The harness": how each was started, and the bias check).'
)


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
    numbered: bool = True  # the harness section stands before the numbered parts


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


def render(
    parts: Sequence[Part], header: Sequence[str], summary: Table, method: str, improvements: str
) -> str:
    """The whole report; `summary` (the headline) is rendered without its heading level."""
    lines = ["# Benchmarks", "", "Written by `make bench` (`python -m benchmarks`).", ""]
    lines += [*header, ""]
    lines += [f"## {summary.title}", "", *summary.markdown().split("\n")[2:], method]
    number = 0
    for part in parts:
        number += part.numbered
        heading = f"{number}. {part.title}" if part.numbered else part.title
        lines += [f"## {heading}", "", part.intro, ""]
        lines += [table.markdown() for table in part.tables]
    lines.append(improvements)
    return "\n".join(lines)


NUMBERED = re.compile(r"^(\d+)\. ")


def _section(heading: str, part: Part, stamp: Sequence[str]) -> str:
    lines = [f"## {heading}", ""]
    if stamp:
        lines += [*stamp, ""]
    lines += [part.intro, ""] + [table.markdown() for table in part.tables]
    return "\n".join(lines) + "\n"


def splice_text(text: str, parts: Sequence[Part], stamp: Sequence[str]) -> str:
    """`text` (a rendered report) with each part's section replaced, or added after the
    last numbered part before "Memory", under `stamp`; the numbered parts are numbered
    again in order. Every other section, "How the run works" too, is kept as it is: it
    describes the run the rest of the page came from."""
    preamble, *chunks = re.split(r"(?m)^(?=## )", text)
    sections: list[tuple[str, bool, str]] = []  # (title, numbered, text)
    for chunk in chunks:
        heading = chunk.split("\n", 1)[0][3:].strip()
        title = NUMBERED.sub("", heading)
        sections.append((title, title != heading, chunk))
    for part in parts:
        new = (part.title, part.numbered, _section(part.title, part, stamp))
        at = next((i for i, s in enumerate(sections) if s[0] == part.title), None)
        if at is not None:
            sections[at] = new
            continue
        spots = [i for i, s in enumerate(sections) if s[1] and s[0] != "Memory"]
        sections.insert(spots[-1] + 1 if spots else len(sections), new)
    out, number = [preamble], 0
    for title, numbered, chunk in sections:
        if numbered:
            number += 1
            chunk = f"## {number}. {title}" + chunk[chunk.index("\n") :]
        out.append(chunk if chunk.endswith("\n") else chunk + "\n")
    return "".join(out)


def splice(path: Path, parts: Sequence[Part], header: Sequence[str], command: str) -> None:
    """Write `parts` into the report at `path` (`splice_text`), stamped with `header` and
    the `command` that measured them."""
    stamp = [f"Measured apart from the rest of this page (`{command}`):", *header]
    path.write_text(splice_text(path.read_text(), parts, stamp))


def write(path: Path, parts: Sequence[Part], header: Sequence[str], summary: Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(parts, header, summary, METHOD.read_text(), IMPROVEMENTS.read_text()))


def bottleneck(cpu: CpuShares, tool: str) -> str:
    """Which side limited a run, judged from where the CPU went (in % of one core): the
    server, the load generator, everything else on the machine, or the hypervisor."""
    capacity = 100.0 * (os.cpu_count() or 1)
    if cpu.server + cpu.tool + cpu.others + cpu.stolen >= 0.9 * capacity:
        if cpu.stolen >= 0.15 * capacity:
            return f"hypervisor (stolen {cpu.stolen:.0f} %)"
        if cpu.others >= 0.25 * capacity:
            return f"shared machine (others {cpu.others:.0f} %)"
        return f"all cores busy ({'server' if cpu.server >= cpu.tool else tool} most)"
    if cpu.server >= 90.0 and cpu.server >= cpu.tool:
        return "server (one core full)"
    if cpu.tool >= 90.0:
        return tool
    return "neither CPU-bound (window)"
