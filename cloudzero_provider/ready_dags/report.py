"""``litellm_cloudzero_daily_report``: the daily spend report, charts and limit alerts."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG
from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable

from cloudzero_provider.operators.report import SpendReportOperator, SpendThresholdCheckOperator
from cloudzero_provider.ready_dags.common import (
    REPORT_DAG_ID,
    default_args,
)
from cloudzero_provider.sensors.export import ExportedDaySensor
from cloudzero_provider.settings import ExportSettings


def alert_notifiers(settings: ExportSettings) -> list[Any]:
    """Airflow notifiers for breaches: SmtpNotifier and, when its provider is installed, SlackNotifier."""
    notifiers: list[Any] = []
    day = "{{ data_interval_start.strftime('%Y-%m-%d') }}"  # ds would be the interval's end in Airflow 3
    # Breach names come from LLM callers: each channel gets the list escaped for its own markup (see
    # SpendLimitsBreached); any other failure of the task shows as plain, escaped text.
    html_list = "{{ exception.html if exception.html is defined else (exception | string | e) }}"
    slack_list = "{{ exception.slack if exception.slack is defined else (exception | string | e) }}"
    if settings.alert_email:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        notifiers.append(
            SmtpNotifier(
                to=settings.alert_email,
                subject=f"LiteLLM spend limit crossed ({day})",
                html_content=f"<p>LiteLLM spend limits crossed on {day}:</p>{html_list}",
            )
        )
    if settings.alert_slack_conn_id:
        try:
            from airflow.providers.slack.notifications.slack import SlackNotifier
        except ImportError as exc:
            raise ImportError(
                "CLOUDZERO_ALERT_SLACK_CONN_ID is set but apache-airflow-providers-slack is not installed"
            ) from exc
        notifiers.append(
            SlackNotifier(
                slack_conn_id=settings.alert_slack_conn_id,
                channel=settings.alert_slack_channel,
                text=f"LiteLLM spend limits crossed on {day}:\n{slack_list}",
            )
        )
    return notifiers


def build_report_dag(settings: ExportSettings | None = None) -> DAG:
    settings = settings or ExportSettings.from_env()
    doc = f"""
# LiteLLM daily spend report and limits

For each UTC day (`catchup=True`): `wait_for_export` waits (rescheduling, no worker slot held) until every hour
of the day that has spend has been exported -- the same hours the hourly export's Asset events announce -- then
`report` writes, from the same PostgreSQL aggregate as the export, spend by team, customer, API key alias,
internal user, model and request tag (each with a per-model breakdown), daily totals and cost per 1,000 tokens per
model: `report.json`, one CSV per grouping and a self-contained `report.html` with charts, in
`<staging>/{settings.cloudzero_conn_id}/reports/<day>/`. The export ledger page (Browse -> CloudZero ledger) links the latest reports.

`check_limits` (only when `CLOUDZERO_ALERT_LIMITS` is set) fails listing every breach -- a day's spend strictly
over a limit -- and calls the configured notifiers (SmtpNotifier, SlackNotifier). No breach, no noise.

**Settings**:

{settings.table()}
"""
    with DAG(
        dag_id=REPORT_DAG_ID,
        schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
        start_date=settings.start_date,
        catchup=True,
        max_active_runs=2,
        default_args=default_args(settings),
        doc_md=doc,
        tags=["cloudzero", "litellm", "finops", "report"],
    ) as dag:
        # Rescheduling, not deferring: a poke that finds everything exported succeeds in the same process, and
        # a wait hands the slot back for poke_interval (minutes), far from the resume race of a deferral.
        wait_for_export = ExportedDaySensor(
            task_id="wait_for_export",
            mode="reschedule",
            poke_interval=300,
            timeout=6 * 3600,
        )
        report = SpendReportOperator(task_id="report", tag_prefixes=settings.report_tag_prefixes)
        wait_for_export >> report
        if settings.alert_limits:
            check_limits = SpendThresholdCheckOperator(
                task_id="check_limits",
                limits=settings.alert_limits,
                retries=0,
                # its own notice, the breach list: not also the generic "failed" one
                on_failure_callback=alert_notifiers(settings) or None,
            )
            report >> check_limits
    return dag
