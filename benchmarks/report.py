"""The bench's output: a line per row as it is measured, the table at the end, and
for a full run the README's results table and docs/bench.svg (a bar per row:
Runyard's time as a multiple of its floor, with the goal marked)."""

import html
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CHART = ROOT / "docs" / "bench.svg"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def line(row) -> str:
    mark = "meets" if row.met else "MISSES"
    text = (f"  {row.name} ({row.size}): floor {_short(row.floor)}, runyard {row.shown}, "
            f"ratio {row.ratio:.2f}; goal {row.goal}: {mark}")
    return text + "".join(f"\n    {note}" for note in row.notes)


def _short(seconds: float) -> str:
    from benchmarks.common import _duration

    return _duration(seconds)


def table(rows, scale: str) -> str:
    """A Markdown table of the rows."""
    out = [f"| path ({scale}) | size | floor | Runyard | ratio | goal | |",
           "|---|---|---|---|---|---|---|"]
    for row in rows:
        out.append(f"| {row.name} | {row.size} | {_short(row.floor)} ({row.floor_what}) | {row.shown} | "
                   f"{row.ratio:.2f}× | {row.goal} | {'✓' if row.met else '✗'} |")
    return "\n".join(out)


def write_readme(rows, scale: str, database: str) -> None:
    import datetime as dt
    import os

    CHART.parent.mkdir(exist_ok=True)
    CHART.write_text(chart(rows))
    when = dt.date.today().isoformat()
    block = "\n".join([
        START,
        f"Measured on {when} by `BENCH_SCALE={scale} make bench` on this project's 2-core machine "
        f"({os.cpu_count()} cores seen, {database}). The floor is measured in the same run; "
        "the ratio is Runyard's time over it.",
        "",
        table(rows, scale),
        "",
        "![Runyard's time over its floor, per path (the line is the goal)](docs/bench.svg)",
        END,
    ])
    text = README.read_text()
    if START in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n## Speed\n\n" + block + "\n"
    README.write_text(text)


def chart(rows) -> str:
    """An SVG of horizontal bars: each row's ratio on a log scale, its goal as a tick."""
    import math

    width, left, bar, gap, top = 820, 300, 18, 10, 40
    height = top + len(rows) * (bar + gap) + 40
    low, high = 0.1, max([10.0] + [min(r.ratio, 1000) * 1.5 for r in rows])

    def x(ratio: float) -> float:
        ratio = min(max(ratio, low), high)
        return left + (width - left - 20) * (math.log10(ratio) - math.log10(low)) / (math.log10(high) - math.log10(low))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             '<text x="10" y="20" font-size="14" font-weight="bold">Runyard ÷ floor (log scale; '
             'green meets its goal, the black tick is the goal)</text>']
    for tick in (0.1, 1, 10, 100, 1000):
        if tick <= high:
            parts.append(f'<line x1="{x(tick):.1f}" y1="{top - 5}" x2="{x(tick):.1f}" y2="{height - 30}" '
                         f'stroke="#ddd"/><text x="{x(tick):.1f}" y="{height - 15}" text-anchor="middle">{tick:g}×</text>')
    for i, row in enumerate(rows):
        y = top + i * (bar + gap)
        colour = "#2e7d32" if row.met else "#c62828"
        parts.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end">{html.escape(row.name)}</text>')
        parts.append(f'<rect x="{x(low):.1f}" y="{y}" width="{max(1.0, x(row.ratio) - x(low)):.1f}" '
                     f'height="{bar}" fill="{colour}"/>')
        parts.append(f'<text x="{x(row.ratio) + 4:.1f}" y="{y + 13}">{row.ratio:.2f}×</text>')
        goal = _goal_ratio(row)
        if goal is not None:
            parts.append(f'<line x1="{x(goal):.1f}" y1="{y - 2}" x2="{x(goal):.1f}" y2="{y + bar + 2}" '
                         f'stroke="black" stroke-width="2"/>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _goal_ratio(row) -> float | None:
    """The goal as a ratio over the floor, whatever form it was set in."""
    if row.max_ratio is not None:
        return row.max_ratio
    if row.floor <= 0:
        return None
    if row.max_seconds is not None:
        return row.max_seconds / row.floor
    if row.min_rate and row.rate:
        return row.ratio * row.rate / row.min_rate  # the ratio at which the rate would equal the goal
    return None
