"""Curves of the scaling part: where each one bends (its knee), and the plots (PNG).

A knee is the first point that is more than KNEE_SHARE worse than the point before it:
throughput that drops by more than that share, or a cost (memory, latency) that rises by
more. The plots need matplotlib (the `bench` extra); without it the part still writes its
tables and says the plots were skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

KNEE_SHARE = 0.20  # a step this much worse than the previous point is the knee
LOG_SPAN = 20.0  # an x range wider than this ratio is plotted on a log axis
PANEL_INCHES = (4.2, 3.2)
DPI = 110


@dataclass(frozen=True, slots=True)
class Curve:
    """One measured curve: y against x, which direction is better, and what grows with x."""

    title: str
    x_label: str
    y_label: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    higher_is_better: bool
    grows: str = ""  # what grows with x: the candidate causes of a knee
    # A second measure quoted at the knee (e.g. CPU per query, which a busy machine moves
    # less than throughput): its name and values at the same xs.
    evidence: tuple[str, tuple[float, ...]] | None = None

    def knee(self) -> int | None:
        """The index of the first point more than KNEE_SHARE worse than its predecessor."""
        for index in range(1, len(self.ys)):
            before, after = self.ys[index - 1], self.ys[index]
            if math.isnan(before) or math.isnan(after) or before <= 0:
                continue
            change = (after - before) / before
            if (-change if self.higher_is_better else change) > KNEE_SHARE:
                return index
        return None

    def knee_sentence(self) -> str:
        """One Markdown list item naming the knee (or its absence) and what grows with x."""
        index = self.knee()
        if index is None:
            where = f"no knee: no step is more than {KNEE_SHARE * 100:.0f} % worse than the last"
        else:
            before, after = self.ys[index - 1], self.ys[index]
            change = abs(after - before) / before
            verb = "drops" if self.higher_is_better else "rises"
            where = (
                f"knee at {_number(self.xs[index])} {self.x_label}: {self.y_label} {verb} "
                f"{change * 100:.0f} % ({_number(before)} at {_number(self.xs[index - 1])} to "
                f"{_number(after)}"
            )
            if self.evidence is not None:
                name, values = self.evidence
                where += f"; {name} {_number(values[index - 1])} to {_number(values[index])}"
            where += ")"
        return f"- **{self.title}**: {where}." + (f" {self.grows}" if self.grows else "")


def _number(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"


def matplotlib_missing() -> str | None:
    """Why plots cannot be drawn here, or None if they can."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (`pip install -e '.[bench]'`, as `make bench` does)"
    return None


def plot(path: Path, curves: Sequence[Curve], columns: int, title: str) -> None:
    """One PNG of `curves`, a panel each, `columns` per row; knees marked in red."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    rows = max(1, math.ceil(len(curves) / columns))
    size = (PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows)
    figure, axes = plt.subplots(rows, columns, figsize=size, squeeze=False)
    for ax, curve in zip(axes.flat, curves, strict=False):
        _panel(ax, curve)
    for ax in list(axes.flat)[len(curves) :]:
        ax.set_visible(False)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def _panel(ax: object, curve: Curve) -> None:
    from matplotlib.axes import Axes

    assert isinstance(ax, Axes)
    points = [(x, y) for x, y in zip(curve.xs, curve.ys, strict=True) if math.isfinite(y)]
    xs, ys = [x for x, _ in points], [y for _, y in points]
    ax.plot(xs, ys, marker="o")
    positive = [x for x in xs if x > 0]
    if positive and max(positive) / min(positive) > LOG_SPAN:
        if len(positive) == len(xs):
            ax.set_xscale("log")
        else:  # a zero among the xs (no overrides): linear up to the smallest other x
            ax.set_xscale("symlog", linthresh=min(positive))
    index = curve.knee()
    if index is not None and math.isfinite(curve.ys[index]):
        ax.plot([curve.xs[index]], [curve.ys[index]], "o", color="red", markersize=11,
                markerfacecolor="none")  # fmt: skip
        ax.annotate("knee", (curve.xs[index], curve.ys[index]), color="red", xytext=(6, 6),
                    textcoords="offset points")  # fmt: skip
    ax.set_title(curve.title, fontsize=10)
    ax.set_xlabel(curve.x_label)
    ax.set_ylabel(curve.y_label)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
