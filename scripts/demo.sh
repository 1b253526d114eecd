#!/usr/bin/env bash
# make demo: the operator against the embedded local control plane.
#
# Builds everything, starts the control plane and the pod runner (three nodes whose pods run as
# local processes, each in its own network namespace), installs the CRD, runs the operator,
# applies examples/chat.yaml, waits for its pods (real gateway and echo processes) to become
# ready, shows what it became and its status, scales it through the scale subresource, deletes
# it and watches garbage collection remove what it owned, then tears everything down. Exits
# non-zero if any step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Building the control-plane tools, the operator, the gateway and longconn-e2e"
make --no-print-directory tools
cargo build -q -p longconn-operator -p longconn-gateway -p longconn-e2e
bin=target/debug
work=$(mktemp -d)
cluster="$work/cluster"
operator_pid=
runner_pid=

cleanup() {
  status=$?
  [ -n "$operator_pid" ] && kill "$operator_pid" 2>/dev/null && wait "$operator_pid" 2>/dev/null || true
  [ -n "$runner_pid" ] && kill "$runner_pid" 2>/dev/null && wait "$runner_pid" 2>/dev/null || true
  "$bin/longconn-e2e" cluster down --dir "$cluster" >/dev/null 2>&1 || true
  if [ "$status" -ne 0 ]; then
    echo "demo failed; logs: $work/operator.log, $work/podrunner.log, $cluster/logs" >&2
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT

step "Starting the local control plane (etcd, kube-apiserver, controller manager, scheduler)"
"$bin/longconn-e2e" cluster up --dir "$cluster"
eval "$("$bin/longconn-e2e" cluster env --dir "$cluster")"
kubectl version | sed 's/^/    /'

step "Starting the pod runner: 3 nodes, each pod a network namespace with real processes"
"$bin/longconn-e2e" podrunner run --dir "$cluster" --nodes 3 --bin-dir "$PWD/$bin" >"$work/podrunner.log" 2>&1 &
runner_pid=$!
kubectl wait --for=condition=Ready node --all --timeout=60s

step "Installing the LongConnService CRD"
kubectl apply --server-side -f crds/longconnservices.longconn.dev.yaml
# Right after creation the CRD may have no status yet, which kubectl wait refuses; retry.
for _ in $(seq 1 30); do
  kubectl wait --for condition=established --timeout=60s crd/longconnservices.longconn.dev 2>/dev/null && break
  sleep 1
done
kubectl wait --for condition=established --timeout=5s crd/longconnservices.longconn.dev >/dev/null

step "Refusing a bad LongConnService (tls.mode Secret without secretName)"
if kubectl create --dry-run=server -f operator/tests/samples/bad/tls-secret-without-name.yaml 2>"$work/refusal"; then
  echo "the API server accepted a bad object" >&2
  exit 1
fi
sed 's/^/    /' "$work/refusal"

step "Running the operator"
kubectl create namespace longconn-system
"$bin/longconn-operator" run --log-format=text --operator-namespace=longconn-system \
  --metrics-listen=127.0.0.1:0 >"$work/operator.log" 2>&1 &
operator_pid=$!

step "Applying examples/chat.yaml"
kubectl apply --server-side -f examples/chat.yaml
kubectl wait lcs/chat --for=jsonpath='{.status.observedGeneration}'=1 --timeout=60s
kubectl wait pods -l longconn.dev/service=chat --for=condition=Ready --timeout=180s
kubectl wait lcs/chat --for=jsonpath='{.status.readyReplicas}'=3 --timeout=60s
kubectl get pods -l longconn.dev/service=chat -o wide
echo
kubectl get lcs chat
echo
kubectl get deployments,services,poddisruptionbudgets,secrets,networkpolicies \
  -l app.kubernetes.io/instance=chat
echo
kubectl get lcs chat -o jsonpath='{range .status.conditions[*]}{.type}{"\t"}{.status}{"\t"}{.reason}{"\t"}{.message}{"\n"}{end}' |
  column -t -s $'\t' | sed 's/^/    /'

step "Scaling to 5 through the scale subresource"
kubectl scale lcs/chat --replicas=5
kubectl wait lcs/chat --for=jsonpath='{.status.readyReplicas}'=5 --timeout=180s
kubectl get lcs chat

step "Deleting chat: garbage collection removes everything it owned"
kubectl delete lcs chat --wait=true
for _ in $(seq 1 60); do
  left=$(kubectl get deployments,services,secrets -l app.kubernetes.io/instance=chat -o name | wc -l)
  [ "$left" -eq 0 ] && break
  sleep 1
done
[ "$left" -eq 0 ] || { echo "$left owned objects left after 60s" >&2; exit 1; }
echo "    nothing left"

step "Done"
echo "Live client sessions and drain-orchestrated rollouts will join this demo with the load"
echo "clients and the rollout state machine."
