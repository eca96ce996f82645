#!/bin/sh
# Refuse to start while a secret named here is empty or still holds the placeholder of
# infra/.env.example ("change-me..."). Never prints a value.
status=0
for name in "$@"; do
    eval "value=\${$name:-}"
    case "$value" in
        "") what="empty" ;;
        *change-me*) what="still the placeholder" ;;
        *) continue ;;
    esac
    echo "refusing to start: $name is $what; set it in infra/.env (for example: openssl rand -hex 24)" >&2
    status=1
done
exit $status
