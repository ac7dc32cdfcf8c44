# One image for every role: `mdf db upgrade`, `mdf scheduler`, `mdf worker`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The pinned dependencies first, from pyproject.toml alone: a code change does not
# reinstall torch. PyPI's torch for Linux x86_64 is the CUDA build; it runs on the CPU too.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install -r requirements.txt

COPY mdf ./mdf
COPY db ./db
COPY scheduler ./scheduler
COPY worker ./worker
COPY mdf_model ./mdf_model
COPY training ./training
RUN pip install --no-deps . \
    && useradd --uid 10001 --create-home mdf \
    && mkdir -p /data /checkpoints /inbox \
    && chown mdf:mdf /data /checkpoints

USER mdf
ENV MDF_DATA_DIR=/data \
    MDF_LOG_FORMAT=json

ENTRYPOINT ["mdf"]
CMD ["worker"]
