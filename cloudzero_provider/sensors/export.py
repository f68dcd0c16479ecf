"""Wait until every hour of a window that has spend has been exported to CloudZero."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk.bases.sensor import BaseSensorOperator

from cloudzero_provider.operators.base import CloudZeroStagingOperator
from cloudzero_provider.windows import hour_label

if TYPE_CHECKING:
    from airflow.sdk import Context


class ExportedDaySensor(BaseSensorOperator, CloudZeroStagingOperator):
    """
    Succeed when every hour of the window (by default the run's data interval) with valid spend in LiteLLM has an
    ``exported`` manifest recording the same source totals -- i.e. when CloudZero holds exactly what the report
    will show. Its connection, staging and window arguments are those of
    :class:`~cloudzero_provider.operators.base.CloudZeroStagingOperator`.
    """

    template_fields = CloudZeroStagingOperator.template_fields

    def poke(self, context: Context) -> bool:
        window = self.window(context)
        spent = self.litellm_hook.hour_spend(window)
        held = self.target.manifests.get_many(spent)  # one listing, one read per manifest
        pending = []
        for hour, (requests, spend) in sorted(spent.items()):
            manifest = held.get(hour)
            source = manifest.source if manifest else None
            if (
                not manifest
                or not manifest.exported
                or source is None
                or (source.requests, source.spend)
                != (
                    requests,
                    spend,
                )
            ):
                pending.append(hour_label(hour))
        if pending:
            self.log.info("Waiting for %d hour(s) of %s to be exported: %s", len(pending), window, pending)
            return False
        self.log.info("All hour(s) with spend in %s are exported", window)
        return True
