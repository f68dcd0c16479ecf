#!/usr/bin/env bash
# airflow-init of the compose stack: refuse to start with missing or placeholder secrets, then migrate the
# metadata DB, create the upload pool and a staging folder the airflow user (50000) can write.
set -euo pipefail

refuse() {
  cat >&2 <<MSG
airflow-init: $1 is $2. Every Airflow component must share a real secret here, or anyone who can reach the
API server can forge tokens or read connection passwords. Generate the three values into .env:

  echo "AIRFLOW__API_AUTH__JWT_SECRET=\$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')" >> .env
  echo "AIRFLOW__API__SECRET_KEY=\$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')" >> .env
  echo "AIRFLOW__CORE__FERNET_KEY=\$(python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')" >> .env
MSG
  exit 1
}

for name in AIRFLOW__API_AUTH__JWT_SECRET AIRFLOW__API__SECRET_KEY AIRFLOW__CORE__FERNET_KEY; do
  value="${!name:-}"
  if [ -z "$value" ]; then
    refuse "$name" "not set"
  fi
  case "${value,,}" in
    *replace-me*|*changeme*|*change-me*|*placeholder*|*example*|*secret-here*) refuse "$name" "still a placeholder" ;;
  esac
  if [ "$name" != AIRFLOW__CORE__FERNET_KEY ] && [ "${#value}" -lt 32 ]; then
    refuse "$name" "shorter than 32 characters"
  fi
done
if [ "${#AIRFLOW__CORE__FERNET_KEY}" -ne 44 ]; then
  refuse AIRFLOW__CORE__FERNET_KEY "not a Fernet key (44 url-safe base64 characters)"
fi

staging="${CLOUDZERO_STAGING_DIR:-/opt/airflow/cloudzero-staging}"
mkdir -p "$staging"
chown -R "${AIRFLOW_UID:-50000}:0" "$staging"
chmod -R u+rwX,g+rwX "$staging"

airflow db migrate
airflow pools set cloudzero_anycost 1 "One request at a time per AnyCost stream (CloudZero forbids concurrent requests)"
