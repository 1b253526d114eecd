# The longconn-echo image: the static binary alone, run as a non-root user. Nothing is pulled
# and nothing runs at build time; the binary is compiled before, outside the image.
#
# `make images` builds it (with buildah) into .images/longconn-echo.oci.tar. With docker, from
# the repository root (the context is the directory that holds the binary; the .dockerignore
# beside this file keeps everything else out):
#
#   rustup target add x86_64-unknown-linux-musl   # once; apt-get install musl-tools for ring
#   cargo build --locked --profile dist --target x86_64-unknown-linux-musl -p longconn-echo --bin longconn-echo
#   docker build -f images/echo.Dockerfile -t ghcr.io/longconn/longconn-echo:0.1.0 target/x86_64-unknown-linux-musl/dist

FROM scratch
COPY longconn-echo /usr/local/bin/longconn-echo
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/longconn-echo"]
