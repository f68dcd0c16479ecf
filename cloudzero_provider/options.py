"""ExportOptions: the choices every export step shares, carried as one value from the DAG to the pipeline.

Pure: no Airflow imports. Airflow renders its ``template_fields`` inside an operator's own template fields, so
per-run trigger params (``{{ params.dimensions }}``) reach the steps through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from cloudzero_provider.dimensions import resolve
from cloudzero_provider.drops import DEFAULT_MAX_REQUEST_BYTES

INVALID_POLICIES = ("fail", "quarantine")
DEFAULT_MAX_VALUES_PER_HOUR = 1000
# CloudZero keeps 1,000,000 rows per stream and month (about 1,300 an hour): an hour above this is a runaway
# combination of dimensions, folded before it costs memory, requests and the month's budget.
DEFAULT_MAX_ROWS_PER_HOUR = 5000
MIN_REQUEST_BYTES = 16_384


@dataclass
class ExportOptions:
    """
    :param dimensions: Grouping dimensions: a list, a comma-separated string (what a templated param gives), or
        ``None`` for the default set. (templated)
    :param on_invalid: ``fail``: invalid source rows fail the window; ``quarantine``: export the valid rows and
        keep the invalid ones in ``quarantine.jsonl``. (templated)
    :param max_values_per_hour: Distinct values per hour of a dimension LLM callers choose (``end_user``,
        request tags) before the rest are folded into ``(other)``; 0 or ``None``: no cap.
    :param max_request_bytes: Upper bound of one request's exact body (CloudZero's limit is 5 MB).
    :param max_rows_per_hour: CBF rows an hour keeps across all dimensions before its smallest groups are summed
        into one ``(other)`` row; 0 or ``None``: no cap.
    """

    template_fields: ClassVar[tuple[str, ...]] = ("dimensions", "on_invalid")

    dimensions: Sequence[str] | str | None = None
    on_invalid: str = "fail"
    max_values_per_hour: int | None = DEFAULT_MAX_VALUES_PER_HOUR
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_rows_per_hour: int | None = DEFAULT_MAX_ROWS_PER_HOUR

    def dimension_names(self) -> list[str] | None:
        """The dimensions as a list (``None``: the default set)."""
        value = self.dimensions
        if value is None:
            return None
        if isinstance(value, str):
            text = value.strip()
            if text in ("", "None"):
                return None
            return [d.strip() for d in text.split(",") if d.strip()]
        return list(value)

    @property
    def value_cap(self) -> int | None:
        return int(self.max_values_per_hour) if self.max_values_per_hour else None

    @property
    def row_cap(self) -> int | None:
        return int(self.max_rows_per_hour) if self.max_rows_per_hour else None

    def checked(self) -> ExportOptions:
        """These options, validated; a ValueError names what is wrong."""
        try:
            resolve(self.dimension_names())
        except ValueError as exc:
            raise ValueError(f"Invalid dimensions: {exc}") from None
        if self.on_invalid not in INVALID_POLICIES:
            raise ValueError(f"on_invalid must be one of {INVALID_POLICIES}, got {self.on_invalid!r}")
        if int(self.max_request_bytes) < MIN_REQUEST_BYTES:
            raise ValueError(
                f"max_request_bytes must be at least {MIN_REQUEST_BYTES}, got {self.max_request_bytes}"
            )
        return self

    def but(self, **changes: object) -> ExportOptions:
        """A copy with some options changed (e.g. a retry that must fail on invalid rows)."""
        return replace(self, **changes)  # type: ignore[arg-type]
