#!/bin/sh
# The MLflow tracking server on PostgreSQL with basic-auth (users and permissions in their own
# database), artifacts proxied by the server to MLFLOW_ARTIFACTS_DESTINATION (a directory on a
# volume, or s3://bucket/prefix with AWS_* and MLFLOW_S3_ENDPOINT_URL set). The command of
# compose's mlflow service and of tests/test_team.py.
set -eu
require-secrets.sh POSTGRES_PASSWORD MLFLOW_AUTH_ADMIN_PASSWORD:12 MLFLOW_FLASK_SERVER_SECRET_KEY
store=$(pg-url.sh postgresql+psycopg2 "$MLFLOW_DATABASE")
users=$(pg-url.sh postgresql+psycopg2 "$MLFLOW_AUTH_DATABASE" | sed 's/%/%%/g')  # the ini interpolates %
umask 077
cat > "$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = ${MLFLOW_DEFAULT_PERMISSION:-READ}
database_uri = $users
admin_username = $MLFLOW_AUTH_ADMIN_USERNAME
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
mlflow db upgrade "$store"
exec mlflow server --host "$SERVER_HOST" --port "$MLFLOW_PORT" --backend-store-uri "$store" \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" --app-name basic-auth
