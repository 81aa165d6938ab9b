# The imc-rs image: imc-dispatcher (the entry point, run with no arguments as upstream's
# Deployment runs its image) and imc-control, on an empty base: no shell, no package manager.
#
#   docker build -t imc-rs/imc-dispatcher:latest .
#
# Works with the classic builder and with BuildKit. The build stage needs the Rust image (and the
# network for crates.io); everything below the FINAL STAGE line is the image itself, and the
# container tests (tests/tests/container.rs) build exactly that text over binaries built on the
# host, so the image users build and the image the tests run cannot drift apart.
ARG RUST_IMAGE=docker.io/library/rust:1-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p imc-dispatcher -p imc-control \
 && sh scripts/image-rootfs.sh target/release /rootfs

# ---- FINAL STAGE (the tests build from this line down) ----
FROM scratch AS image
COPY --from=build /rootfs/ /
# Upstream's Deployment sets runAsNonRoot without a uid: the image must name a numeric non-root
# user for the kubelet to accept it. 65532 is the distroless "nonroot" user.
USER 65532:65532
# 8080 events and probes, 8443 events over TLS, 9090 Prometheus.
EXPOSE 8080 8443 9090
ENTRYPOINT ["/usr/local/bin/imc-dispatcher"]
