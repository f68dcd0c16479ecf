"""The steps of one window -- extract, transform, upload -- as functions of hooks and an export target.

``extract``, ``transform`` (with the integrity check of staged CBF rows), ``sending`` (plans, 413 re-planning,
manifests in flight), ``dry_run``, ``ownership`` (one source per day and stream), ``upload`` (a window's hours,
emptied hours cleared) and ``reexport`` (the one recipe that exports a set of hours again from the source, which
upload retries, the late-data pass and reconciliation share). Operators are thin wrappers around these. Errors a
retry cannot fix raise ``AirflowFailException`` with a message that says what to do; messages go to each
module's logger, which Airflow routes into the running task's log.
"""
