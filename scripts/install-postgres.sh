#!/usr/bin/env bash
# PostgreSQL's initdb/pg_ctl for the team-mode tests (they start a real server on 127.0.0.1 as user postgres).
set -euo pipefail
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq postgresql >/dev/null
else
  echo "PostgreSQL is not installed: install it (e.g. 'sudo apt-get install postgresql') to run the team-mode tests" >&2
fi
