"""Read what a DAG run left in Airflow's metadata DB: task instance states and XComs (for tests)."""

from __future__ import annotations

import json
from typing import Any


def task_instances(dag_id: str, run_id: str) -> dict[tuple[str, int], tuple[Any, Any, Any]]:
    """``(task_id, map_index) -> (state, try_number, rendered_map_index)`` of one run."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.settings import Session

    with Session() as session:  # type: ignore[misc]  # configured once Airflow is initialised
        tis = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id).all()
        return {(ti.task_id, ti.map_index): (ti.state, ti.try_number, ti.rendered_map_index) for ti in tis}


def xcom(dag_id: str, run_id: str, task_id: str) -> dict[int, Any]:
    """``map_index -> return value`` of one task of one run."""
    return xcom_key(dag_id, run_id, task_id, "return_value", all_maps=True)


def xcom_key(dag_id: str, run_id: str, task_id: str, key: str, *, all_maps: bool = False) -> Any:
    """The XCom ``key`` of an unmapped task (or ``map_index -> value`` with ``all_maps``)."""
    from airflow.models.xcom import XComModel
    from airflow.settings import Session

    with Session() as session:  # type: ignore[misc]  # configured once Airflow is initialised
        rows = session.query(XComModel).filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id, key=key)
        values = {r.map_index: r.value if not isinstance(r.value, str) else json.loads(r.value) for r in rows}
    return values if all_maps else values.get(-1)
