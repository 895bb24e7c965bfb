"""The report charts: well-formed SVG with accessible text, escaped labels, sane scales."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date, timedelta
from decimal import Decimal

import pytest

from omnichannel.analytics.charts import (
    Series,
    bar_chart,
    format_number,
    line_chart,
    nice_ticks,
)

SVG = "{http://www.w3.org/2000/svg}"
DAYS = [date(2026, 3, 1) + timedelta(days=n) for n in range(30)]


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # noqa: S314  (our own output)


def texts(root: ET.Element) -> list[str]:
    return [element.text or "" for element in root.iter(f"{SVG}text")]


def test_nice_ticks_cover_the_maximum_with_round_steps():
    assert nice_ticks(0) == [0.0, 1.0]
    assert nice_ticks(9) == [0.0, 2.5, 5.0, 7.5, 10.0]
    assert nice_ticks(1234) == [0, 500, 1000, 1500]
    assert nice_ticks(0.07) == pytest.approx([0, 0.02, 0.04, 0.06, 0.08])
    assert nice_ticks(float("nan")) == [0.0, 1.0]


def test_format_number():
    assert [format_number(v) for v in (0, 7, 0.25, 1500, 2_000_000, 1234.5)] == [
        "0",
        "7",
        "0.25",
        "1.5k",
        "2M",
        "1.23k",
    ]


def test_line_chart_is_accessible_svg_with_axes_and_legend():
    sent = [100 + n for n in range(30)]
    clicks = [n % 7 for n in range(30)]
    svg = line_chart(
        "Messages per day",
        DAYS,
        [Series("Sent", sent), Series("Clicked", clicks)],
        y_label="Count",
        x_label="Day (UTC)",
    )
    root = parse(svg)
    assert root.get("role") == "img"
    assert root.get("viewBox", "").startswith("0 0 ")
    assert root.get("width") == "100%"
    title = root.find(f"{SVG}title")
    desc = root.find(f"{SVG}desc")
    assert title is not None and title.text == "Messages per day"
    assert desc is not None and "Sent: 3.44k in all, at most 129 a day" in desc.text
    assert desc.text.startswith("Count per day from 01 March 2026 to 30 March 2026")
    assert root.get("aria-labelledby") == f"{title.get('id')} {desc.get('id')}"
    labels = texts(root)
    assert {"Count", "Day (UTC)", "Sent", "Clicked", "Messages per day"} <= set(labels)
    assert "01 Mar" in labels and len([t for t in labels if t.endswith("Mar")]) <= 6
    lines = root.findall(f".//{SVG}polyline")
    assert len(lines) == 2
    assert all(len(line.get("points").split()) == 30 for line in lines)
    # Points stay within the canvas: the largest value sits on or under the top tick.
    ys = [float(p.split(",")[1]) for line in lines for p in line.get("points").split()]
    assert min(ys) >= 0 and max(ys) <= float(root.get("viewBox").split()[3])


def test_line_chart_with_no_data_and_decimal_values():
    root = parse(
        line_chart("Revenue", DAYS[:3], [Series("Revenue", [Decimal("0")] * 3)], y_label="GBP")
    )
    assert root.find(f"{SVG}title").text == "Revenue"
    root = parse(
        line_chart("Revenue", DAYS[:2], [Series("Revenue", [Decimal("1.5"), 3])], y_label="GBP")
    )
    assert "at most 3 a day" in root.find(f"{SVG}desc").text
    root = parse(line_chart("Empty", [], [], y_label="Count"))
    assert root.find(f"{SVG}desc").text == "Count: no days."


def test_line_chart_rejects_series_of_the_wrong_length():
    with pytest.raises(ValueError, match="2 values for 3 dates"):
        line_chart("x", DAYS[:3], [Series("a", [1, 2])], y_label="y")


def test_bar_chart_funnel_bars_shrink_with_the_values():
    svg = bar_chart(
        "Funnel",
        [("Sent", 1000), ("Delivered", 900), ("Clicked", 50), ("Converted", 0)],
        value_label="Messages",
        notes=["", "90.0% of sent", "5.0% of sent", "0.0% of sent"],
    )
    root = parse(svg)
    widths = [float(rect.get("width")) for rect in root.iter(f"{SVG}rect")]
    assert widths[0] > widths[1] > widths[2] > widths[3] >= 1
    assert "Delivered 900 (90.0% of sent)" in root.find(f"{SVG}desc").text
    assert "Messages" in texts(root)


def test_labels_are_escaped():
    svg = bar_chart('<script>alert("x")</script> & co', [("<b>", 1)], value_label="n")
    assert "<script>" not in svg and "<b>" not in svg
    root = parse(svg)
    assert root.find(f"{SVG}title").text == '<script>alert("x")</script> & co'


def test_bar_chart_needs_one_note_per_bar():
    with pytest.raises(ValueError, match="one note per bar"):
        bar_chart("x", [("a", 1)], value_label="n", notes=[])


def test_two_charts_on_a_page_have_different_ids():
    one = parse(bar_chart("One", [("a", 1)], value_label="n"))
    two = parse(bar_chart("Two", [("a", 1)], value_label="n"))
    assert one.find(f"{SVG}title").get("id") != two.find(f"{SVG}title").get("id")
