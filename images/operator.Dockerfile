# syntax=docker/dockerfile:1
# The longconn-operator image: a static binary on distroless, run as a non-root user.
# Build from the repository root: docker build -f images/operator.Dockerfile -t ghcr.io/longconn/longconn-operator:0.1.0 .

FROM rust:1-bookworm AS build
# musl-tools gives the C compiler that ring's C and assembly parts need for the musl target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p longconn-operator --bin longconn-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/longconn-operator /usr/local/bin/longconn-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/longconn-operator"]
