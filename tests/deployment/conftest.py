"""The deployment tests share one real Airflow deployment (see harness.py); they skip, saying why, where it
cannot start."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timedelta, timezone

import pytest

CATCHUP_HOURS = int(os.environ.get("CZ_DEPLOY_CATCHUP_HOURS", "48"))
SPEND_HOURS = (2, 5, 9, 14, 18, 21)  # hours after the catchup start that hold spend


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/deployment/" in str(item.fspath):
            item.add_marker(pytest.mark.deployment)


@pytest.fixture(scope="session")
def catchup_start() -> datetime:
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    return now - timedelta(hours=CATCHUP_HOURS)


@pytest.fixture(scope="session")
def deployed(catchup_start):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (.ci/run installs Debian's when it runs as root)")
    from cloudzero_provider.testing.seed import seed_synthetic
    from tests.deployment.harness import Deployment

    settings = {
        "CLOUDZERO_EXPORT_START": catchup_start.isoformat(),
        "CLOUDZERO_SETTLE_MINUTES": "0",
        "CLOUDZERO_TASK_RETRIES": "3",
        "CLOUDZERO_RETRY_DELAY_SECONDS": "3",
        "CLOUDZERO_MAX_ACTIVE_RUNS": "4",
        "CLOUDZERO_TELEMETRY_METRIC": "llm-cost",
    }
    deployment = Deployment(settings, workers=2).start()
    try:
        for i, offset in enumerate(SPEND_HOURS):
            if offset < CATCHUP_HOURS:
                seed_synthetic(deployment.litellm_url, catchup_start + timedelta(hours=offset), 150 + 10 * i,
                               id_prefix=f"dep{i}")  # fmt: skip
        yield deployment
    finally:
        deployment.stop()
