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


def clear_and_resume(dag: Any, run_id: str, task_id: str) -> Any:
    """
    Clear a failed task of a finished run as the UI's Clear and the REST ``clearTaskInstances`` do, then run the
    run on in this process as ``dag.test`` runs one: Airflow schedules the cleared task again, numbering its next
    try, and runs it with dag.test's own task runner. (``dag.test`` itself always starts a new run.)

    :return: The run's state once it is over.
    """
    from airflow.models.dagbag import DBDagBag
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import clear_task_instances
    from airflow.sdk.definitions.dag import _run_task
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState

    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id=dag.dag_id, run_id=run_id).one()
        scheduler_dag = DBDagBag().get_dag_for_run(run, session=session)
        assert scheduler_dag is not None, f"{dag.dag_id} is not serialized for {run_id}"
        cleared = scheduler_dag.clear(dry_run=True, task_ids=[task_id], run_id=run_id, only_failed=True,
                                      session=session)  # fmt: skip
        assert cleared, f"{task_id} of {run_id} had failed"
        clear_task_instances(cleared, session, DagRunState.QUEUED)
        run.dag = scheduler_dag
        run.state = DagRunState.RUNNING  # what the scheduler does with a queued run
        session.commit()
        for _ in range(20):
            session.expire_all()
            schedulable, _callback = run.update_state(session=session)
            if run.state != DagRunState.RUNNING:
                return run.state
            for ti in schedulable:
                ti.try_number += 1
                ti.state = TaskInstanceState.SCHEDULED
            session.commit()
            scheduled = [
                ti
                for ti in run.get_task_instances(session=session)
                if ti.state == TaskInstanceState.SCHEDULED
            ]
            assert scheduled, f"the cleared run is stuck: {run.get_task_instances(session=session)}"
            for ti in scheduled:
                _run_task(ti=ti, task=dag.task_dict[ti.task_id])
    raise AssertionError(f"{run_id} did not finish")
