#!/usr/bin/env bash
# Packages kubectl-longconn the way krew installs plugins: an archive holding the binary (static,
# musl, cargo's `dist` profile: IMAGES_DIR/bin/kubectl-longconn from `make images`) and the
# LICENSE, and the plugin manifest `longconn.yaml` that names the archive's URL and sha256.
# Publish the archive at that URL and submit the manifest to a krew index (or install it
# directly, see kubectl-longconn/README.md).
#
# Usage: kubectl-longconn/krew/package.sh OUT_DIR
#   IMAGES_DIR  where `make images` put its output (default: .images)
#   URL_BASE    where the archive is served (default: this version's GitHub release)
set -euo pipefail

if (( $# != 1 )); then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
root="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$1"
out="$(cd "$1" && pwd)"
binary="${IMAGES_DIR:-${root}/.images}/bin/kubectl-longconn"
if [[ ! -x "${binary}" ]]; then
  echo "krew: ${binary} missing: run make images" >&2
  exit 1
fi
version="$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' "${root}/Cargo.toml")"
repository="$(sed -n '/^\[workspace\.package\]/,/^\[/s/^repository = "\(.*\)"$/\1/p' "${root}/Cargo.toml")"
url_base="${URL_BASE:-${repository}/releases/download/v${version}}"
# The images' binaries are built for x86_64-unknown-linux-musl.
arch=amd64

archive="kubectl-longconn_v${version}_linux_${arch}.tar.gz"
staging="$(mktemp -d)"
trap 'rm -rf "${staging}"' EXIT
cp "${binary}" "${staging}/kubectl-longconn"
cp "${root}/LICENSE" "${staging}/LICENSE"
# Reproducible: fixed owner, order and times, and no gzip timestamp.
tar -C "${staging}" --owner=0 --group=0 --numeric-owner --mtime=@0 --sort=name \
  -cf - kubectl-longconn LICENSE | gzip -n >"${out}/${archive}"
sha256="$(sha256sum "${out}/${archive}" | cut -d' ' -f1)"

cat >"${out}/longconn.yaml" <<MANIFEST
apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: longconn
spec:
  version: v${version}
  homepage: ${repository}
  shortDescription: Watch, steer and undo LongConnService rollouts
  description: |
    Shows where a LongConnService's rollout is, what holds it and how its health gate
    judges it, live; lists its revisions; promotes a pause step, pauses, resumes, aborts
    and undoes a rollout. It reads and patches the LongConnService and nothing else:
    the longconn operator does the rest, moving sessions instead of cutting them.
  platforms:
    - selector:
        matchLabels:
          os: linux
          arch: ${arch}
      uri: ${url_base}/${archive}
      sha256: ${sha256}
      bin: kubectl-longconn
      files:
        - from: kubectl-longconn
          to: .
        - from: LICENSE
          to: .
MANIFEST
echo "krew: ${out}/${archive} (sha256 ${sha256}) and ${out}/longconn.yaml"
