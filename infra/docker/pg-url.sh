#!/bin/sh
# pg-url.sh SCHEME DATABASE: the SQLAlchemy URL of DATABASE on the PostgreSQL server named by
# POSTGRES_HOST/PORT/USER/PASSWORD, the user and password percent-encoded.
exec python -c '
import os, sys
from urllib.parse import quote
user, password, host, port = (os.environ[f"POSTGRES_{key}"] for key in ("USER", "PASSWORD", "HOST", "PORT"))
print(f"{sys.argv[1]}://{quote(user, safe=str())}:{quote(password, safe=str())}@{host}:{port}/{sys.argv[2]}")
' "$1" "$2"
