"""The dashboard's charts, drawn on the server as inline SVG: no script, no library, nothing from a CDN."""

import datetime as dt

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from syncservice.models import System

from .selectors import DashboardCharts

SYSTEM_COLOURS = {System.IDAAS: "#2f6fb0", System.WELINK: "#d9822b", System.EMAIL: "#2e7d32"}
SYSTEM_LABELS = dict(System.choices)


def _legend() -> SafeString:
    return format_html('<div class="aps-legend">{}</div>', format_html_join(
        "", '<i style="background:{}"></i>{}', ((SYSTEM_COLOURS[s], SYSTEM_LABELS[s]) for s in System.values)))


def finished_per_hour_chart(charts: DashboardCharts) -> SafeString:
    """Stacked columns, one per hour, one colour per system."""
    width, height, left, bottom, column = 600, 190, 34, 22, 22
    plot = height - bottom - 10
    totals = [sum(counts[n] for counts in charts.finished_per_hour.values()) for n in range(len(charts.hours))]
    top = max(totals) or 1
    shapes = []
    for n, hour in enumerate(charts.hours):
        x = left + n * column
        y = height - bottom
        for system in System.values:
            count = charts.finished_per_hour[system][n]
            if not count:
                continue
            h = count * plot / top
            y -= h
            shapes.append(format_html(
                '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{} {}:00 {}：{}</title></rect>',
                x + 2, f"{y:.1f}", column - 4, f"{h:.1f}", SYSTEM_COLOURS[system], hour.strftime("%m-%d"),
                hour.strftime("%H"), SYSTEM_LABELS[system], count))
        if n % 3 == 0:
            shapes.append(format_html('<text x="{}" y="{}" text-anchor="middle">{}时</text>',
                                      x + column / 2, height - 6, hour.strftime("%H")))
    axis = format_html(
        '<line class="aps-axis" x1="{}" y1="{}" x2="{}" y2="{}"/>'
        '<text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="end">0</text>',
        left, height - bottom, left + len(charts.hours) * column, height - bottom,
        left - 4, height - bottom - plot + 4, top, left - 4, height - bottom)
    return format_html(
        '<svg class="aps-svg-chart" data-chart="finished-per-hour" width="{}" height="{}" viewBox="0 0 {} {}" '
        'role="img" aria-label="近 24 小时每小时完成的任务（按系统）">{}{}</svg>{}',
        width, height, width, height, axis, format_html_join("", "{}", ((s,) for s in shapes)), _legend())


def _horizontal_bars(name: str, label: str, bars: list[tuple[str, float, str, str]], empty: str) -> SafeString:
    """One bar per row: (label, value, the value as text, colour)."""
    if not bars:
        return format_html('<svg class="aps-svg-chart" data-chart="{}" width="360" height="30" role="img" '
                           'aria-label="{}"><text x="0" y="20">{}</text></svg>', name, label, empty)
    row, left, width = 22, 150, 360
    height = row * len(bars) + 6
    top = max(value for _, value, _, _ in bars) or 1
    lengths = [max(value * (width - left - 50) / top, 1) for _, value, _, _ in bars]
    shapes = format_html_join("", (
        '<text x="{}" y="{}" text-anchor="end">{}</text>'
        '<rect x="{}" y="{}" width="{}" height="14" fill="{}"><title>{}：{}</title></rect>'
        '<text x="{}" y="{}">{}</text>'), (
        (left - 6, n * row + 15, text, left, n * row + 4, f"{length:.1f}", colour,
         text, shown, f"{left + length + 4:.1f}", n * row + 15, shown)
        for n, ((text, _, shown, colour), length) in enumerate(zip(bars, lengths, strict=True))))
    return format_html('<svg class="aps-svg-chart" data-chart="{}" width="{}" height="{}" viewBox="0 0 {} {}" '
                       'role="img" aria-label="{}">{}</svg>', name, width, height, width, height, label, shapes)


def failure_reasons_chart(charts: DashboardCharts) -> SafeString:
    bars = [(f"{SYSTEM_LABELS.get(system, system)} · {code or '无代码'}", n, str(n), SYSTEM_COLOURS.get(system, "#888"))
            for system, code, n in charts.failure_reasons]
    return _horizontal_bars("failure-reasons", "失败原因（按目标系统代码）", bars, "暂无失败的任务")


def age_text(age: dt.timedelta) -> str:
    seconds = int(age.total_seconds())
    if seconds < 60:
        return f"{seconds} 秒"
    if seconds < 3600:
        return f"{seconds // 60} 分钟"
    if seconds < 86400:
        return f"{seconds // 3600} 小时 {seconds % 3600 // 60} 分"
    return f"{seconds // 86400} 天 {seconds % 86400 // 3600} 小时"


def oldest_waiting_chart(charts: DashboardCharts) -> SafeString:
    bars = [(SYSTEM_LABELS[system], max(age.total_seconds(), 0), age_text(age), SYSTEM_COLOURS[system])
            for system, age in charts.oldest_waiting.items() if age is not None]
    return _horizontal_bars("oldest-waiting", "最早到期的待执行任务已等待多久（按系统）", bars, "没有到期待执行的任务")
