# The cds-tpi CDS Hooks service (cds-tpi serve) in a container. See README.md, "Deployment".
#   docker build -t cds-tpi .
#   docker run -p 8080:8080 -v $PWD/service.yaml:/etc/cds-tpi/service.yaml:ro \
#       -e CDS_TPI_DATABASE_URL=postgresql://cds@db/cdstpi cds-tpi
# Two stages: the first builds wheels (durable-rules compiles a C extension), the second holds
# only the installed package, runs as an unprivileged user and has no compiler.

FROM python:3.11-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cds_tpi ./cds_tpi
COPY rules ./rules
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[service,postgres]"

FROM python:3.11-slim-bookworm
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "cds-tpi[service,postgres]" \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /var/lib/cds-tpi --create-home cds
USER cds
# Listen on every interface inside the container. With no JWT issuers in the config, serve
# refuses a non-loopback address (unless --allow-unauthenticated): mount a config with issuers.
ENV CDS_TPI_HOST=0.0.0.0 \
    CDS_TPI_PORT=8080 \
    CDS_TPI_CONFIG=/etc/cds-tpi/service.yaml \
    CDS_TPI_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s \
    CMD python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=4)" \
        "http://127.0.0.1:${CDS_TPI_PORT}/health"
ENTRYPOINT ["cds-tpi", "serve"]
