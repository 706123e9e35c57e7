# syntax=docker/dockerfile:1
# crm-stream image: one image for every service; the command picks the service
# (`crm run ingest|profiles|offers|notifier|all`, `crm tick`, `crm create-topics`).
#
#   docker build -t ghcr.io/crm-stream/crm-stream:dev .
#   docker run --rm ghcr.io/crm-stream/crm-stream:dev run ingest
#
# Both stages use the same base image, so the virtual environment built in the
# first runs unchanged in the second (same Python at the same path). The base is
# pinned by tag, Debian release included; pin the digest too where builds must
# be reproducible (a bot such as Renovate keeps it current).

FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src
# The build context is trimmed by .dockerignore to what the package needs.
COPY . .
# Installs the package and its dependencies into the venv; pip compiles the
# bytecode here, since the runtime file system is read-only.
RUN pip install .


FROM python:3.11-slim-bookworm AS runtime

ARG VERSION=0.0.0.dev0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="crm-stream" \
      org.opencontainers.image.description="Event-driven retail loyalty CRM: ingest, profiles, offers and notifier services" \
      org.opencontainers.image.source="https://github.com/crm-stream/crm-stream" \
      org.opencontainers.image.vendor="crm-stream" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    CRM_HTTP_PORT=8080 \
    CRM_METRICS_PORT=9090 \
    CRM_LOG_FORMAT=json

# uid/gid 10001: above the range of any user of the base image or the host.
RUN groupadd --system --gid 10001 crm \
 && useradd --system --uid 10001 --gid crm --home-dir /var/lib/crm --create-home --shell /usr/sbin/nologin crm

COPY --from=builder /opt/venv /opt/venv

# A writable home for `sqlite:///` stores and the .eml outbox when run without
# Kubernetes; there the root file system is read-only and nothing is written.
WORKDIR /var/lib/crm
USER 10001:10001

# 8080: health, APIs, web page; 9090: /metrics (for Prometheus, never published)
EXPOSE 8080 9090

# No curl in the slim image: Python's urllib asks /healthz on the service's own
# port, and fails on a refused connection, a time-out or an HTTP error.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CRM_HTTP_PORT', '8080'), timeout=4)"]

ENTRYPOINT ["crm"]
CMD ["run", "all"]
