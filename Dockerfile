# syntax=docker/dockerfile:1
# seenn-server: a small runtime image (Python venv only) built in two stages.
#   docker build -t seenn-server .
#   docker run -e DATABASE_URL=postgresql://user:pass@host/db -p 8000:8000 seenn-server
# With no DATABASE_URL, `serve` starts the embedded PostgreSQL (kept in the image, see
# below) with its data in /data: mount a volume there (-v seenn-data:/data).

ARG PYTHON_IMAGE=python:3.11.16-slim-bookworm

# --- build: the wheel, and a venv with it and its pinned dependencies -----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/seenn
WORKDIR /src
# Dependencies first: this layer is rebuilt only when the pins change, not on every edit.
COPY deploy/requirements.txt deploy/requirements.txt
RUN /opt/seenn/bin/pip install -r deploy/requirements.txt
COPY pyproject.toml README.md alembic.ini ./
COPY migrations migrations
COPY app app
# pip compiles the bytecode here, so the runtime never writes any. pip and setuptools
# leave the venv afterwards: the runtime installs nothing.
RUN /opt/seenn/bin/pip wheel --no-deps --wheel-dir /tmp/dist . \
    && /opt/seenn/bin/pip install --no-deps /tmp/dist/seenn_server-*.whl \
    && /opt/seenn/bin/pip check \
    && /opt/seenn/bin/pip uninstall --yes pip setuptools

# --- runtime: the venv, a non-root user, nothing else ----------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="seenn-server" \
      org.opencontainers.image.description="Self-hosted, Seenn-compatible job progress backend" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 seenn \
    && useradd --system --uid 10001 --gid seenn --home-dir /home/seenn --create-home \
       --shell /usr/sbin/nologin seenn \
    && install -d -o seenn -g seenn /data
COPY --from=build /opt/seenn /opt/seenn
COPY deploy/healthcheck.py /opt/seenn/healthcheck.py
ENV PATH=/opt/seenn/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SEENN_HOST=0.0.0.0 \
    SEENN_PORT=8000 \
    SEENN_DATA_DIR=/data
# Numeric, so an orchestrator can check it is not root (runAsNonRoot).
USER 10001:10001
WORKDIR /home/seenn
EXPOSE 8000
# /readyz: database reachable and schema at this version's head. start-period covers
# the embedded PostgreSQL's first start (initdb) when no DATABASE_URL is given.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/seenn/healthcheck.py"]
# uvicorn drains on SIGTERM (SEENN_GRACEFUL_SHUTDOWN_SECONDS); give `docker stop -t` more.
STOPSIGNAL SIGTERM
ENTRYPOINT ["seenn-server"]
CMD ["serve"]
