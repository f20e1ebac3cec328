"""Bar charts drawn on the server: geometry for an SVG, a one-sentence description and the figures
as a table, so that each chart reads without sight, without script and without colour.

No HTTP here; ``templates/agent/_chart.html`` turns a ``Chart`` into markup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 12, 40  # room for the value axis and the category labels
# Dark enough against white for WCAG's 3:1 for graphics, and told apart by the legend and table.
COLOURS = ("#0b5394", "#b00020", "#7a4f01", "#2e7d32", "#5b2c83", "#00606b")


@dataclass(frozen=True)
class Series:
    name: str
    values: list[int]


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    label: str  # "Succeeded, 2026-11-30: 1,234", the bar's own tooltip and accessible name


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    description: str
    bars: list[Bar]
    ticks: list[Tick]
    categories: list[tuple[float, str]]  # (x of the label's centre, text); crowded axes label every n-th
    legend: list[tuple[str, str]]  # (name, colour)
    columns: list[str]  # the table: a header row, then one row per category
    rows: list[list[str]]
    width: int = WIDTH
    height: int = HEIGHT


def nice_ceiling(value: int) -> int:
    """The axis maximum: 1, 2 or 5 times a power of ten, at least ``value`` (and at least 1)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def bar_chart(
    chart_id: str, title: str, categories: list[str], series: list[Series], unit: str = "", heading: str = "Category"
) -> Chart:
    """Grouped bars: one group per category (a day, an hour, a surface), one bar per series.

    ``heading`` names the categories' column in the table, so every column has a header a screen reader reads.
    """
    top = nice_ceiling(max((v for s in series for v in s.values), default=0))
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    group = plot_width / max(len(categories), 1)
    bar_width = group * 0.8 / max(len(series), 1)
    bars = []
    for n, one in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        for index, (category, value) in enumerate(zip(categories, one.values, strict=True)):
            height = plot_height * value / top
            bars.append(
                Bar(
                    x=round(LEFT + index * group + group * 0.1 + n * bar_width, 1),
                    y=round(TOP + plot_height - height, 1),
                    width=round(bar_width, 1),
                    height=round(height, 1),
                    colour=colour,
                    label=f"{one.name}, {category}: {value:,}",
                )
            )
    # Whole-number gridlines: 10 in fifths, 20 in quarters, 50 in fifths; 1 or 2 in ones.
    divisions = min(top, {1: 5, 2: 4, 5: 5}[int(str(top)[0])])
    ticks = [
        Tick(round(TOP + plot_height * (1 - k / divisions), 1), f"{top * k // divisions:,}")
        for k in range(divisions + 1)
    ]
    every = math.ceil(len(categories) / 12)  # at most a dozen labels under the axis
    labels = [(round(LEFT + (i + 0.5) * group, 1), c) for i, c in enumerate(categories) if i % every == 0]
    totals = ", ".join(f"{sum(s.values):,} {s.name.lower()}" for s in series)
    span = f"from {categories[0]} to {categories[-1]}" if len(categories) > 1 else f"for {categories[0]}"
    description = f"Bar chart of {title[0].lower() + title[1:]} {span}{unit}. In total: {totals}."
    busiest = max(range(len(categories)), key=lambda i: sum(s.values[i] for s in series), default=None)
    if busiest is not None and len(categories) > 1 and any(s.values[busiest] for s in series):
        description += f" Busiest: {categories[busiest]}."
    return Chart(
        id=chart_id,
        title=title,
        description=description,
        bars=bars,
        ticks=ticks,
        categories=labels,
        legend=[(s.name, COLOURS[n % len(COLOURS)]) for n, s in enumerate(series)],
        columns=[heading, *(s.name for s in series)],
        rows=[[c, *(f"{s.values[i]:,}" for s in series)] for i, c in enumerate(categories)],
    )
