# syntax=docker/dockerfile:1
#
# mirrorsync container image: one static (musl) binary on distroless/static, which has CA
# certificates and time zone data and nothing else (no shell, no package manager), running as
# the non-root user 65532. The Helm chart in charts/mirrorsync runs it with a read-only root
# filesystem and only /tmp writable.
#
#   docker build -t registry.example.internal:5000/tools/mirrorsync:0.1.0 .
#   docker push registry.example.internal:5000/tools/mirrorsync:0.1.0
#
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 -t ... --push .
# (each platform compiles natively, under emulation when it is not the build host's).

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-alpine AS build
# musl's C runtime and headers: ring compiles C and assembly.
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# On Alpine the host target is *-linux-musl, linked statically by default.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mirrorsync \
    && install -D -m 0755 target/release/mirrorsync /out/mirrorsync
RUN /out/mirrorsync --version

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/mirrorsync /usr/local/bin/mirrorsync
# rustls reads the system roots from here (plus ca_file from sync.yaml).
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    MIRRORSYNC_CONFIG=/etc/mirrorsync/sync.yaml
# nonroot:nonroot in distroless; numeric so that runAsNonRoot can verify it.
USER 65532:65532
WORKDIR /tmp
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/mirrorsync"]
CMD ["sync", "--once"]
