#!/usr/bin/env bash
# Builds the local cluster's binaries into TOOLS_DIR: kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy and kubectl from the pinned k8s.io/kubernetes release, etcd
# embedded at the version that release pins, containerd (with its runc shim and ctr), helm and
# metrics-server (which serves metrics.k8s.io from the kubelets' resource metrics).
# The nodes also need Debian's runc, CNI plugins, iptables and util-linux (nsenter, unshare),
# installed here with apt-get when missing. Does nothing when the binaries are
# current: a stamp in TOOLS_DIR holds a hash of every input (versions, go.mod, go.sum, the wrapper
# sources, this script and the Go toolchain). Go's module and build caches make a rebuild after a
# change fast; only the first build on a machine is slow.
#
# Usage: e2e/controlplane/build.sh TOOLS_DIR
set -euo pipefail

if (( $# != 1 )); then
  echo "usage: $0 TOOLS_DIR" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$1"
tools_dir="$(cd "$1" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"

binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
  containerd containerd-shim-runc-v2 ctr helm metrics-server)
stamp_file="${tools_dir}/.stamp"

inputs_hash() {
  (
    cd "${here}"
    go version
    go env GOOS GOARCH
    cat versions.env go.mod go.sum build.sh
    find cmd -type f -name '*.go' | LC_ALL=C sort | xargs cat
  ) | sha256sum | cut -d' ' -f1
}

current() {
  [[ -f "${stamp_file}" && "$(cat "${stamp_file}")" == "$1" ]] || return 1
  local binary
  for binary in "${binaries[@]}"; do
    [[ -x "${tools_dir}/${binary}" ]] || return 1
  done
}

# What the nodes run beside the built binaries, from Debian's packages.
node_packages=(runc containernetworking-plugins iptables util-linux)
missing=()
for package in "${node_packages[@]}"; do
  dpkg-query -W -f='${Status}' "${package}" 2>/dev/null | grep -q 'install ok installed' \
    || missing+=("${package}")
done
if (( ${#missing[@]} > 0 )); then
  echo "tools: installing ${missing[*]} (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# One build at a time per tools dir; a second caller waits, then finds the tools current.
exec 9>"${tools_dir}/.lock"
flock 9

hash="$(inputs_hash)"
if current "${hash}"; then
  echo "tools: current in ${tools_dir}"
  exit 0
fi

started=${SECONDS}
rm -f "${stamp_file}"

# Version stamps as Kubernetes' own build sets them (hack/lib/version.sh), so /version and
# `kubectl version` report the release. The build date is the release's commit time from the
# module proxy, which keeps builds reproducible. The module proxy carries no commit hash.
k8s_info="$(cd "${here}" && go list -m -json "k8s.io/kubernetes@${KUBERNETES_VERSION}")"
build_date="$(sed -n 's/^\s*"Time": "\(.*\)",\{0,1\}$/\1/p' <<<"${k8s_info}" | head -n1)"
if [[ -z "${build_date}" ]]; then
  echo "tools: no release time for k8s.io/kubernetes@${KUBERNETES_VERSION} from the module proxy" >&2
  exit 1
fi
major="${KUBERNETES_VERSION#v}"; major="${major%%.*}"
minor="${KUBERNETES_VERSION#v*.}"; minor="${minor%%.*}"
ldflags=(-s -w)
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  ldflags+=(
    "-X ${pkg}.gitVersion=${KUBERNETES_VERSION}"
    "-X ${pkg}.gitMajor=${major}"
    "-X ${pkg}.gitMinor=${minor}"
    "-X ${pkg}.gitTreeState=archive"
    "-X ${pkg}.gitCommit="
    "-X ${pkg}.buildDate=${build_date}"
  )
done

echo "tools: building Kubernetes ${KUBERNETES_VERSION} control plane into ${tools_dir} (the first build takes many minutes)"
(
  cd "${here}"
  go build -mod=readonly -trimpath -ldflags "${ldflags[*]}" -o "${tools_dir}/" ./cmd/...
)

echo "tools: installing containerd ${CONTAINERD_VERSION}"
containerd_ldflags=(
  -s -w
  "-X github.com/containerd/containerd/v2/version.Version=${CONTAINERD_VERSION}"
)
(
  cd "${tools_dir}"
  GOBIN="${tools_dir}" go install -trimpath -ldflags "${containerd_ldflags[*]}" \
    "github.com/containerd/containerd/v2/cmd/containerd@${CONTAINERD_VERSION}" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@${CONTAINERD_VERSION}" \
    "github.com/containerd/containerd/v2/cmd/ctr@${CONTAINERD_VERSION}"
)

echo "tools: installing helm ${HELM_VERSION}"
helm_ldflags=(
  -s -w
  "-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
  "-X helm.sh/helm/v3/internal/version.gitTreeState=archive"
  "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=${major}"
  "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${minor}"
  "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=${major}"
  "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${minor}"
)
(
  cd "${tools_dir}"
  GOBIN="${tools_dir}" go install -trimpath -ldflags "${helm_ldflags[*]}" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
)

echo "tools: installing metrics-server ${METRICS_SERVER_VERSION}"
# Its own module (no replace lines), at its own Kubernetes libraries; version stamps as its
# Makefile sets them.
metrics_server_ldflags=(
  -s -w
  "-X k8s.io/client-go/pkg/version.gitVersion=${METRICS_SERVER_VERSION}"
  "-X k8s.io/client-go/pkg/version.gitTreeState=archive"
)
(
  cd "${tools_dir}"
  GOBIN="${tools_dir}" go install -trimpath -ldflags "${metrics_server_ldflags[*]}" \
    "sigs.k8s.io/metrics-server/cmd/metrics-server@${METRICS_SERVER_VERSION}"
)

for binary in "${binaries[@]}"; do
  if [[ ! -x "${tools_dir}/${binary}" ]]; then
    echo "tools: ${binary} missing after the build" >&2
    exit 1
  fi
done
echo "${hash}" > "${stamp_file}"
echo "tools: built ${binaries[*]} in $(( SECONDS - started ))s"
