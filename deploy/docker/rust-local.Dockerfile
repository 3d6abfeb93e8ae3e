# A Rust build image made without a registry: the local Debian base
# (deploy/docker/images.sh) plus the host's Rust toolchain, which images.sh
# puts in the build context as toolchain/ (bin and lib only, no docs), and
# the host's CA bundle.
ARG BASE_IMAGE=tether-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY toolchain /usr/local/rust
# The host's CA bundle: cargo in the build trusts what the host trusts (on a
# machine whose registry traffic passes a TLS-inspecting gateway, its CA).
COPY host-ca-bundle.crt /etc/ssl/certs/host-ca-bundle.crt
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/rust/bin:/usr/local/cargo/bin:$PATH \
    CARGO_HTTP_CAINFO=/etc/ssl/certs/host-ca-bundle.crt
RUN mkdir -p /usr/local/cargo && cargo --version && rustc --version
