"""The bases of the CloudZero operators: the arguments they share, declared once.

Modelled on common.sql's ``BaseSQLOperator``: connection ids, database schema and window are template fields
here, hooks are built from them in ``execute``, never in ``__init__``. :class:`CloudZeroStagingOperator` adds what
only the operators that stage files use: the staging root, the run's staging area and the export target.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import AssetAlias, BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.hooks.cloudzero import CloudZeroHook
from cloudzero_provider.hooks.litellm import LiteLLMSpendHook
from cloudzero_provider.manifests import Attempt
from cloudzero_provider.options import ExportOptions
from cloudzero_provider.staging import WindowStage
from cloudzero_provider.target import ExportTarget
from cloudzero_provider.windows import Window, iso_hour

if TYPE_CHECKING:
    from airflow.sdk import Context


def resolve_window(start: Any, end: Any, context: Context | dict[str, Any]) -> Window:
    """
    The task's window ``[start, end)``.

    :param start: Explicit start (ISO-8601 string or datetime), or ``None`` to use the data interval.
    :param end: Explicit end; with a start and no end, the window is the one hour from ``start``.
    :param context: The task context, for ``data_interval_start`` / ``data_interval_end``.
    """
    try:
        if start:
            return Window.of(start, end) if end else Window.hour(start)
        interval_start = context.get("data_interval_start")
        interval_end = context.get("data_interval_end")
        if interval_start is None or interval_end is None or interval_start == interval_end:
            raise AirflowFailException(
                "No window to work on: this run has no data interval (a manual run without a logical date, or a "
                "zero-length interval from a cron schedule) and no window_start was given. Trigger the "
                "litellm_cloudzero_range DAG with start and end, or schedule with CronDataIntervalTimetable."
            )
        return Window.of(interval_start, interval_end)
    except ValueError as exc:
        raise AirflowFailException(f"Invalid window: {exc}") from None


class CloudZeroBaseOperator(BaseOperator):
    """
    Arguments every CloudZero operator shares.

    :param litellm_conn_id: Connection to the LiteLLM PostgreSQL database. (templated)
    :param cloudzero_conn_id: The ``cloudzero`` connection. (templated)
    :param db_schema: PostgreSQL schema of LiteLLM's tables. (templated)
    :param window_start: Start of the window (ISO-8601, hour-aligned); default: the data interval. (templated)
    :param window_end: End of the window (exclusive); default: one hour after ``window_start``. (templated)
    """

    template_fields: Sequence[str] = (
        "litellm_conn_id",
        "cloudzero_conn_id",
        "db_schema",
        "window_start",
        "window_end",
    )

    def __init__(
        self,
        *,
        litellm_conn_id: str = LiteLLMSpendHook.default_conn_name,
        cloudzero_conn_id: str = CloudZeroHook.default_conn_name,
        db_schema: str = "public",
        window_start: Any = None,
        window_end: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.litellm_conn_id = litellm_conn_id
        self.cloudzero_conn_id = cloudzero_conn_id
        self.db_schema = db_schema
        self.window_start = window_start
        self.window_end = window_end

    def on_kill(self) -> None:
        """A stopped task stops its statement on the LiteLLM database too, instead of leaving it running."""
        hook = self.__dict__.get("litellm_hook")
        if hook is not None:
            hook.cancel()

    def window(self, context: Context | dict[str, Any]) -> Window:
        return resolve_window(self.window_start, self.window_end, context)

    @cached_property
    def litellm_hook(self) -> LiteLLMSpendHook:
        return LiteLLMSpendHook(postgres_conn_id=self.litellm_conn_id, db_schema=self.db_schema)

    @cached_property
    def cloudzero_hook(self) -> CloudZeroHook:
        return CloudZeroHook(self.cloudzero_conn_id)


class CloudZeroStagingOperator(CloudZeroBaseOperator):
    """
    An operator that stages files under the export target of its CloudZero connection.

    :param staging_uri: Staging root (local folder or object-storage URI); default ``[cloudzero] staging_uri``,
        else ``$AIRFLOW_HOME/cloudzero-staging``. (templated)
    :param staging_area: A sub-folder of the export target for this run's stages (``range-<run>``), so that two
        runs working on the same hour at the same moment never read each other's files; manifests stay shared.
        Default: none, the scheduled hourly stages. (templated)
    """

    template_fields: Sequence[str] = (*CloudZeroBaseOperator.template_fields, "staging_uri", "staging_area")

    def __init__(
        self, *, staging_uri: str | None = None, staging_area: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.staging_uri = staging_uri
        self.staging_area = staging_area

    @cached_property
    def target(self) -> ExportTarget:
        try:
            return ExportTarget(self.cloudzero_conn_id, self.staging_uri or None)
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None

    def stage(self, window: Window, *, area: str | None = None) -> WindowStage:
        """The window's stage in this operator's staging area; ``area`` nests a pass of its own inside it."""
        try:
            stage = self.target.stage(window, area=(self.staging_area, area))
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None
        if self.staging_area:
            self._claim_area()
        return stage

    def _claim_area(self) -> None:
        """Name the run that owns this staging area (once), so housekeeping leaves the area alone while that run
        is in flight: a retry or a clear of one of its tasks reads what another task staged."""
        if self.__dict__.get("_area_claimed"):
            return
        self.__dict__["_area_claimed"] = True
        try:
            from airflow.sdk import get_current_context

            context = get_current_context()
        except Exception:  # outside a running task (tests, scripts): no run to name
            return
        ti = context.get("ti")
        self.target.claim_area(
            str(self.staging_area),
            dag_id=str(getattr(ti, "dag_id", "")),
            run_id=str(context.get("run_id", "")),
        )


class ExportStepOperator(CloudZeroStagingOperator):
    """
    A step of the export (extract, transform, upload, the late-data pass, reconciliation): one
    :class:`~cloudzero_provider.options.ExportOptions` value carries what they share.

    :param options: Dimensions, invalid-row policy, value cap, request size. Its ``dimensions`` and ``on_invalid``
        are templated.
    """

    template_fields: Sequence[str] = (*CloudZeroStagingOperator.template_fields, "options")

    def __init__(self, *, options: ExportOptions | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.options = options or ExportOptions()

    def checked_options(self) -> ExportOptions:
        try:
            return self.options.checked()
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None

    def emit_hour_events(
        self, context: Context | dict[str, Any], hours: Iterable[datetime], extra: dict[str, Any]
    ) -> None:
        """
        One event per exported hour on the target's Asset (the hour's start in the event's extra ``hour``, as a
        full ISO instant), emitted through the task's AssetAlias outlets (:attr:`ExportTarget.alias`).

        Not partition keys: Airflow queues only partition-aware DAGs for partitioned events, so a DAG scheduled on
        the plain Asset -- the telemetry DAG, or one of yours -- would never run.
        """
        events = context.get("outlet_events")
        hours = list(hours)
        if not hours or events is None:
            return
        for outlet in self.outlets:
            if isinstance(outlet, AssetAlias):
                for hour in hours:
                    events[outlet].add(self.target.asset, extra={**extra, "hour": iso_hour(hour)})


def attempt_of(context: Context | dict[str, Any]) -> Attempt:
    """This task attempt (DAG, run, task, map index, try): named in idempotency keys -- stable across in-task
    retries -- and in the manifests of the hours it decides."""
    ti = context.get("ti")
    return Attempt(
        dag_id=str(getattr(ti, "dag_id", "") or ""),
        run_id=str(context.get("run_id", "adhoc")),
        task_id=str(getattr(ti, "task_id", "") or ""),
        map_index=int(getattr(ti, "map_index", -1) if getattr(ti, "map_index", None) is not None else -1),
        try_number=int(getattr(ti, "try_number", 0) or 0),
    )
