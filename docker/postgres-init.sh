#!/usr/bin/env bash
# One database and one role each for MLflow and Prefect, and the pg_trgm extension Prefect needs.
#
# The postgres image runs this once, when it initialises an empty data volume (from
# /docker-entrypoint-initdb.d). The passwords come from the container's environment (docker/.env) and
# psql reads them from there (\getenv): they never appear in a file or on a command line. To change a
# password later, see "Credentials" in docker/README.md (this script does not run again).
set -euo pipefail

: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set}"
: "${PREFECT_DB_PASSWORD:?PREFECT_DB_PASSWORD is not set}"

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" <<'SQL'
\getenv mlflow_password MLFLOW_DB_PASSWORD
\getenv prefect_password PREFECT_DB_PASSWORD
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE prefect OWNER prefect;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
REVOKE ALL ON DATABASE prefect FROM PUBLIC;
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
SQL
