"""Charts of the reports as inline SVG, drawn on the server: no JavaScript, no CDN.

Two kinds, enough for the campaign report: a line chart of daily series and a horizontal bar
chart (the funnel). Each chart is an ``<svg role="img">`` whose ``<title>`` and ``<desc>`` carry
the figures in words for screen readers; it scales to its container (``viewBox``, width 100%),
and its geometry is sized for a phone's width: few, large labels.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

#: Canvas in SVG units; the browser scales it to the container's width.
WIDTH = 420
PLOT_HEIGHT = 170
FONT_SIZE = 13
MARGIN_LEFT = 56
MARGIN_RIGHT = 14
MARGIN_TOP = 34

#: Colours distinguishable with common colour blindness (Okabe-Ito); lines differ in dash too.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9")
DASHES = ("", "6 3", "2 3", "8 3 2 3", "4 4", "1 2")

Number = int | float | Decimal


@dataclass(frozen=True)
class Series:
    """A named line: one value per x position."""

    name: str
    values: Sequence[Number]


def nice_ticks(maximum: float, count: int = 4) -> list[float]:
    """Round tick values from 0 to at least ``maximum`` (1, 2, 2.5 or 5 times a power of 10)."""
    if maximum <= 0 or not math.isfinite(maximum):
        return [0.0, 1.0]
    raw = maximum / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    ticks = [0.0]
    while ticks[-1] < maximum:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def format_number(value: float) -> str:
    """Short axis label: 1200 -> 1.2k, 3000000 -> 3M, 0.5 -> 0.5."""
    magnitude = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}" if value != int(value) else str(int(value))


def _text(x: float, y: float, text: str, *, anchor: str = "middle", **attrs: str) -> str:
    extra = "".join(f' {name.replace("_", "-")}="{escape(value)}"' for name, value in attrs.items())
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{escape(text)}</text>'


def _svg(
    title: str, description: str, body: list[str], *, height: int, css_class: str
) -> SafeString:
    # Ids must be unique on a page with several charts: derive them from the content.
    uid = "oc-chart-" + hashlib.sha256(f"{title}\n{description}".encode()).hexdigest()[:10]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="oc-chart {css_class}" role="img" '
        f'viewBox="0 0 {WIDTH} {height}" width="100%" preserveAspectRatio="xMidYMid meet" '
        f'aria-labelledby="{uid}-title {uid}-desc" font-family="sans-serif" '
        f'font-size="{FONT_SIZE}">',
        f'<title id="{uid}-title">{escape(title)}</title>',
        f'<desc id="{uid}-desc">{escape(description)}</desc>',
        _text(WIDTH / 2, 20, title, font_weight="bold", class_="oc-chart-title"),
        *body,
        "</svg>",
    ]
    return mark_safe("".join(parts))  # noqa: S308  (every text above went through escape)


def line_chart(
    title: str,
    dates: Sequence[date],
    series: Sequence[Series],
    *,
    y_label: str,
    x_label: str = "",
) -> SafeString:
    """Daily series as lines over ``dates``, with axes, ticks, axis labels and a legend."""
    for line in series:
        if len(line.values) != len(dates):
            raise ValueError(
                f"series {line.name!r} has {len(line.values)} values for {len(dates)} dates"
            )
    legend_rows = max(math.ceil(len(series) / 3), 1)
    left, right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    top, bottom = MARGIN_TOP, MARGIN_TOP + PLOT_HEIGHT
    # Under the plot: the dates, the axis label, then the legend, one row per three series.
    legend_top = bottom + 56
    height = legend_top + 18 * (legend_rows - 1) + 12
    maximum = max((float(v) for line in series for v in line.values), default=0.0)
    ticks = nice_ticks(maximum)
    top_value = ticks[-1]

    def x_at(index: int) -> float:
        if len(dates) <= 1:
            return (left + right) / 2
        return left + (right - left) * index / (len(dates) - 1)

    def y_at(value: Number) -> float:
        return bottom - (bottom - top) * float(value) / top_value

    body = ['<g class="oc-chart-grid" stroke="#ccc" stroke-width="1">']
    for tick in ticks:
        body.append(f'<line x1="{left}" x2="{right}" y1="{y_at(tick):.1f}" y2="{y_at(tick):.1f}"/>')
    body.append("</g>")
    body.append('<g class="oc-chart-y-ticks" fill="#333">')
    for tick in ticks:
        body.append(_text(left - 6, y_at(tick) + 4, format_number(tick), anchor="end"))
    body.append("</g>")
    # At most six dates under the axis: more would overlap on a phone.
    label_every = max(1, math.ceil(len(dates) / 6))
    body.append('<g class="oc-chart-x-ticks" fill="#333">')
    for index, day in enumerate(dates):
        if index % label_every == 0:
            # The last date sits on the right edge: end it there rather than cut it.
            anchor = "end" if index == len(dates) - 1 and len(dates) > 1 else "middle"
            body.append(_text(x_at(index), bottom + 16, day.strftime("%d %b"), anchor=anchor))
    body.append("</g>")
    body.append(
        f'<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#333"/>'
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{bottom}" stroke="#333"/>'
    )
    if x_label:
        body.append(_text((left + right) / 2, bottom + 34, x_label, class_="oc-chart-x-label"))
    body.append(
        _text(
            14,
            (top + bottom) / 2,
            y_label,
            transform=f"rotate(-90 14 {(top + bottom) / 2:.1f})",
            class_="oc-chart-y-label",
        )
    )
    for n, line in enumerate(series):
        color, dash = PALETTE[n % len(PALETTE)], DASHES[n % len(DASHES)]
        points = " ".join(f"{x_at(i):.1f},{y_at(v):.1f}" for i, v in enumerate(line.values))
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        body.append(
            f'<g class="oc-chart-series" data-series="{escape(line.name)}">'
            f'<polyline fill="none" stroke="{color}" stroke-width="2.5"{dash_attr} '
            f'points="{points}"/>'
        )
        if len(dates) <= 62:  # a dot per day with its value on hover; more would be a smear
            for i, value in enumerate(line.values):
                body.append(
                    f'<circle cx="{x_at(i):.1f}" cy="{y_at(value):.1f}" r="2.5" fill="{color}">'
                    f"<title>{escape(line.name)}, {dates[i]:%d %b %Y}: {escape(str(value))}</title>"
                    "</circle>"
                )
        body.append("</g>")
    body.append('<g class="oc-chart-legend">')
    column = (WIDTH - MARGIN_LEFT) / 3
    for n, line in enumerate(series):
        color, dash = PALETTE[n % len(PALETTE)], DASHES[n % len(DASHES)]
        x = MARGIN_LEFT + column * (n % 3)
        y = legend_top + 18 * (n // 3)
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        body.append(
            f'<line x1="{x:.1f}" x2="{x + 22:.1f}" y1="{y - 4:.1f}" y2="{y - 4:.1f}" '
            f'stroke="{color}" stroke-width="2.5"{dash_attr}/>'
            + _text(x + 28, y, line.name, anchor="start")
        )
    body.append("</g>")
    if dates:
        totals = ", ".join(
            f"{line.name}: {format_number(float(sum(line.values, 0)))} in all, "
            f"at most {format_number(max(float(v) for v in line.values))} a day"
            for line in series
        )
        description = (
            f"{y_label} per day from {dates[0]:%d %B %Y} to {dates[-1]:%d %B %Y}. {totals}."
        )
    else:
        description = f"{y_label}: no days."
    return _svg(title, description, body, height=height, css_class="oc-line-chart")


def bar_chart(
    title: str,
    bars: Sequence[tuple[str, Number]],
    *,
    value_label: str,
    notes: Sequence[str] | None = None,
) -> SafeString:
    """Horizontal bars, one per (label, value), each with its value (and note) written beside it.

    ``notes`` (optional, one per bar) are short texts such as "48% of sent" shown after the
    value. Horizontal bars keep long labels readable on a narrow screen.
    """
    if notes is not None and len(notes) != len(bars):
        raise ValueError("one note per bar")
    bar_height, gap, label_width = 26, 12, 100
    top = MARGIN_TOP + 4
    height = top + len(bars) * (bar_height + gap) + 28
    left, right = label_width + 8, WIDTH - MARGIN_RIGHT
    maximum = max((float(value) for _label, value in bars), default=0.0)
    body = []
    words = []
    for n, (label, value) in enumerate(bars):
        y = top + n * (bar_height + gap)
        # The text after the bar needs about 150 units: the bar shares what is left.
        length = (right - left - 150) * float(value) / maximum if maximum else 0
        note = notes[n] if notes else ""
        text = format_number(float(value)) + (f" ({note})" if note else "")
        body.append(
            f'<g class="oc-chart-bar" data-label="{escape(label)}">'
            + _text(label_width, y + bar_height / 2 + 4, label, anchor="end")
            + f'<rect x="{left}" y="{y}" width="{max(length, 1):.1f}" height="{bar_height}" '
            f'fill="{PALETTE[0]}"><title>{escape(label)}: {escape(text)}</title></rect>'
            + _text(left + max(length, 1) + 6, y + bar_height / 2 + 4, text, anchor="start")
            + "</g>"
        )
        words.append(f"{label} {text}")
    axis_y = top + len(bars) * (bar_height + gap) - gap / 2
    body.append(f'<line x1="{left}" x2="{left}" y1="{top - 4}" y2="{axis_y:.1f}" stroke="#333"/>')
    body.append(_text((left + right) / 2, axis_y + 20, value_label, class_="oc-chart-x-label"))
    description = f"{value_label}: " + "; ".join(words) + "." if words else f"{value_label}: none."
    return _svg(title, description, body, height=int(height), css_class="oc-bar-chart")
