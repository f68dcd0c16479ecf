"""Delete staged data past its retention, never manifests, never what a run in flight may read."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.housekeeping import Housekeeper, InFlight
from cloudzero_provider.operators.base import CloudZeroStagingOperator
from cloudzero_provider.target import ExportTarget
from cloudzero_provider.windows import utc_now

if TYPE_CHECKING:
    from airflow.sdk import Context

IN_FLIGHT = ["queued", "running"]


class StagingHousekeepingOperator(CloudZeroStagingOperator):
    """
    Delete the staged data of hours and runs older than ``retention_days``, counted back from the end of this
    run's window (its data interval): per-hour and per-run data files, dry-run bodies, the late pass's,
    reconciliation's and retries' leftovers, and temporary files a killed writer left. Manifests are kept (they are
    the ledger); reports are kept for ``report_retention_days``, their raw ``aggregate.jsonl`` only as long as the
    staged data. Works the same on a local folder and on object storage. Returns and logs what it removed per area
    (files, bytes). See :mod:`cloudzero_provider.housekeeping` for what counts as in flight.

    :param retention_days: Days staged data is kept. (templated)
    :param report_retention_days: Days reports are kept. (templated)
    :param more_conn_ids: Other ``cloudzero`` connections whose targets share the staging root (the daily-rollup
        tag stream). (templated)
    :param hourly_dag_id: The DAG that stages at the top of the target, one run per hour (its runs in flight are
        asked by logical date).
    :param pass_tasks: ``{"late": (dag_id, task_id), "reconcile": (dag_id, task_id)}``: the tasks whose pass areas
        are left alone while one of them runs.
    """

    template_fields: Sequence[str] = (
        *CloudZeroStagingOperator.template_fields,
        "retention_days",
        "report_retention_days",
        "more_conn_ids",
    )
    ui_color = "#f2f3f4"

    def __init__(
        self,
        *,
        retention_days: int | str = 30,
        report_retention_days: int | str = 400,
        more_conn_ids: Sequence[str] = (),
        hourly_dag_id: str | None = None,
        pass_tasks: dict[str, tuple[str, str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.retention_days = retention_days
        self.report_retention_days = report_retention_days
        self.more_conn_ids = more_conn_ids
        self.hourly_dag_id = hourly_dag_id
        self.pass_tasks = pass_tasks

    def _in_flight(self, context: Context) -> InFlight:
        ti = context.get("ti")
        if ti is None or not hasattr(ti, "get_dr_count"):
            return InFlight()
        hourly, passes = self.hourly_dag_id, dict(self.pass_tasks or {})

        def hourly_hours(hours: list[datetime]) -> set[datetime]:
            if (
                not hourly
                or not hours
                or not ti.get_dr_count(dag_id=hourly, logical_dates=hours, states=IN_FLIGHT)
            ):
                return set()
            return {h for h in hours if ti.get_dr_count(dag_id=hourly, logical_dates=[h], states=IN_FLIGHT)}

        def run(dag_id: str, run_id: str) -> bool:
            try:
                return str(ti.get_dagrun_state(dag_id=dag_id, run_id=run_id)) in IN_FLIGHT
            except Exception as exc:  # a run Airflow no longer knows is over; anything else: leave it be
                self.log.info("Cannot tell whether run %s of %s is in flight (%s)", run_id, dag_id, exc)
                return "not found" not in str(exc).lower()

        def pass_running(name: str) -> bool:
            if name not in passes:
                return False
            dag_id, task_id = passes[name]
            return bool(ti.get_ti_count(dag_id=dag_id, task_ids=[task_id], states=["running"]))

        return InFlight(hourly_hours=hourly_hours, run=run, pass_running=pass_running)

    def execute(self, context: Context) -> dict[str, Any]:
        window = self.window(context)
        try:
            days, report_days = int(self.retention_days), int(self.report_retention_days)
        except (TypeError, ValueError):
            days = report_days = 0
        if days < 1 or report_days < 1:
            raise AirflowFailException(
                f"retention_days and report_retention_days must be positive whole numbers of days, got "
                f"{self.retention_days!r} and {self.report_retention_days!r}"
            )
        in_flight = self._in_flight(context)
        out: dict[str, Any] = {}
        for conn_id in [self.cloudzero_conn_id, *self.more_conn_ids]:
            target = ExportTarget(conn_id, self.staging_uri or None)
            sweep = Housekeeper(
                target,
                cutoff=window.end - timedelta(days=days),
                report_cutoff=window.end - timedelta(days=report_days),
                now=utc_now(),
                in_flight=in_flight,
            ).run()
            out[conn_id] = sweep.as_xcom()
            self.log.info(
                "Housekeeping of %s up to %s: %s", conn_id, window.end - timedelta(days=days), out[conn_id]
            )
        return out
