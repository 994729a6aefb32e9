# tcp-echo: the static binary alone in an empty image.
# Build with `make image` (or `make image ARCH=aarch64`), which first builds the binary on the
# host with `make static`: nothing is compiled or downloaded here.
FROM scratch

# The binary of the platform being built, staged by `make image`. It is the first step on
# purpose: Docker's classic builder gives any earlier step's intermediate image the daemon's
# own platform and then refuses to COPY onto it when building for another one.
COPY target/image/tcp-echo /tcp-echo

ARG VERSION=dev
LABEL org.opencontainers.image.title="tcp-echo" \
      org.opencontainers.image.description="A small, fast and hardened TCP echo server for testing TCP routing in Kubernetes and Istio" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/tcp-echo/tcp-echo" \
      org.opencontainers.image.licenses="Apache-2.0"

# Non-root, and not 1337 (Istio's proxy uid, whose traffic the sidecar does not intercept).
USER 65532:65532
EXPOSE 3333
ENTRYPOINT ["/tcp-echo"]
