# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run in a slim Debian image as a
# non-root user.

FROM rust:1-bookworm AS builder
# The opus crate builds a bundled libopus with cmake.
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin chorus && cp target/release/chorus /chorus

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/chorus --create-home chorus
COPY --from=builder /chorus /usr/local/bin/chorus
USER chorus
WORKDIR /var/lib/chorus
ENV DATA_DIR=/var/lib/chorus/data
# Fewer glibc malloc arenas: ~6-8 KiB less memory per participant (docs/CONFIGURATION.md).
ENV MALLOC_ARENA_MAX=2
VOLUME ["/var/lib/chorus/data"]
# HTTP (API, WebSocket, web client, /metrics) and the one UDP port all media shares.
EXPOSE 5500/tcp 7882-7897/udp
ENTRYPOINT ["/usr/local/bin/chorus"]
