#!/bin/sh
# Refuse to start while a secret named here is empty, still holds the placeholder of
# infra/.env.example ("change-me..."), or is shorter than the length its server requires
# (NAME:MIN, e.g. MLFLOW_AUTH_ADMIN_PASSWORD:12, which MLflow refuses below). Never prints a value.
status=0
for spec in "$@"; do
    name=${spec%%:*}
    min=0
    [ "$name" != "$spec" ] && min=${spec#*:}
    eval "value=\${$name:-}"
    case "$value" in
        "") what="empty" ;;
        *change-me*) what="still the placeholder" ;;
        *)
            [ "${#value}" -ge "$min" ] && continue
            what="shorter than $min characters, which its server refuses" ;;
    esac
    echo "refusing to start: $name is $what; set it in infra/.env (for example: openssl rand -hex 24)" >&2
    status=1
done
exit $status
