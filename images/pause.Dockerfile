# The pod sandbox ("pause") image of the local nodes: Kubernetes' own pause.c, compiled statically,
# alone in the image as upstream's registry.k8s.io/pause is. Nothing is pulled and nothing runs at
# build time.
#
# `make images` builds it (with buildah) into .images/pause.oci.tar. With docker, from the
# repository root; the source comes from the k8s.io/kubernetes Go module at the version in
# e2e/controlplane/versions.env, the tag from its build/pause/Makefile (TAG):
#
#   src="$(cd e2e/controlplane && go mod download -json k8s.io/kubernetes | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
#   grep '^TAG ?=' "${src}/build/pause/Makefile"   # TAG ?= 3.10.2
#   mkdir -p /tmp/pause
#   gcc -Os -Wall -Werror -static -s -DVERSION=v3.10.2-v1.36.3 -o /tmp/pause/pause "${src}/build/pause/linux/pause.c"
#   docker build -f images/pause.Dockerfile -t localhost/longconn/pause:3.10.2 /tmp/pause

FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
