# Airflow 3.3 with airflow-provider-cloudzero installed from this repository.
FROM apache/airflow:3.3.2-python3.11

COPY --chown=airflow:0 pyproject.toml README.md /opt/cloudzero-provider/
COPY --chown=airflow:0 cloudzero_provider /opt/cloudzero-provider/cloudzero_provider
COPY --chown=airflow:0 constraints /opt/cloudzero-provider/constraints
# The constraints are exported from uv.lock (uv export --no-dev --extra s3), so the image runs the versions the
# tests ran; [s3] lets staging move to object storage ([cloudzero] staging_uri = s3://...) without a rebuild.
RUN pip install --no-cache-dir \
      --constraint /opt/cloudzero-provider/constraints/runtime-py3.11.txt \
      "/opt/cloudzero-provider[s3]"
