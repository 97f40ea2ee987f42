# flowd: multi-stage build.  Build on Debian 12 with the -dev packages, run on
# debian:12-slim with only the runtime libraries, as a non-root user, with
# the database on a volume and a token file required (the daemon refuses to
# listen beyond loopback without one).
#
#   docker build -t flowd --build-arg REVISION="$(git rev-parse HEAD)" \
#       --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" --build-arg SOURCE="$(git remote get-url origin)" .
#   docker run --rm flowd --version; docker run --rm --entrypoint flowctl flowd --version
#   printf 'write %s\nread %s\n' "$(openssl rand -hex 24)" "$(openssl rand -hex 24)" > tokens
#   docker run -d -p 8080:8080 -v flowd-data:/data \
#       -v "$PWD/tokens:/run/secrets/flowd-tokens:ro" flowd
# flowd has MPI (OpenMPI): training jobs on ranks inside the container with
#   docker run ... -e FLOWD_MPI_LAUNCHER="mpirun -n 2" flowd
# or data-parallel `flowd train` under mpirun (docs/scale-out.md).

FROM debian:12 AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential pkg-config libopenblas-dev libcjson-dev libsqlite3-dev \
        libmicrohttpd-dev libcurl4-openssl-dev zlib1g-dev libpng-dev libssl-dev libyaml-dev sqlite3 curl \
        libopenmpi-dev openmpi-bin \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# MPI=1: data-parallel flowd train (docs/scale-out.md); a missing OpenMPI fails the build
RUN make clean && make -j"$(nproc)" MPI=1 build/rel/flowd build/rel/flowctl

FROM debian:12-slim
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="flowd" \
      org.opencontainers.image.description="Normalizing-flow density estimation as a service: exact log-likelihoods, sampling, encode/decode, training jobs; flowd /v1, Open Inference Protocol v2 and TF Serving predict" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="${SOURCE}"
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libopenblas0-pthread libcjson1 libsqlite3-0 libmicrohttpd12 libcurl4 zlib1g libpng16-16 \
        libssl3 curl ca-certificates libopenmpi3 openmpi-bin \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin flowd \
    && mkdir -p /data && chown flowd:flowd /data
COPY --from=build /src/build/rel/flowd /usr/local/bin/flowd
COPY --from=build /src/build/rel/flowctl /usr/local/bin/flowctl
COPY --from=build /src/client/python/flowd_client.py /usr/local/share/flowd/flowd_client.py
COPY --from=build /src/LICENSE /usr/local/share/doc/flowd/LICENSE
USER flowd
VOLUME ["/data"]
EXPOSE 8080
ENV FLOWD_DB=/data/flowd.db \
    FLOWD_LISTEN=0.0.0.0:8080 \
    FLOWD_TOKEN_FILE=/run/secrets/flowd-tokens
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/flowd"]
CMD ["serve"]
