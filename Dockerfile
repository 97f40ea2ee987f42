# flowd: multi-stage build.  Build on Debian 12 with the -dev packages, run on
# debian:12-slim with only the runtime libraries, as a non-root user, with
# the database on a volume and a token file required (the daemon refuses to
# listen beyond loopback without one).
#
#   docker build -t flowd .
#   printf 'write %s\nread %s\n' "$(openssl rand -hex 24)" "$(openssl rand -hex 24)" > tokens
#   docker run -d -p 8080:8080 -v flowd-data:/data \
#       -v "$PWD/tokens:/run/secrets/flowd-tokens:ro" flowd

FROM debian:12 AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential pkg-config libopenblas-dev libcjson-dev libsqlite3-dev \
        libmicrohttpd-dev libcurl4-openssl-dev zlib1g-dev libpng-dev libssl-dev libyaml-dev sqlite3 curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make clean && make -j"$(nproc)" build/rel/flowd

FROM debian:12-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libopenblas0-pthread libcjson1 libsqlite3-0 libmicrohttpd12 libcurl4 zlib1g libpng16-16 \
        libssl3 curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin flowd \
    && mkdir -p /data && chown flowd:flowd /data
COPY --from=build /src/build/rel/flowd /usr/local/bin/flowd
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
