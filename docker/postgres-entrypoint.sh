#!/bin/sh
# PostgreSQL in a container. On the first start it creates the cluster: superuser
# $POSTGRES_USER with the password held in $POSTGRES_PASSWORD_FILE (a Docker secret, so the
# password is in no environment and no image), password authentication over the network,
# and the database $POSTGRES_DB. Every start then runs the server in the foreground.
set -eu
: "${POSTGRES_USER:=mdf}" "${POSTGRES_DB:=mdf}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ ! -s "${POSTGRES_PASSWORD_FILE:-}" ]; then
        echo "postgres: POSTGRES_PASSWORD_FILE must name a non-empty file" >&2
        exit 1
    fi
    initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$POSTGRES_PASSWORD_FILE" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        echo "CREATE DATABASE \"$POSTGRES_DB\"" | postgres --single -D "$PGDATA" postgres >/dev/null
    fi
fi
exec postgres -D "$PGDATA" "$@"
