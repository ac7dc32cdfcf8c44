# One image for every role of the service (`mdf db upgrade`, `mdf scheduler`, `mdf worker`),
# for GPU hosts (FLAVOUR=gpu, the default) and CPU hosts (FLAVOUR=cpu).
#
# Built offline by scripts/images.py (`make images`): FROM a local base image made with
# debootstrap (bookworm: Python 3.11), every Python package from the wheelhouse the script
# puts into the build context as wheels/, the project itself as a wheel in dist/; the build
# has no network (--network none).
# PyPI's torch 2.14.1 for Linux is the CUDA build, the only one of that version: both
# flavours carry it (it runs on a CPU); they differ in their defaults below.

ARG BASE=mdf-base:bookworm
ARG FLAVOUR=gpu

# --- the virtual environment: the pinned dependencies -----------------------------------
FROM ${BASE} AS venv
COPY wheels/ /wheels/
RUN python3 -m venv /opt/mdf \
    && /opt/mdf/bin/pip install --no-cache-dir --no-index --find-links /wheels \
        --requirement /wheels/requirements.txt

# --- the runtime: no wheels, no sources, no build tools; a non-root user -----------------
FROM ${BASE} AS runtime
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin mdf \
    && mkdir -p /data /checkpoints /inbox \
    && chown mdf:mdf /data /checkpoints
COPY --from=venv /opt/mdf /opt/mdf
# The project's own wheel (dist/, built from the checkout) comes last: a code change
# rebuilds from here on only.
COPY dist/ /dist/
RUN /opt/mdf/bin/pip install --no-cache-dir --no-index --no-deps /dist/*.whl
ENV PATH=/opt/mdf/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MDF_DATA_DIR=/data \
    MDF_LOG_FORMAT=json
WORKDIR /data
USER mdf
# A worker or the scheduler answers a Celery ping on this host; a worker may answer
# between chunks only, so allow for a long chunk. Compose sets the same per service.
HEALTHCHECK --interval=60s --timeout=20s --start-period=120s --retries=5 \
    CMD ["mdf", "ping", "--timeout", "10"]
ENTRYPOINT ["mdf"]
CMD ["worker"]

# --- the flavours: what each host kind needs by default ----------------------------------
FROM runtime AS gpu
# Read by the NVIDIA container runtime; each worker takes the first GPU no other holds.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MDF_DEVICE=auto

FROM runtime AS cpu
ENV MDF_DEVICE=cpu

FROM ${FLAVOUR}
ARG FLAVOUR
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="mdf-screening" \
      org.opencontainers.image.description="MDF-MLLM fundus screening: intake, scheduler, workers, training" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="mdf-base:bookworm" \
      org.mdf.flavour="${FLAVOUR}"
