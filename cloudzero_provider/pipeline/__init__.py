"""The steps of one window -- extract, transform, upload -- as functions of hooks and an export target.

The operators are thin wrappers around these; the late-data pass and the reconciliation call them again for the
hours that changed. Errors a retry cannot fix raise ``AirflowFailException`` with a message that says what to do.
Messages go to each module's logger, which Airflow routes into the running task's log.
"""

from __future__ import annotations

from cloudzero_provider.pipeline.common import (
    DEFAULT_MAX_VALUES_PER_HOUR,
    INVALID_POLICIES,
    MIN_REQUEST_BYTES,
    MONTH_ROW_LIMIT,
    SOURCES,
    check_dry_run_limit,
    describe_invalid,
)
from cloudzero_provider.pipeline.extract import extract_window
from cloudzero_provider.pipeline.ownership import DAILY_ORIGINS, SWITCH_HINT, clearing_row, day_owner
from cloudzero_provider.pipeline.send import dry_run_window
from cloudzero_provider.pipeline.transform import transform_window
from cloudzero_provider.pipeline.upload import clear_hours, upload_window

__all__ = [
    "DAILY_ORIGINS",
    "DEFAULT_MAX_VALUES_PER_HOUR",
    "INVALID_POLICIES",
    "MIN_REQUEST_BYTES",
    "MONTH_ROW_LIMIT",
    "SOURCES",
    "SWITCH_HINT",
    "check_dry_run_limit",
    "clear_hours",
    "clearing_row",
    "day_owner",
    "describe_invalid",
    "dry_run_window",
    "extract_window",
    "transform_window",
    "upload_window",
]
