#!/usr/bin/env bash
# Tests of the longconn-operator chart and the images' Dockerfiles: helm lint and helm template
# with the default and every ci/*.yaml values file, values the schema must refuse (with a message
# naming the value), the chart's CRD and RBAC rules against the operator's own output, the chart
# and crate versions, the Grafana dashboard's metric names, the Dockerfiles' essentials, and
# kube-linter over the rendered chart and over the objects the operator generates.
#
# Usage: TOOLS_DIR=.tools bash charts/test.sh   (helm comes from `make tools`)
# LONGCONN_REQUIRE_KUBE_LINTER=1 turns a kube-linter that cannot be installed into a failure.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "${root}"
tools_dir="${TOOLS_DIR:-.tools}"
mkdir -p "${tools_dir}"
tools_dir="$(cd "${tools_dir}" && pwd)"
helm="${tools_dir}/helm"
cargo="${CARGO:-cargo}"
chart="charts/longconn-operator"
checks=(python3 charts/chart_checks.py)
KUBE_LINTER_VERSION=v0.7.6
release=longconn
release_ns=longconn-system

if [[ ! -x "${helm}" ]]; then
  echo "charts: ${helm} is missing; run make tools" >&2
  exit 1
fi
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
passed=0
failed=0
skipped=0

# check NAME COMMAND...: runs COMMAND, counts and reports the result.
check() {
  local name="$1"
  shift
  if "$@" >"${work}/out" 2>&1; then
    passed=$((passed + 1))
    echo "ok   ${name}"
  else
    failed=$((failed + 1))
    echo "FAIL ${name}"
    sed 's/^/     /' "${work}/out"
  fi
}

# refuses NAME EXPECTED_MESSAGE HELM_ARGS...: helm template must fail and print EXPECTED_MESSAGE.
refuses() {
  local name="$1" message="$2"
  shift 2
  if "${helm}" template "${release}" "${chart}" -n "${release_ns}" "$@" >"${work}/out" 2>&1; then
    echo "helm template accepted it"
    return 1
  fi
  if ! grep -qF -- "${message}" "${work}/out"; then
    echo "the error does not say ${message}:"
    cat "${work}/out"
    return 1
  fi
}

render() { # render OUT HELM_ARGS...
  local out="$1"
  shift
  "${helm}" template "${release}" "${chart}" -n "${release_ns}" "$@" >"${out}"
}

echo "charts: operator output (rbac, render)"
"${cargo}" run -q --locked -p longconn-operator -- rbac >"${work}/rbac.yaml"
"${cargo}" run -q --locked -p longconn-operator -- render -f examples/chat.yaml >"${work}/generated.yaml"

check "Chart version and appVersion equal the crate version" \
  "${checks[@]}" version "${chart}/Chart.yaml" Cargo.toml
check "the chart's crds/ equals crds/" \
  diff -r crds "${chart}/crds"
check "files/rbac.yaml equals longconn-operator rbac" \
  diff "${work}/rbac.yaml" "${chart}/files/rbac.yaml"

# Lint and render with the defaults and with every ci/ values file.
check "helm lint (defaults)" "${helm}" lint --strict "${chart}"
check "helm template (defaults)" render "${work}/default.yaml"
check "helm template (defaults, ServiceMonitor API served)" \
  render "${work}/default-monitoring.yaml" --api-versions monitoring.coreos.com/v1/ServiceMonitor
for values in "${chart}"/ci/*.yaml; do
  base="$(basename "${values}" .yaml)"
  check "helm lint (${base})" "${helm}" lint --strict "${chart}" -f "${values}"
  check "helm template (${base})" render "${work}/${base}.yaml" -f "${values}" \
    --api-versions monitoring.coreos.com/v1/ServiceMonitor
done

operator_image="ghcr.io/longconn/longconn-operator:0.1.0"
gateway_image="ghcr.io/longconn/longconn-gateway:0.1.0"
check "RBAC: ClusterRole and Lease Role equal longconn-operator rbac" \
  "${checks[@]}" rbac "${work}/default.yaml" "${work}/rbac.yaml" cluster "${release_ns}"
check "RBAC: single-namespace mode has only Roles, equal to longconn-operator rbac" \
  "${checks[@]}" rbac "${work}/single-namespace.yaml" "${work}/rbac.yaml" namespace "${release_ns}" apps
check "Deployment: HA, restricted, probes, flags (defaults)" \
  "${checks[@]}" deployment "${work}/default.yaml" "${release_ns}" "${operator_image}" "${gateway_image}" 2
check "Deployment: watch and metrics namespace flags (single-namespace)" \
  "${checks[@]}" deployment "${work}/single-namespace.yaml" "${release_ns}" "${operator_image}" "${gateway_image}" 2 \
  --watch-namespace=apps --metrics-namespace=monitoring --log-format=text
check "Deployment: custom images, replicas and Lease (custom-images)" \
  "${checks[@]}" deployment "${work}/custom-images.yaml" "${release_ns}" \
  registry.example.com/mirror/longconn-operator:0.1.0-rc.1 \
  registry.example.com/mirror/longconn-gateway:0.1.0-rc.1 3 --lease-name=longconn-operator-mirror
check "Deployment: imagePullSecrets (custom-images)" \
  grep -qF -- "- name: registry-credentials" "${work}/custom-images.yaml"
check "Deployment: image digest replaces the tag" bash -c \
  "'${helm}' template r '${chart}' --set image.digest=sha256:$(printf 'a%.0s' {1..64}) | grep -qF 'image: \"ghcr.io/longconn/longconn-operator@sha256:'"
check "PodDisruptionBudget minAvailable 1 over the operator pods" "${checks[@]}" pdb "${work}/default.yaml"
check "no PodDisruptionBudget when disabled (custom-images)" \
  "${checks[@]}" absent "${work}/custom-images.yaml" PodDisruptionBudget
check "no ServiceMonitor without the monitoring API" \
  "${checks[@]}" absent "${work}/default.yaml" ServiceMonitor
check "ServiceMonitor when the monitoring API is served" \
  "${checks[@]}" present "${work}/default-monitoring.yaml" ServiceMonitor "${release_ns}"
check "dashboard ConfigMap in the values' namespace (monitoring)" \
  "${checks[@]}" present "${work}/monitoring.yaml" ConfigMap monitoring
check "dashboard: panels and metric names that exist" \
  "${checks[@]}" dashboard "${work}/default.yaml" operator/src/metrics.rs gateway/src/metrics.rs

# Values the schema must refuse, each with a message that names the value.
check "refuses replicaCount: -1" refuses x "at '/replicaCount': minimum: got -1" --set replicaCount=-1
check "refuses replicaCount: 0" refuses x "at '/replicaCount': minimum: got 0" --set replicaCount=0
check "refuses image.tag: 5 (a number)" refuses x "at '/image/tag': got number, want string" --set image.tag=5
check "refuses an unknown top-level key" refuses x "additional properties 'replicas' not allowed" --set replicas=3
check "refuses an unknown nested key" refuses x "at '/image': additional properties 'tagg' not allowed" --set image.tagg=x
check "refuses logFormat: xml" refuses x "at '/logFormat'" --set logFormat=xml
check "refuses an invalid watchNamespace" refuses x "at '/watchNamespace'" --set watchNamespace=Not_A_Namespace
check "refuses an invalid image.pullPolicy" refuses x "at '/image/pullPolicy'" --set image.pullPolicy=Sometimes
check "refuses serviceMonitor.interval: thirty" refuses x "at '/serviceMonitor/interval'" --set serviceMonitor.interval=thirty

for spec in "operator longconn-operator longconn-operator" \
  "gateway longconn-gateway longconn-gateway" \
  "echo longconn-e2e longconn-echo"; do
  read -r file package binary <<<"${spec}"
  check "images/${file}.Dockerfile: multi-stage, static musl, distroless, USER 65532" \
    "${checks[@]}" dockerfile "images/${file}.Dockerfile" "${package}" "${binary}"
done
check "chart README names the images and documents every value" \
  "${checks[@]}" images-documented "${chart}/README.md" "${chart}/values.yaml"

# kube-linter, installed into TOOLS_DIR at the pinned version unless already there.
kube_linter="${tools_dir}/kube-linter"
kube_linter_stamp="${tools_dir}/.kube-linter-version"
if [[ ! -x "${kube_linter}" || "$(cat "${kube_linter_stamp}" 2>/dev/null)" != "${KUBE_LINTER_VERSION}" ]]; then
  echo "charts: installing kube-linter ${KUBE_LINTER_VERSION} into ${tools_dir}"
  if GOBIN="${tools_dir}" go install "golang.stackrox.io/kube-linter/cmd/kube-linter@${KUBE_LINTER_VERSION}" \
    >"${work}/kube-linter-install" 2>&1; then
    echo "${KUBE_LINTER_VERSION}" >"${kube_linter_stamp}"
  else
    rm -f "${kube_linter_stamp}"
    sed 's/^/     /' "${work}/kube-linter-install"
  fi
fi
if [[ -x "${kube_linter}" && "$(cat "${kube_linter_stamp}" 2>/dev/null)" == "${KUBE_LINTER_VERSION}" ]]; then
  for rendered in default-monitoring single-namespace custom-images monitoring; do
    check "kube-linter: chart (${rendered})" \
      "${kube_linter}" lint --config charts/kube-linter.yaml "${work}/${rendered}.yaml"
  done
  check "kube-linter: objects the operator generates for examples/chat.yaml" \
    "${kube_linter}" lint --config charts/kube-linter-generated.yaml "${work}/generated.yaml"
elif [[ "${LONGCONN_REQUIRE_KUBE_LINTER:-0}" == 1 ]]; then
  failed=$((failed + 1))
  echo "FAIL kube-linter ${KUBE_LINTER_VERSION} could not be installed"
else
  skipped=$((skipped + 1))
  echo "SKIP kube-linter: ${KUBE_LINTER_VERSION} could not be installed (LONGCONN_REQUIRE_KUBE_LINTER=1 makes this a failure)"
fi

echo "charts: ${passed} passed, ${failed} failed, ${skipped} skipped"
(( failed == 0 ))
