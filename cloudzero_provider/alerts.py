"""Breach lists rendered for an alert channel. Pure: no Airflow imports.

Names in a breach (team, user, customer, model) come from LLM callers, so each channel gets them escaped for its
own markup: HTML mail (``<script>``, ``<img onerror>``) and Slack mrkdwn (``<!channel>``, ``<url|text>``). Long
lists are capped with a count, so one bad day cannot produce a megabyte message.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from cloudzero_provider.cbf import safe_value
from cloudzero_provider.report_figures import Breach

MAX_LISTED = 20
MAX_NAME_CHARS = 120


def _line(breach: Breach) -> str:
    key = safe_value(breach.key, MAX_NAME_CHARS)
    who = "total spend" if breach.kind == "daily_total" else f"{breach.kind} {key!r}"
    return f"{breach.day}: {who} spent {breach.spend} USD, over the limit of {breach.limit} USD"


def _capped(breaches: Sequence[Breach], cap: int | None) -> tuple[list[str], int]:
    shown = breaches if cap is None else breaches[:cap]
    return [_line(b) for b in shown], len(breaches) - len(shown)


def as_text(breaches: Sequence[Breach], cap: int | None = MAX_LISTED) -> str:
    """Plain lines (the task's own log lists every breach: ``cap=None``)."""
    lines, more = _capped(breaches, cap)
    return "\n".join(lines + ([f"... and {more} more"] if more else []))


def as_html(breaches: Sequence[Breach], cap: int = MAX_LISTED) -> str:
    """An HTML list; every name escaped."""
    lines, more = _capped(breaches, cap)
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    if more:
        items += f"<li>... and {more} more</li>"
    return f"<ul>{items}</ul>"


def slack_escape(text: str) -> str:
    """Slack's rule for text: ``&``, ``<`` and ``>`` as entities, so no mention or link can be injected."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def as_slack(breaches: Sequence[Breach], cap: int = MAX_LISTED) -> str:
    lines, more = _capped(breaches, cap)
    return "\n".join(f"• {slack_escape(line)}" for line in lines) + (f"\n... and {more} more" if more else "")
