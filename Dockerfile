# One image, two binaries: /usr/local/bin/tern-operator and /usr/local/bin/tern-agent.
#
# There is deliberately no ENTRYPOINT or CMD: the same image runs as the operator and as the
# agent, so whoever starts it names the binary.
#   operator (charts/tern, config/manager):  command: ["/usr/local/bin/tern-operator", "run"]
#   agent (the StatefulSets the operator renders): command: ["/usr/local/bin/tern-agent", "run"]
#   by hand: docker run --rm IMAGE /usr/local/bin/tern-operator version
#
# Builds:
#   docker build -t tern .                      from source (default target `runtime`)
#   cargo build --release --locked -p tern-operator -p tern-agent
#   docker build --target prebuilt -t tern .    offline: copies target/release/tern-{operator,agent}
#                                               (built on a glibc <= 2.36 host, e.g. Debian 12)
#
# Air-gapped registry mirror: override the base images, e.g.
#   docker build --build-arg RUST_IMAGE=mirror.example/library/rust:1.95.0-slim-bookworm \
#                --build-arg RUNTIME_IMAGE=mirror.example/distroless/cc-debian12:nonroot .
# Pin them by digest (IMAGE:TAG@sha256:...) when the mirror is populated.
#
# Needs BuildKit (the default builder since Docker 23; also podman/buildah) for the cache
# mounts. No `# syntax=` line on purpose: the built-in frontend suffices, so nothing is pulled
# from Docker Hub beyond the two base images.

ARG RUST_IMAGE=docker.io/library/rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# --- prebuilt: binaries from the build context (first, so that even the legacy builder, which
# builds every stage before the target, needs nothing but the runtime base image).
FROM ${RUNTIME_IMAGE} AS prebuilt
LABEL org.opencontainers.image.title="tern" \
      org.opencontainers.image.description="Tern mail operator and agent" \
      org.opencontainers.image.source="https://github.com/tern-mail/tern" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --chown=0:0 target/release/tern-operator target/release/tern-agent /usr/local/bin/
# distroless :nonroot already runs as 65532; said again so the image never depends on the tag.
USER 65532:65532

# --- build: both binaries from source, with the versions pinned in Cargo.lock.
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p tern-operator -p tern-agent \
    && mkdir -p /out \
    && cp target/release/tern-operator target/release/tern-agent /out/

# --- runtime (default): the binaries from `build` on the distroless base (glibc, libgcc,
# CA certificates, no shell, no package manager).
FROM ${RUNTIME_IMAGE} AS runtime
LABEL org.opencontainers.image.title="tern" \
      org.opencontainers.image.description="Tern mail operator and agent" \
      org.opencontainers.image.source="https://github.com/tern-mail/tern" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build --chown=0:0 /out/tern-operator /out/tern-agent /usr/local/bin/
USER 65532:65532
