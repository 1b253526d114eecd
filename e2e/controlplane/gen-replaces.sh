#!/usr/bin/env bash
# Rewrites go.mod's requirements and `replace` lines from the pinned release's own go.mod.
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/client-go, ...) at v0.0.0 and
# replaces them with ./staging/src paths that do not exist outside its repository. Each staging
# module is published on its own as v0.<minor>.<patch> of the release, so this script reads the
# release's go.mod through the Go module proxy and emits `k8s.io/X => k8s.io/X v0.M.P` for every
# staging replace it finds, then pins k8s.io/kubernetes and the etcd server the release pins.
#
# Usage: e2e/controlplane/gen-replaces.sh   (then commit go.mod and go.sum)
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=versions.env
source ./versions.env

version="${KUBERNETES_VERSION}"               # v1.36.3
staging_version="v0.${version#v1.}"           # v0.36.3
release_gomod="$(go mod download -json "k8s.io/kubernetes@${version}" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')"
if [[ ! -s "${release_gomod}" ]]; then
  echo "gen-replaces: cannot read go.mod of k8s.io/kubernetes@${version}" >&2
  exit 1
fi

# Every `k8s.io/X => ./staging/src/k8s.io/X` line of the release becomes a versioned replace.
mapfile -t staging < <(sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/\1\s*$#\1#p' "${release_gomod}" | sort -u)
if (( ${#staging[@]} == 0 )); then
  echo "gen-replaces: no staging replace lines found in ${release_gomod}" >&2
  exit 1
fi

# The etcd server the release pins (it appears among its requirements, indirect).
etcd_version="$(sed -n 's#^\s*go\.etcd\.io/etcd/server/v3 \(v[0-9.]*\).*#\1#p' "${release_gomod}" | head -n1)"
if [[ -z "${etcd_version}" ]]; then
  echo "gen-replaces: no go.etcd.io/etcd/server/v3 requirement in ${release_gomod}" >&2
  exit 1
fi

# Drop every previous k8s.io replace, then write the new set.
while read -r old; do
  go mod edit -dropreplace="${old}"
done < <(go mod edit -json | sed -n 's#^\s*"Path": "\(k8s\.io/[a-z0-9-]*\)"$#\1#p' | sort -u)

args=("-require=k8s.io/kubernetes@${version}" "-require=go.etcd.io/etcd/server/v3@${etcd_version}")
for module in "${staging[@]}"; do
  args+=("-replace=${module}=${module}@${staging_version}")
done
go mod edit "${args[@]}"
go mod tidy
echo "gen-replaces: k8s.io/kubernetes ${version}, ${#staging[@]} staging modules at ${staging_version}, etcd ${etcd_version}"
