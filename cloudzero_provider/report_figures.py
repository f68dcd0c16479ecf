"""Spend reports and threshold checks from aggregated LiteLLM spend. Pure: no Airflow imports.

The same grouping LiteLLM's ``/global/spend/report`` offers -- by team, customer (end user), API key (alias),
internal user, model and request tag, each with a per-model breakdown -- plus daily totals and cost per 1,000
tokens per model. Every figure is an exact decimal string summed from the same aggregate the export uses.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cloudzero_provider.cbf import EXACT, OTHER, exact_decimal, safe_value
from cloudzero_provider.windows import day_label, iso_hour, parse_day, short_day_label

REPORT_DIMENSIONS = ["team_id", "team_alias", "end_user", "api_key_alias", "user", "model", "provider"]
GROUPINGS = {
    "team": "team_id",
    "customer": "end_user",
    "api_key": "api_key_alias",
    "user": "user",
    "model": "model",
}
ALERT_KINDS = {"team": "team_id", "user": "user", "customer": "end_user", "model": "model"}
NONE_LABEL = "(none)"
# Groups one grouping lists (CSV, JSON) before the rest are summed into (other): names come from LLM callers,
# and a day of a million distinct customers must not make a million-line report.
MAX_GROUPS = 1000


@dataclass
class _Acc:
    spend: Decimal = Decimal(0)
    requests: int = 0
    tokens: int = 0

    def add(self, spend: str, requests: int, tokens: int) -> None:
        self.spend = EXACT.add(self.spend, Decimal(spend))
        self.requests += requests
        self.tokens += tokens

    def out(self) -> dict[str, Any]:
        return {"spend": exact_decimal(self.spend), "requests": self.requests, "tokens": self.tokens}


def _per_1k(spend: Decimal, tokens: int) -> str:
    if not tokens:
        return "n/a"
    return f"{(spend * 1000 / tokens):.6f}"


def _name(value: Any) -> str:
    """A name as the report shows it: cut like a CBF value (control characters out, 256 characters plus a hash),
    so one caller's 4 MB name cannot make a 16 MB report; distinct names stay distinct."""
    return safe_value(str(value)) if value else NONE_LABEL


def build_report(
    rows: Iterable[Mapping[str, Any]], *, tag_prefixes: Sequence[str] = (), max_groups: int = MAX_GROUPS
) -> dict[str, Any]:
    """Aggregated rows (``hour`` a datetime, ``dims``, ``spend``, ``requests``, ``total_tokens``) -> the report dict.

    Names are cut (see :func:`_name`); each grouping lists its ``max_groups`` groups with the most spend and sums
    the rest into one ``(other)`` group, so every total stays exact."""
    total = _Acc()
    days: dict[str, _Acc] = {}
    hours: dict[str, _Acc] = {}
    groupings = {**GROUPINGS, **{f"tag:{p}": f"tag:{p}" for p in tag_prefixes}}
    groups: dict[str, dict[str, _Acc]] = {g: {} for g in groupings}
    by_model: dict[str, dict[str, dict[str, _Acc]]] = {g: {} for g in groupings}
    labels: dict[str, str] = {}
    for row in rows:
        dims = row["dims"]
        args = (str(row["spend"]), int(row["requests"]), int(row["total_tokens"]))
        total.add(*args)
        days.setdefault(day_label(row["hour"]), _Acc()).add(*args)
        hours.setdefault(iso_hour(row["hour"]), _Acc()).add(*args)
        model = _name(dims.get("model"))
        for grouping, dim in groupings.items():
            key = _name(dims.get(dim))
            groups[grouping].setdefault(key, _Acc()).add(*args)
            by_model[grouping].setdefault(key, {}).setdefault(model, _Acc()).add(*args)
        if dims.get("team_id") and dims.get("team_alias"):
            labels[_name(dims["team_id"])] = _name(dims["team_alias"])
    for grouping in groupings:
        _fold_groups(groups[grouping], by_model[grouping], max_groups)

    def ranked(grouping: str) -> list[dict[str, Any]]:
        out = []
        for key, acc in sorted(groups[grouping].items(), key=lambda kv: (-kv[1].spend, kv[0])):
            models = sorted(by_model[grouping][key].items(), key=lambda kv: (-kv[1].spend, kv[0]))
            out.append({
                "key": key,
                "label": labels.get(key, key) if grouping == "team" else key,
                **acc.out(),
                "models": [{"model": m, **a.out()} for m, a in models],
            })  # fmt: skip
        return out

    return {
        "totals": total.out(),
        "days": [{"day": d, **a.out()} for d, a in sorted(days.items())],
        "hours": [{"hour": h, **a.out()} for h, a in sorted(hours.items())],
        "groups": {g: ranked(g) for g in groupings},
        "cost_per_1k_tokens": [
            {
                "model": m,
                "spend": exact_decimal(a.spend),
                "tokens": a.tokens,
                "usd_per_1k_tokens": _per_1k(a.spend, a.tokens),
            }
            for m, a in sorted(groups["model"].items(), key=lambda kv: (-kv[1].spend, kv[0]))
        ],
    }


def _fold_groups(groups: dict[str, _Acc], models: dict[str, dict[str, _Acc]], cap: int) -> None:
    """Keep the ``cap`` groups with the most spend; the rest are summed into ``(other)`` (in place)."""
    if len(groups) <= cap:
        return
    other, other_models = groups.pop(OTHER, None) or _Acc(), models.pop(OTHER, {})
    ranked = sorted(groups, key=lambda k: (-groups[k].spend, k))
    for key in ranked[cap - 1 :]:
        acc = groups.pop(key)
        other.add(str(acc.spend), acc.requests, acc.tokens)
        for model, macc in models.pop(key, {}).items():
            other_models.setdefault(model, _Acc()).add(str(macc.spend), macc.requests, macc.tokens)
    groups[OTHER] = other
    if models or other_models:
        models[OTHER] = other_models


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """OWASP's CSV-injection rule: a text cell a spreadsheet would run as a formula gets a leading ``'``.

    Names come from LLM callers (``=HYPERLINK(...)`` as a ``user``); numbers such as ``-1.5`` stay numbers.
    """
    if not isinstance(value, str) or not value.startswith(_FORMULA_START):
        return value
    try:
        if Decimal(value).is_finite():
            return value
    except ArithmeticError:
        pass
    return "'" + value


class _SafeWriter:
    """A csv writer whose every cell passes :func:`csv_cell`."""

    def __init__(self, buf: io.StringIO) -> None:
        self._writer = csv.writer(buf)

    def writerow(self, row: Sequence[Any]) -> None:
        self._writer.writerow([csv_cell(v) for v in row])


def report_csv(report: Mapping[str, Any], grouping: str) -> str:
    """One grouping as CSV: a total line per group, then its per-model lines. No cell starts a formula."""
    buf = io.StringIO()
    writer = _SafeWriter(buf)
    writer.writerow([grouping, "label", "model", "spend_usd", "requests", "tokens"])
    for group in report["groups"][grouping]:
        writer.writerow(
            [group["key"], group["label"], "(all)", group["spend"], group["requests"], group["tokens"]]
        )
        for m in group["models"]:
            writer.writerow(
                [group["key"], group["label"], m["model"], m["spend"], m["requests"], m["tokens"]]
            )
    return buf.getvalue()


# -- thresholds -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Breach:
    kind: str  # daily_total | team | user | customer | model
    key: str
    day: str
    spend: str
    limit: str

    def __str__(self) -> str:
        who = "total spend" if self.kind == "daily_total" else f"{self.kind} {self.key!r}"
        return f"{self.day}: {who} spent {self.spend} USD, over the limit of {self.limit} USD"


def check_limits(rows: Iterable[Mapping[str, Any]], limits: Mapping[str, str | int | float]) -> list[Breach]:
    """Every (day, kind, key) whose spend is strictly over its limit; at the limit is not a breach.

    ``rows``: aggregated rows, ``hour`` a datetime. ``limits``: ``daily_total`` and/or ``team``, ``user``,
    ``customer``, ``model`` -> USD per day.
    """
    unknown = set(limits) - {"daily_total", *ALERT_KINDS}
    if unknown:
        raise ValueError(
            f"unknown limit kind(s) {sorted(unknown)}; use daily_total, {', '.join(ALERT_KINDS)}"
        )
    caps = {k: Decimal(str(v)) for k, v in limits.items()}
    spend: dict[tuple[str, str, str], Decimal] = {}
    for row in rows:
        day, amount = day_label(row["hour"]), Decimal(str(row["spend"]))
        keys = [("daily_total", "")] + [(k, row["dims"].get(d) or NONE_LABEL) for k, d in ALERT_KINDS.items()]
        for kind, key in keys:
            if kind in caps:
                spend[(day, kind, key)] = EXACT.add(spend.get((day, kind, key), Decimal(0)), amount)
    return [
        Breach(kind, key, day, exact_decimal(value), exact_decimal(caps[kind]))
        for (day, kind, key), value in sorted(spend.items())
        if value > caps[kind]
    ]


# -- HTML -------------------------------------------------------------------------------------------------


def _bar_chart(title: str, items: Sequence[tuple[str, Decimal]], chart_id: str, width: int = 560) -> str:
    if not items:
        return (
            f'<figure id="{chart_id}"><figcaption>{html.escape(title)}</figcaption><p>No spend.</p></figure>'
        )
    top = max(v for _, v in items) or Decimal(1)
    bar_h, gap, label_w = 22, 6, 170
    height = len(items) * (bar_h + gap) + 10
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">']
    for i, (label, value) in enumerate(items):
        y = 5 + i * (bar_h + gap)
        w = max(1, int((width - label_w - 120) * (value / top)))
        parts.append(
            f'<text x="0" y="{y + 15}" font-size="12">{html.escape(label[:26])}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" fill="#2e86c1"></rect>'
            f'<text x="{label_w + w + 6}" y="{y + 15}" font-size="12">${exact_decimal(value)}</text>'
        )
    parts.append("</svg>")
    return f'<figure id="{chart_id}"><figcaption>{html.escape(title)}</figcaption>{"".join(parts)}</figure>'


def _line_chart(title: str, points: Sequence[tuple[str, Decimal]], chart_id: str) -> str:
    if not points:
        return (
            f'<figure id="{chart_id}"><figcaption>{html.escape(title)}</figcaption><p>No spend.</p></figure>'
        )
    width, height, pad = 560, 200, 40
    top = max(v for _, v in points) or Decimal(1)
    step = (width - 2 * pad) / max(len(points) - 1, 1)
    coords = [
        (pad + i * step, height - pad - float(v / top) * (height - 2 * pad))
        for i, (_, v) in enumerate(points)
    ]
    poly = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="#1f618d"></circle>'
        f'<text x="{x:.1f}" y="{height - 12}" font-size="11" text-anchor="middle">{html.escape(label)}</text>'
        f'<text x="{x:.1f}" y="{y - 8:.1f}" font-size="11" text-anchor="middle">${exact_decimal(v)}</text>'
        for (x, y), (label, v) in zip(coords, points, strict=True)
    )
    svg = (f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">'
           f'<polyline points="{poly}" fill="none" stroke="#2e86c1" stroke-width="2"></polyline>{dots}</svg>')  # fmt: skip
    return f'<figure id="{chart_id}"><figcaption>{html.escape(title)}</figcaption>{svg}</figure>'


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r.get(key, '')))}</td>" for key, _ in columns) + "</tr>"
        for r in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def report_html(report: Mapping[str, Any], *, title: str, trend: Sequence[tuple[str, Decimal]] = ()) -> str:
    """A self-contained page (inline CSS and SVG, no scripts or external files) with charts and tables.

    :param trend: ``(YYYY-MM-DD, spend)`` per day for the daily chart; default: the report's own days.
    """
    totals = report["totals"]
    points = list(trend) or [(d["day"], Decimal(d["spend"])) for d in report["days"]]
    trend = [(short_day_label(parse_day(day)), spend) for day, spend in points]
    models = [(m["model"], Decimal(m["spend"])) for m in report["cost_per_1k_tokens"]][:10]
    teams = [(g["label"], Decimal(g["spend"])) for g in report["groups"]["team"]][:10]
    customers = [(g["key"], Decimal(g["spend"])) for g in report["groups"]["customer"]][:10]
    sections = []
    for grouping, groups in report["groups"].items():
        rows = [
            {**g, "models": ", ".join(f"{m['model']} ${m['spend']}" for m in g["models"][:4])}
            for g in groups[:25]
        ]
        sections.append(
            f"<h2>By {html.escape(grouping)}</h2>"
            + _table(
                rows,
                [
                    ("label", grouping),
                    ("spend", "spend (USD)"),
                    ("requests", "requests"),
                    ("tokens", "tokens"),
                    ("models", "top models"),
                ],
                f"by-{grouping}",
            )
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body{{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b2631}}
h1{{font-size:22px}} h2{{font-size:17px;margin-top:28px}} figure{{display:inline-block;margin:8px 24px 8px 0;vertical-align:top}}
figcaption{{font-weight:600;margin-bottom:6px}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #d5d8dc;padding:4px 8px;text-align:left}} th{{background:#eaf2f8}}
.kpi{{display:inline-block;margin-right:32px}} .kpi b{{display:block;font-size:22px}}
</style></head><body>
<h1>{html.escape(title)}</h1>
<div id="totals"><span class="kpi">Total spend<b id="total-spend">${totals["spend"]}</b></span>
<span class="kpi">Requests<b id="total-requests">{totals["requests"]:,}</b></span>
<span class="kpi">Tokens<b id="total-tokens">{totals["tokens"]:,}</b></span></div>
{_line_chart("Daily spend (USD)", trend, "chart-daily")}
{_bar_chart("Spend by model (USD)", models, "chart-models")}
{_bar_chart("Top teams (USD)", teams, "chart-teams")}
{_bar_chart("Top customers (USD)", customers, "chart-customers")}
<h2>Cost per 1,000 tokens by model</h2>
{
        _table(
            report["cost_per_1k_tokens"],
            [
                ("model", "model"),
                ("spend", "spend (USD)"),
                ("tokens", "tokens"),
                ("usd_per_1k_tokens", "USD / 1k tokens"),
            ],
            "cost-per-1k",
        )
    }
{"".join(sections)}
</body></html>
"""
