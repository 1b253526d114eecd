#!/usr/bin/env bash
# Tests of the longconn-operator chart and the images' Dockerfiles: helm lint and helm template
# with the default and every ci/*.yaml values file, values and combinations of values the schema
# must refuse (helm template and helm lint alike, with a message naming the value), the chart's CRD
# and RBAC rules against the operator's own output, the chart and crate versions, the Grafana
# dashboard's metric names, the PrometheusRule's alerts and metric names, the Dockerfiles'
# essentials, and checkov's Kubernetes checks over the
# rendered chart (charts/checkov.yaml) and over every kind of object the operator generates, for
# the LongConnServices in charts/checkov/ (charts/checkov-generated.yaml).
#
# Usage: TOOLS_DIR=.tools bash charts/test.sh   (helm comes from `make tools`; checkov is installed
# at the pinned version into a virtualenv in the machine's cache, and one that cannot be installed
# fails)
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
CHECKOV_VERSION=3.3.30
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

# refuses NAME EXPECTED_MESSAGE HELM_ARGS...: helm template and helm lint must both fail and print
# every line of EXPECTED_MESSAGE.
refuses() {
  local name="$1" message="$2"
  shift 2
  refused_by "helm template" "${message}" "${helm}" template "${release}" "${chart}" -n "${release_ns}" "$@" \
    && refused_by "helm lint" "${message}" "${helm}" lint --strict "${chart}" "$@"
}

# refused_by WHAT EXPECTED_MESSAGE COMMAND...: COMMAND must fail and print every line of
# EXPECTED_MESSAGE.
refused_by() {
  local what="$1" message="$2" line
  shift 2
  if "$@" >"${work}/refused" 2>&1; then
    echo "${what} accepted it"
    return 1
  fi
  while IFS= read -r line; do
    if ! grep -qF -- "${line}" "${work}/refused"; then
      echo "${what}'s error does not say ${line}:"
      cat "${work}/refused"
      return 1
    fi
  done <<<"${message}"
}

render() { # render OUT HELM_ARGS...
  local out="$1"
  shift
  "${helm}" template "${release}" "${chart}" -n "${release_ns}" "$@" >"${out}"
}

echo "charts: operator output (rbac, render)"
"${cargo}" run -q --locked -p longconn-operator -- rbac >"${work}/rbac.yaml"
# The objects the operator generates for the LongConnServices of charts/checkov/, for checkov:
# together every kind it creates (Secrets, Certificate, Deployment, Services, PodDisruptionBudget,
# NetworkPolicy with the metrics namespace admitted, ServiceMonitor, HorizontalPodAutoscaler,
# and the first revision's ControllerRevision).
generated=()
for sample in charts/checkov/*.yaml; do
  generated+=("generated-$(basename "${sample}")")
  "${cargo}" run -q --locked -p longconn-operator -- render -f "${sample}" \
    --metrics-namespace=monitoring >"${work}/${generated[-1]}"
done

check "Chart version and appVersion equal the crate version" \
  "${checks[@]}" version "${chart}/Chart.yaml" Cargo.toml
check "the chart's crds/ equals crds/" \
  diff -r crds "${chart}/crds"
check "files/rbac.yaml equals longconn-operator rbac" \
  diff "${work}/rbac.yaml" "${chart}/files/rbac.yaml"

# Lint and render with the defaults and with every ci/ values file.
check "helm lint (defaults)" "${helm}" lint --strict "${chart}"
check "helm template (defaults)" render "${work}/default.yaml"
monitoring_apis=(--api-versions monitoring.coreos.com/v1/ServiceMonitor
  --api-versions monitoring.coreos.com/v1/PrometheusRule)
check "helm template (defaults, ServiceMonitor and PrometheusRule APIs served)" \
  render "${work}/default-monitoring.yaml" "${monitoring_apis[@]}"
for values in "${chart}"/ci/*.yaml; do
  base="$(basename "${values}" .yaml)"
  check "helm lint (${base})" "${helm}" lint --strict "${chart}" -f "${values}"
  check "helm template (${base})" render "${work}/${base}.yaml" -f "${values}" "${monitoring_apis[@]}"
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
check "NetworkPolicy: the metrics port only, from anywhere (defaults)" \
  "${checks[@]}" network-policy "${work}/default.yaml"
check "NetworkPolicy: the metrics port only, from metricsNamespace (single-namespace)" \
  "${checks[@]}" network-policy "${work}/single-namespace.yaml" monitoring
check "helm template (networkPolicy.enabled=false)" \
  render "${work}/no-network-policy.yaml" --set networkPolicy.enabled=false
check "no NetworkPolicy when disabled" \
  "${checks[@]}" absent "${work}/no-network-policy.yaml" NetworkPolicy
check "no ServiceMonitor without the monitoring API" \
  "${checks[@]}" absent "${work}/default.yaml" ServiceMonitor
check "ServiceMonitor when the monitoring API is served" \
  "${checks[@]}" present "${work}/default-monitoring.yaml" ServiceMonitor "${release_ns}"
check "no PrometheusRule without the monitoring API" \
  "${checks[@]}" absent "${work}/default.yaml" PrometheusRule
check "PrometheusRule: the operator's alerts, on metrics it exports, when the API is served" \
  "${checks[@]}" prometheus-rule "${work}/default-monitoring.yaml" "${release_ns}" operator/src/metrics.rs \
  LongConnDropBudgetExceeded LongConnProgressDeadlineExceeded
check "helm template (serviceMonitor.enabled=false, monitoring APIs served)" \
  render "${work}/no-service-monitor.yaml" "${monitoring_apis[@]}" --set serviceMonitor.enabled=false
check "no PrometheusRule without the operator's ServiceMonitor" \
  "${checks[@]}" absent "${work}/no-service-monitor.yaml" PrometheusRule
check "dashboard ConfigMap in the values' namespace (monitoring)" \
  "${checks[@]}" present "${work}/monitoring.yaml" ConfigMap monitoring
check "dashboard: panels and metric names that exist" \
  "${checks[@]}" dashboard "${work}/default.yaml" operator/src/metrics.rs gateway/src/metrics.rs \
  gateway/src/fds.rs gateway/src/session_limits.rs

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
# Combinations of values the schema must refuse, each listing the ways out.
check "refuses leaderElection.enabled=false with 2 replicas (both would reconcile)" refuses x \
  "at '/replicaCount': maximum: got 2, want 1
at '/leaderElection/enabled': value must be true" --set leaderElection.enabled=false
check "refuses one replica with a PodDisruptionBudget of minAvailable 1 (blocks every drain)" refuses x \
  "at '/replicaCount': minimum: got 1, want 2
at '/podDisruptionBudget/enabled': value must be false
at '/podDisruptionBudget/minAvailable': maximum: got 1, want 0" --set replicaCount=1
# A schema cannot compare two values, so the template refuses this one; helm lint reports a
# template's `fail` only as [INFO], so helm template (and install) are what refuse it.
check "refuses a PodDisruptionBudget that keeps every one of 3 replicas (blocks every drain)" \
  refused_by "helm template" "podDisruptionBudget.minAvailable (3) must be below replicaCount (3)" \
  "${helm}" template x "${chart}" -n "${release_ns}" --set replicaCount=3,podDisruptionBudget.minAvailable=3
check "helm lint accepts one replica without leader election or PodDisruptionBudget" \
  "${helm}" lint --strict "${chart}" --set replicaCount=1,leaderElection.enabled=false,podDisruptionBudget.enabled=false
check "helm template accepts one replica without leader election or PodDisruptionBudget" \
  render "${work}/single-replica.yaml" --set replicaCount=1,leaderElection.enabled=false,podDisruptionBudget.enabled=false

for spec in "operator longconn-operator longconn-operator" \
  "gateway longconn-gateway longconn-gateway" \
  "echo longconn-echo longconn-echo" \
  "pause pause pause"; do
  read -r file package binary <<<"${spec}"
  check "images/${file}.Dockerfile: FROM scratch, only the ${binary} binary, non-root USER, no RUN" \
    "${checks[@]}" dockerfile "images/${file}.Dockerfile" "${package}" "${binary}"
done
check "chart README names the images and documents every value" \
  "${checks[@]}" images-documented "${chart}/README.md" "${chart}/values.yaml"

check "charts/checkov/ renders every kind in operator/src/kinds.rs" \
  "${checks[@]}" kinds operator/src/kinds.rs "${generated[@]/#/${work}/}"

# checkov, installed at the pinned version into a virtualenv unless already there (.installed
# marks a complete install). One that cannot be installed is a failure, never a skip. The
# virtualenv is in the machine's cache ($CHECKOV_VENV, by default
# ~/.cache/longconn/checkov-VERSION), named by its version, so that a fresh clone on the same
# machine does not install it again (a minute), as scripts/deny.sh keeps cargo-deny.
checkov_venv="${CHECKOV_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/longconn/checkov-${CHECKOV_VERSION}}"
checkov="${checkov_venv}/bin/checkov"
install_checkov() {
  rm -rf "${checkov_venv}"
  if ! python3 -m venv "${checkov_venv}"; then
    echo "python3 -m venv failed; installing python3-venv"
    rm -rf "${checkov_venv}"
    apt-get update -qq || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv || return 1
    python3 -m venv "${checkov_venv}" || return 1
  fi
  "${checkov_venv}/bin/pip" install --quiet --disable-pip-version-check "checkov==${CHECKOV_VERSION}" \
    || return 1
  touch "${checkov_venv}/.installed"
}

# checkov_check NAME CONFIG FILE...: checkov's Kubernetes checks, as CONFIG sets them, over the
# rendered FILEs in the work directory; passes when checks ran and none failed. A failure prints
# each failed check with its resource and file.
checkov_check() {
  local name="$1" config="$2" summary
  shift 2
  if (cd "${work}" && CKV_SKIP_PACKAGE_UPDATE_CHECK=true \
    "${checkov}" --config-file "${root}/${config}" --file "$@") >"${work}/out" 2>&1 \
    && summary="$(grep -oE 'Passed checks: [1-9][0-9]*, Failed checks: 0' "${work}/out")"; then
    passed=$((passed + 1))
    summary="${summary%%,*}"
    echo "ok   ${name}: ${summary#Passed checks: } checks passed"
  else
    failed=$((failed + 1))
    echo "FAIL ${name}"
    sed 's/^/     /' "${work}/out"
  fi
}

if [[ ! -f "${checkov_venv}/.installed" ]]; then
  echo "charts: installing checkov ${CHECKOV_VERSION} into ${checkov_venv}"
  install_checkov >"${work}/checkov-install" 2>&1 || true
fi
if [[ -f "${checkov_venv}/.installed" ]]; then
  # One run each (checkov takes seconds to start); a failed check names its file.
  checkov_check "checkov: chart (default-monitoring, single-namespace, custom-images, monitoring)" \
    charts/checkov.yaml default-monitoring.yaml single-namespace.yaml custom-images.yaml monitoring.yaml
  checkov_check "checkov: objects the operator generates for charts/checkov/*.yaml" \
    charts/checkov-generated.yaml "${generated[@]}"
else
  failed=$((failed + 1))
  echo "FAIL checkov ${CHECKOV_VERSION} could not be installed into ${checkov_venv}"
  sed 's/^/     /' "${work}/checkov-install"
fi

echo "charts: ${passed} passed, ${failed} failed, ${skipped} skipped"
(( failed == 0 ))
