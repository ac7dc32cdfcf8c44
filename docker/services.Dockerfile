# The services beside the application, built as offline as the application (Dockerfile):
# PostgreSQL and Redis from Debian bookworm's packages in a local base image made with
# debootstrap (scripts/images.py), Flower from the wheelhouse. No registry is needed.
#   docker build --network none --target postgres -f docker/services.Dockerfile CONTEXT

ARG BASE=mdf-base:bookworm
ARG SERVICES_BASE=mdf-services-base:bookworm

# --- PostgreSQL 15: the superuser's password from a Docker secret ------------------------
FROM ${SERVICES_BASE} AS postgres
COPY docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
RUN mkdir -p /var/lib/postgresql/data /run/postgresql \
    && chown postgres:postgres /var/lib/postgresql/data /run/postgresql \
    && chmod 0700 /var/lib/postgresql/data
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER postgres
HEALTHCHECK --interval=10s --timeout=5s --retries=5 CMD ["pg_isready", "-h", "127.0.0.1"]
ENTRYPOINT ["postgres-entrypoint"]

# --- Redis 7: append-only, a password from a Docker secret --------------------------------
FROM ${SERVICES_BASE} AS redis
COPY docker/redis-entrypoint.sh /usr/local/bin/redis-entrypoint
RUN mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data
HEALTHCHECK --interval=10s --timeout=5s --retries=5 \
    CMD ["sh", "-c", "REDISCLI_AUTH=\"$(cat \"$REDIS_PASSWORD_FILE\")\" redis-cli ping | grep -qx PONG"]
ENTRYPOINT ["redis-entrypoint"]

# --- Flower: the fleet dashboard, in a virtual environment of its own ---------------------
FROM ${BASE} AS flower-venv
COPY wheels/ /wheels/
RUN python3 -m venv /opt/flower \
    && /opt/flower/bin/pip install --no-cache-dir --no-index --find-links /wheels \
        --requirement /wheels/flower.txt

FROM ${BASE} AS flower
RUN useradd --uid 10002 --user-group --create-home --shell /usr/sbin/nologin flower
COPY --from=flower-venv /opt/flower /opt/flower
COPY docker/flower-entrypoint.sh /usr/local/bin/flower-entrypoint
ENV PATH=/opt/flower/bin:$PATH PYTHONUNBUFFERED=1
USER flower
WORKDIR /home/flower
HEALTHCHECK --interval=30s --timeout=10s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:5555/healthcheck', timeout=5)"]
ENTRYPOINT ["flower-entrypoint"]
