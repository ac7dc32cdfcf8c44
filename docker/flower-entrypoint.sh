#!/bin/sh
# Flower in a container: the broker at $BROKER_ADDRESS (HOST:PORT/DB) with the password held
# in $BROKER_PASSWORD_FILE (a Docker secret), put together here so that the password is in
# no compose file or image. BROKER_URL is the variable the `celery` command reads.
set -eu
password=$(cat "$BROKER_PASSWORD_FILE")
BROKER_URL="redis://:${password}@${BROKER_ADDRESS}"
export BROKER_URL
exec celery flower --port=5555 "$@"
