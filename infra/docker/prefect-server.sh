#!/bin/sh
# The Prefect API and UI on PostgreSQL, every request authenticated with one shared auth string.
# The command of compose's prefect-server service and of tests/test_team.py (which reads it
# from infra/compose.yaml with the service's environment).
set -eu
require-secrets.sh POSTGRES_PASSWORD PREFECT_SERVER_API_AUTH_STRING
PREFECT_API_DATABASE_CONNECTION_URL=$(pg-url.sh postgresql+asyncpg "$PREFECT_DATABASE")
export PREFECT_API_DATABASE_CONNECTION_URL
export PREFECT_API_DATABASE_MIGRATE_ON_START=true  # creates or upgrades the schema before serving
# Prefect writes its UI build at start-up, by default into its own package directory, which a
# non-root user (the servers image runs as `spark`) may not write: the UI would answer 404.
export PREFECT_UI_STATIC_DIRECTORY="${PREFECT_UI_STATIC_DIRECTORY:-${PREFECT_HOME:-$HOME/.prefect}/ui}"
exec prefect server start --host "$SERVER_HOST" --port "$PREFECT_PORT"
