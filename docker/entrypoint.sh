#!/bin/sh
# Secrets come from files (docker secrets), never from the compose file or the image:
#   DATABASE_URL_FILE         a whole SQLAlchemy URL, or
#   TWIN_DB_PASSWORD_FILE     the password, with TWIN_DB_USER / TWIN_DB_HOST / TWIN_DB_NAME
#   TWIN_SESSION_SECRET_FILE  read by the app itself (dashboards/login.py)
set -eu
if [ -n "${DATABASE_URL_FILE:-}" ]; then
    DATABASE_URL="$(cat "$DATABASE_URL_FILE")"
    export DATABASE_URL
elif [ -n "${TWIN_DB_PASSWORD_FILE:-}" ]; then
    DATABASE_URL="$(python - <<'PY'
import os
from urllib.parse import quote

password = open(os.environ["TWIN_DB_PASSWORD_FILE"]).read().strip()
user = os.environ.get("TWIN_DB_USER", "twin")
host = os.environ.get("TWIN_DB_HOST", "db")
name = os.environ.get("TWIN_DB_NAME", "twin")
print(f"postgresql+psycopg://{quote(user)}:{quote(password, safe='')}@{host}:5432/{name}")
PY
)"
    export DATABASE_URL
fi
exec "$@"
