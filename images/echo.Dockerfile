# syntax=docker/dockerfile:1
# The longconn-echo image: a static binary on distroless, run as a non-root user.
# Build from the repository root: docker build -f images/echo.Dockerfile -t ghcr.io/longconn/longconn-echo:0.1.0 .

FROM rust:1-bookworm AS build
# musl-tools gives the C compiler that ring's C and assembly parts need for the musl target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p longconn-e2e --bin longconn-echo

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/longconn-echo /usr/local/bin/longconn-echo
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/longconn-echo"]
