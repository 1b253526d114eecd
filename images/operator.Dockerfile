# The longconn-operator image: the static binary alone, run as a non-root user. Nothing is pulled
# and nothing runs at build time; the binary is compiled before, outside the image.
#
# `make images` builds it (with buildah) into .images/longconn-operator.oci.tar. With docker, from
# the repository root (the context is the directory that holds the binary; the .dockerignore
# beside this file keeps everything else out):
#
#   rustup target add x86_64-unknown-linux-musl   # once; apt-get install musl-tools for ring
#   cargo build --locked --profile dist --target x86_64-unknown-linux-musl -p longconn-operator --bin longconn-operator
#   docker build -f images/operator.Dockerfile -t ghcr.io/longconn/longconn-operator:0.1.0 target/x86_64-unknown-linux-musl/dist

FROM scratch
COPY longconn-operator /usr/local/bin/longconn-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/longconn-operator"]
