"""Demo: send one billing drop to the local CloudZero double through CloudZeroHook and read it back.

(Interim: replaced by the full hourly-DAG demo once the DAGs exist.)
"""

from __future__ import annotations

import json
import os
import tempfile

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="cz-demo-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from cloudzero_provider.hooks.cloudzero import CloudZeroHook
from cloudzero_provider.testing.double import CloudZeroDouble
from cloudzero_provider.testing.server import CloudZeroDoubleServer


def main() -> None:
    with CloudZeroDoubleServer(CloudZeroDouble("demo-key-0001", connections={"demo-conn"})) as server:
        os.environ["AIRFLOW_CONN_CLOUDZERO_DEFAULT"] = json.dumps(
            {"conn_type": "cloudzero", "host": server.url, "password": "demo-key-0001",
             "extra": {"connection_id": "demo-conn"}}
        )  # fmt: skip
        hook = CloudZeroHook()
        print(hook.test_connection()[1])
        row = {"time/usage_start": "2026-11-01T13:00:00Z", "cost/cost": "0.000000000001"}
        drop = hook.post_billing_drop({"month": "2026-11", "operation": "replace_hourly", "data": [row]})
        print("posted drop", drop)
        print("CloudZero double holds:", hook.get_billing_drop("2026-11"))


if __name__ == "__main__":
    main()
