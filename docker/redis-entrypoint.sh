#!/bin/sh
# Redis in a container: the password held in $REDIS_PASSWORD_FILE (a Docker secret) goes to
# redis-server on its standard input, so it shows in no command line, environment or image;
# an append-only file in /data keeps queued chunks across a restart.
set -eu
if [ ! -s "${REDIS_PASSWORD_FILE:-}" ]; then
    echo "redis: REDIS_PASSWORD_FILE must name a non-empty file" >&2
    exit 1
fi
password=$(cat "$REDIS_PASSWORD_FILE")
exec redis-server - --dir /data --appendonly yes --save "" "$@" <<CONFIG
requirepass "$password"
CONFIG
