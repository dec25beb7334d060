# syntax=docker/dockerfile:1
#
# One image with learnsync's three binaries:
#   learnsync-server  the gRPC API (and the Docebo webhook receiver); runs the migrations at start-up
#   learnsync-worker  claims and runs sync jobs; scale it out
#   learnsync         the command-line client
# The image's default command is the server; the worker's Deployment sets `command`.
#
#   docker build -t learnsync:dev .
#
# No protoc is needed: proto/build.rs compiles sync.proto with protox (pure Rust).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
# aws-lc-sys (rustls' crypto provider, pulled in by reqwest) may fall back to a CMake build.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Every workspace member must be present for cargo to load the workspace, even the ones not built.
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY store store
COPY migrations migrations
COPY server server
COPY client client
COPY worker worker
COPY sim sim
COPY upstream upstream
COPY tests tests
# The caches keep the registry and compiled dependencies between builds (BuildKit); the binaries
# are copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p learnsync-server -p learnsync-worker -p learnsync-client \
    && mkdir -p /out \
    && cp target/release/learnsync-server target/release/learnsync-worker target/release/learnsync /out/

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: Docebo and Salesforce are reached over HTTPS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 learnsync \
    && useradd --system --uid 10001 --gid learnsync --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin learnsync
COPY --from=builder /out/ /usr/local/bin/
# Inside a container the server must listen on every interface (its default is 127.0.0.1).
ENV LEARNSYNC_LISTEN=0.0.0.0:50051 \
    LEARNSYNC_LOG_JSON=true
# gRPC; the webhook receiver and the metrics listen only when LEARNSYNC_WEBHOOK_LISTEN
# (e.g. 0.0.0.0:8080) and LEARNSYNC_METRICS_LISTEN (e.g. 0.0.0.0:9090) are set.
EXPOSE 50051 8080 9090
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
CMD ["learnsync-server"]
