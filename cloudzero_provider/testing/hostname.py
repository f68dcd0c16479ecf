"""``[core] hostname_callable`` for several Celery workers on one host, as the deployment tests run them.

Airflow records the host name of the worker that ran each task instance; workers that share a host would all
report the same name. Set ``CZ_WORKER_NAME`` per worker and point ``AIRFLOW__CORE__HOSTNAME_CALLABLE`` at
``cloudzero_provider.testing.hostname.worker_hostname``.
"""

from __future__ import annotations

import os
import socket


def worker_hostname() -> str:
    """The worker's own name (``CZ_WORKER_NAME``), else the host's."""
    return os.environ.get("CZ_WORKER_NAME") or socket.getfqdn()
