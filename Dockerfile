# syntax=docker/dockerfile:1
#
# One image with both Ringway binaries:
#   /usr/local/bin/ringway-gateway      (the entrypoint)
#   /usr/local/bin/ringway-coordinator  (run it with --entrypoint, or as the
#                                        Helm chart does, with `command`)
#
# Build (BuildKit, the default builder of current Docker; from the
# repository root):
#   docker build -t ringway:0.1.0 .
# The tag should be the workspace version (Cargo.toml), which the Helm
# chart's appVersion tracks. See docs/KUBERNETES.md, "The image".

ARG RUST_VERSION=1.95

# --- build: the Rust toolchain on Debian 12 (same glibc as the runtime) ---
FROM rust:${RUST_VERSION}-bookworm AS build
# npm installs the chat demo's socket.io-client bundle (examples/chat),
# which the gateway embeds (gateway/build.rs).
RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cd examples/chat && npm ci --no-audit --no-fund
# Release profile without DWARF (symbols stay, for readable backtraces).
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
# Cache mounts keep downloaded crates and compiled dependencies between
# builds; the binaries are copied out of the cached target directory.
# .proto files are compiled by protox (pure Rust): no protoc needed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ringway-gateway -p ringway-coordinator \
 && mkdir -p /out \
 && cp target/release/ringway-gateway target/release/ringway-coordinator /out/

# --- runtime: distroless (glibc, libgcc, CA certificates; no shell, no
# package manager), as the unprivileged user 65532 ---
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ringway-gateway /out/ringway-coordinator /usr/local/bin/
USER 65532:65532
# Gateway: HTTP/WebSocket 3000, node-to-node gRPC 7100, Push API gRPC
# 7200. Coordinator: gRPC 7000, HTTP (dashboard, health) 7080.
EXPOSE 3000 7100 7200 7000 7080
ENTRYPOINT ["/usr/local/bin/ringway-gateway"]
LABEL org.opencontainers.image.title="ringway" \
      org.opencontainers.image.description="Ringway Socket.IO gateway cluster: ringway-gateway and ringway-coordinator" \
      org.opencontainers.image.licenses="Apache-2.0"
