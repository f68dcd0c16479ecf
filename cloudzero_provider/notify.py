"""Telling a human: one set of notifier settings for every ready DAG, messages escaped per channel and capped.

The settings are today's ``CLOUDZERO_ALERT_EMAIL`` (``SmtpNotifier`` through the ``smtp_default`` connection) and
``CLOUDZERO_ALERT_SLACK_CONN_ID`` / ``CLOUDZERO_ALERT_SLACK_CHANNEL`` (``SlackNotifier``). With neither set,
nothing is sent: no setting, no noise. What is said: a run failed after its retries (DAG, hour or window, reason);
a reconciliation repaired hours (how many, USD moved) or found hours it cannot repair or that were purged at the
source; the newest exported hour lags more than ``CLOUDZERO_MAX_LAG_HOURS`` behind now.

Messages carry values from LLM callers (names in a reason) and from the source: every line is escaped for its
channel (HTML mail, Slack mrkdwn), cut, and the list capped; the text is handed to each notifier's ``notify``
directly, never rendered as a template, so nothing in it is evaluated.
"""

from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from cloudzero_provider.alerts import MAX_LISTED, slack_escape

log = logging.getLogger(__name__)

MAX_LINE_CHARS = 500
MAX_SUBJECT_CHARS = 160
_BREAKS = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class Channels:
    """Where notices go: mail addresses (``smtp_default``) and a Slack connection and channel."""

    email: tuple[str, ...] = ()
    slack_conn_id: str | None = None
    slack_channel: str = "#finops"

    @classmethod
    def from_settings(cls, settings: Any) -> Channels:
        return cls(
            tuple(settings.alert_email or ()), settings.alert_slack_conn_id, settings.alert_slack_channel
        )

    @property
    def any(self) -> bool:
        return bool(self.email or self.slack_conn_id)


@dataclass
class Notice:
    """A subject and plain-text lines; each channel escapes them its own way."""

    subject: str
    lines: list[str] = field(default_factory=list)

    def _lines(self) -> tuple[list[str], int]:
        shown = [_cut(line) for line in self.lines[:MAX_LISTED]]
        return shown, len(self.lines) - len(shown)

    @property
    def clean_subject(self) -> str:
        """One line (no header can be injected), cut."""
        return _cut(_BREAKS.sub(" ", self.subject), MAX_SUBJECT_CHARS)

    def as_html(self) -> str:
        lines, more = self._lines()
        items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
        if more:
            items += f"<li>... and {more} more</li>"
        return f"<p>{html.escape(self.clean_subject)}</p><ul>{items}</ul>"

    def as_slack(self) -> str:
        lines, more = self._lines()
        body = "\n".join(f"• {slack_escape(line)}" for line in lines) + (
            f"\n... and {more} more" if more else ""
        )
        return f"*{slack_escape(self.clean_subject)}*\n{body}"

    def as_text(self) -> str:
        return "; ".join([self.clean_subject, *self.lines])


def _cut(text: str, limit: int = MAX_LINE_CHARS) -> str:
    text = _BREAKS.sub(" ", str(text))
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def send(channels: Channels, notice: Notice, context: Any) -> int:
    """Send a notice to every configured channel; returns how many took it. Without channels it is only logged."""
    log.warning("%s", notice.as_text()[:2000])
    sent = 0
    if channels.email:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        SmtpNotifier(
            to=list(channels.email), subject=notice.clean_subject, html_content=notice.as_html()
        ).notify(context)
        sent += 1
    if channels.slack_conn_id:
        try:
            from airflow.providers.slack.notifications.slack import SlackNotifier
        except ImportError as exc:
            raise ImportError(
                "CLOUDZERO_ALERT_SLACK_CONN_ID is set but apache-airflow-providers-slack is not installed"
            ) from exc
        SlackNotifier(
            slack_conn_id=channels.slack_conn_id, channel=channels.slack_channel, text=notice.as_slack()
        ).notify(context)
        sent += 1
    return sent


def failure_callback(channels: Channels) -> Any:
    """An ``on_failure_callback`` (it runs once a task has failed after its retries): DAG, hour or window, task,
    try and reason. It never raises: a callback must not hide the task's own failure."""

    def callback(context: Any) -> None:
        if not channels.any:
            return
        try:
            ti = context.get("ti")
            dag_id = getattr(ti, "dag_id", "?")
            task_id = getattr(ti, "task_id", "?")
            start, end = context.get("data_interval_start"), context.get("data_interval_end")
            params = context.get("params") or {}
            window = (
                f"{params.get('start')} to {params.get('end')}"
                if params.get("start")
                else (f"{start} to {end}" if start and end and start != end else "no window")
            )
            notice = Notice(
                f"LiteLLM -> CloudZero: {dag_id} failed ({task_id})",
                [
                    f"DAG {dag_id}, run {context.get('run_id')}",
                    f"window {window}",
                    f"task {task_id}, try {getattr(ti, 'try_number', '?')}, map index {getattr(ti, 'map_index', -1)}",
                    f"reason: {context.get('exception') or 'see the task log'}",
                ],
            )
            send(channels, notice, context)
        except Exception:
            log.exception("Could not send the failure notice of %s", context.get("run_id"))

    return callback


def reconciliation_notice(summary: dict[str, Any] | None) -> Notice | None:
    """What a reconciliation changed or could not change, worth a human's look; ``None`` when it only matched."""
    if not summary:
        return None
    changed = list(summary.get("hours_changed") or [])
    purged = list(summary.get("purged_at_source") or [])
    kept = list(summary.get("foreign_kept") or [])
    if not (changed or purged or kept):
        return None
    lines = [
        f"window {summary.get('window')}: {summary.get('hours_checked')} hour(s) checked ({summary.get('basis')})"
    ]
    if changed:
        lines.append(
            f"{len(changed)} hour(s) repaired or cleared, {summary.get('usd_moved')} USD moved: {', '.join(changed)}"
        )
    if purged:
        lines.append(
            f"{len(purged)} hour(s) purged at the source, left as CloudZero holds them: {', '.join(purged)}"
        )
    if kept:
        lines.append(
            f"{len(kept)} hour(s) hold cost another writer sent, kept (remove_foreign is off): {', '.join(kept)}"
        )
    return Notice(
        f"LiteLLM -> CloudZero: reconciliation of {summary.get('window')} changed or found hours", lines
    )


def lag_notice(conn_id: str, newest: str | None, lag_hours: float, max_lag_hours: int) -> Notice:
    return Notice(
        f"LiteLLM -> CloudZero: export of {conn_id} is {lag_hours:.0f} hours behind",
        [
            f"newest hour exported: {newest or 'none yet'}",
            f"lag {lag_hours:.1f} h, over CLOUDZERO_MAX_LAG_HOURS = {max_lag_hours}",
            "look at the hourly DAG's failed or queued runs, the pool and the workers",
        ],
    )
