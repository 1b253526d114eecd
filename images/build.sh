#!/usr/bin/env bash
# Builds the project's OCI images offline into OUT_DIR, ready for `ctr -n k8s.io images import`:
# longconn-operator, longconn-gateway and longconn-echo (static musl binaries from cargo's `dist`
# profile) and the pod sandbox image (Kubernetes' own pause.c, compiled statically); beside them
# OUT_DIR/bin/kubectl-longconn, the kubectl plugin built the same way, which
# kubectl-longconn/krew/package.sh packages for krew. Every image
# is FROM scratch and holds its one binary (images/*.Dockerfile); buildah builds it with no network
# in storage under OUT_DIR, so nothing of the machine's is touched, and saves it as
# OUT_DIR/<name>.oci.tar under its full name. cargo builds incrementally, and an image whose
# binary and Dockerfile are unchanged is not rebuilt: a stamp beside its archive holds their hash.
#
# Usage: images/build.sh OUT_DIR
set -euo pipefail

if (( $# != 1 )); then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "${root}"
mkdir -p "$1"
out_dir="$(cd "$1" && pwd)"
cargo="${CARGO:-cargo}"
target=x86_64-unknown-linux-musl
profile=dist
dist_dir="${CARGO_TARGET_DIR:-${root}/target}/${target}/${profile}"
registry=ghcr.io/longconn

# One build at a time per OUT_DIR; a second caller waits, then finds the images current.
exec 9>"${out_dir}/.lock"
flock 9

# Tools: musl-gcc for ring's C parts, buildah, gcc and glibc's libc.a for pause.
packages=()
command -v musl-gcc >/dev/null || packages+=(musl-tools)
command -v buildah >/dev/null || packages+=(buildah)
command -v gcc >/dev/null || packages+=(gcc)
[[ -f /usr/lib/x86_64-linux-gnu/libc.a ]] || packages+=(libc6-dev)
if (( ${#packages[@]} > 0 )); then
  echo "images: installing ${packages[*]} (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
if ! rustup target list --installed | grep -qx "${target}"; then
  echo "images: adding the Rust target ${target} (rustup)"
  rustup target add "${target}"
fi

crate_version="$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' Cargo.toml)"
if [[ -z "${crate_version}" ]]; then
  echo "images: no workspace.package.version in Cargo.toml" >&2
  exit 1
fi

echo "images: cargo build --profile ${profile} --target ${target}: longconn-operator, longconn-gateway, longconn-echo, kubectl-longconn"
started=${SECONDS}
"${cargo}" build --locked --profile "${profile}" --target "${target}" \
  -p longconn-operator --bin longconn-operator \
  -p longconn-gateway --bin longconn-gateway \
  -p longconn-echo --bin longconn-echo \
  -p kubectl-longconn --bin kubectl-longconn
echo "images: cargo build done in $(( SECONDS - started ))s"
mkdir -p "${out_dir}/bin"
install -m 0755 "${dist_dir}/kubectl-longconn" "${out_dir}/bin/kubectl-longconn"

# pause.c and its version tag come from the k8s.io/kubernetes module the control plane is built
# from (e2e/controlplane/go.mod); the source is read from Go's module cache, never copied here.
if ! command -v go >/dev/null; then
  echo "images: go is needed to fetch pause.c from the k8s.io/kubernetes module" >&2
  exit 1
fi
module_json="$(cd e2e/controlplane && go mod download -json k8s.io/kubernetes)"
kubernetes_dir="$(sed -n 's/^\t"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"${module_json}")"
kubernetes_version="$(sed -n 's/^\t"Version": "\(.*\)",\{0,1\}$/\1/p' <<<"${module_json}")"
pause_tag="$(sed -n 's/^TAG ?= *//p' "${kubernetes_dir}/build/pause/Makefile")"
if [[ ! -f "${kubernetes_dir}/build/pause/linux/pause.c" || -z "${pause_tag}" ]]; then
  echo "images: no build/pause/linux/pause.c or TAG in k8s.io/kubernetes at ${kubernetes_dir:-?}" >&2
  exit 1
fi
echo "images: gcc -static pause.c ${pause_tag} from k8s.io/kubernetes ${kubernetes_version}"
gcc -Os -Wall -Werror -static -s "-DVERSION=v${pause_tag}-${kubernetes_version}" \
  -o "${out_dir}/bin/pause" "${kubernetes_dir}/build/pause/linux/pause.c"

# name dockerfile binary reference, one image a line.
images=(
  "longconn-operator images/operator.Dockerfile ${dist_dir}/longconn-operator ${registry}/longconn-operator:${crate_version}"
  "longconn-gateway images/gateway.Dockerfile ${dist_dir}/longconn-gateway ${registry}/longconn-gateway:${crate_version}"
  "longconn-echo images/echo.Dockerfile ${dist_dir}/longconn-echo ${registry}/longconn-echo:${crate_version}"
  "pause images/pause.Dockerfile ${out_dir}/bin/pause localhost/longconn/pause:${pause_tag}"
)

# buildah with its storage under OUT_DIR; vfs works on any file system and the images are one
# small layer each. TMPDIR keeps buildah's temporary files there too.
export TMPDIR="${out_dir}/tmp"
mkdir -p "${TMPDIR}"
bah() {
  buildah --root "${out_dir}/storage" --runroot "${out_dir}/run" --storage-driver vfs "$@"
}

# inputs_hash DOCKERFILE BINARY REFERENCE: what an image is made of, and how.
inputs_hash() {
  {
    echo "$3"
    sha256sum "$1" "$1.dockerignore" "$2" "${BASH_SOURCE[0]}" | cut -d' ' -f1
  } | sha256sum | cut -d' ' -f1
}

for spec in "${images[@]}"; do
  read -r name dockerfile binary reference <<<"${spec}"
  archive="${out_dir}/${name}.oci.tar"
  stamp="${archive}.stamp"
  hash="$(inputs_hash "${dockerfile}" "${binary}" "${reference}")"
  if [[ -f "${archive}" && "$(cat "${stamp}" 2>/dev/null)" == "${hash}" ]]; then
    echo "images: ${reference} unchanged"
    continue
  fi
  echo "images: buildah bud ${dockerfile} -> ${reference} -> ${archive}"
  rm -f "${stamp}"
  context="${out_dir}/context/${name}"
  rm -rf "${context}"
  mkdir -p "${context}"
  install -m 0755 "${binary}" "${context}/"
  # --timestamp 0: the image depends only on the binary and the Dockerfile, as with ko.
  bah bud --quiet --network none --timestamp 0 --identity-label=false \
    -f "${dockerfile}" --ignorefile "${dockerfile}.dockerignore" -t "${reference}" "${context}" >/dev/null
  rm -f "${archive}.part"
  bah push --quiet "${reference}" "oci-archive:${archive}.part:${reference}"
  bah rmi "${reference}" >/dev/null
  # ctr names an imported image after the index's org.opencontainers.image.ref.name.
  if ! tar -xOf "${archive}.part" index.json | grep -qF "\"org.opencontainers.image.ref.name\":\"${reference}\""; then
    echo "images: ${archive}.part does not carry the name ${reference} in its index.json" >&2
    exit 1
  fi
  mv "${archive}.part" "${archive}"
  echo "${hash}" >"${stamp}"
done

echo
printf '%-42s %8s %9s  %s\n' image binary archive file
for spec in "${images[@]}"; do
  read -r name dockerfile binary reference <<<"${spec}"
  archive="${out_dir}/${name}.oci.tar"
  printf '%-42s %8s %9s  %s\n' "${reference}" \
    "$(numfmt --to=iec --suffix=B --format=%.1f "$(stat -c %s "${binary}")")" \
    "$(numfmt --to=iec --suffix=B --format=%.1f "$(stat -c %s "${archive}")")" \
    "${archive#"${root}/"}"
done
