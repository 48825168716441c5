# Multi-stage build of registry-facade: a Rust build stage and a small Debian runtime stage,
# running as an unprivileged user.
#
# glommio uses io_uring, which Docker's default seccomp profile blocks, and needs
# RLIMIT_MEMLOCK of at least 512 KiB. Run it with the profile from docs/ and a memlock limit:
#
#   docker build -t registry-facade .
#   docker run --rm -p 5000:5000 \
#     --security-opt seccomp=docs/seccomp-io_uring.json \
#     --ulimit memlock=-1:-1 \
#     -v rf-cache:/var/lib/registry-facade registry-facade

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY vendor ./vendor
COPY src ./src
# The bench tools are workspace members: Cargo reads their manifests to load the workspace,
# though the server's build compiles none of them.
COPY bench ./bench
COPY tests ./tests
RUN cargo build --release --locked --bin registry-facade

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/registry-facade --shell /usr/sbin/nologin registry-facade \
 && mkdir -p /var/lib/registry-facade \
 && chown registry-facade /var/lib/registry-facade
COPY --from=build /src/target/release/registry-facade /usr/local/bin/registry-facade
USER registry-facade
VOLUME /var/lib/registry-facade
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/registry-facade"]
CMD ["serve", "--listen", "0.0.0.0:5000", "--cache-dir", "/var/lib/registry-facade"]
