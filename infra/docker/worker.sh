#!/bin/sh
# A Prefect process worker in the training image: makes its work pool if missing, deploys the
# repository's prefect.yaml, then takes flow runs ("$@" goes to `prefect worker start`, e.g.
# --run-once). Run from the repository root.
set -eu
require-secrets.sh PREFECT_API_AUTH_STRING MLFLOW_TRACKING_PASSWORD
prefect work-pool inspect "$SPARK_VL_WORK_POOL" >/dev/null 2>&1 ||
    prefect work-pool create "$SPARK_VL_WORK_POOL" --type process
prefect --no-prompt deploy --all --prefect-file prefect.yaml
exec prefect worker start --pool "$SPARK_VL_WORK_POOL" "$@"
