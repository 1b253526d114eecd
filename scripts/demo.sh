#!/usr/bin/env bash
# make demo: the operator against the embedded local control plane.
#
# Builds everything, starts the control plane and the pod runner (three nodes whose pods run as
# local processes, each in its own network namespace), installs the CRD, runs the operator,
# applies examples/chat.yaml, waits for its pods (real gateway and echo processes) to become
# ready, shows what it became and its status, runs 200 live WebSocket sessions against it while
# one pod is deleted (its sessions migrate to the others), scales it through the scale
# subresource, deletes it and watches garbage collection remove what it owned, then tears
# everything down. Exits non-zero if any step fails, a session is dropped or a message lost.
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
load_pid=

cleanup() {
  status=$?
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null && wait "$load_pid" 2>/dev/null || true
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

step "Live load: 200 WebSocket sessions for 20 s; one pod is deleted midway"
# Sessions go round-robin to the Ready endpoints of chat's EndpointSlices (as kube-proxy routes new
# connections), over TLS verified against chat-tls's CA, 2 messages per second each, every echo
# checked. The deleted pod's preStop drains its gateway: close 1012 spread over 10 s, and its
# sessions reconnect to the Ready pods, resending what was not yet echoed.
"$bin/longconn-e2e" load --service chat --sessions 200 --rate 2 --duration 20s --json >"$work/load.json" &
load_pid=$!
sleep 8
victim=$(kubectl get pods -l longconn.dev/service=chat -o jsonpath='{.items[0].metadata.name}')
kubectl delete pod "$victim" --wait=false
load_status=0
wait "$load_pid" || load_status=$?
load_pid=
echo "    report: $(cat "$work/load.json")"
if [ "$load_status" -ne 0 ]; then
  echo "the load run failed (exit $load_status): sessions dropped or messages lost" >&2
  exit 1
fi
kubectl wait lcs/chat --for=jsonpath='{.status.readyReplicas}'=3 --timeout=120s

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
echo "Drain-orchestrated rollouts will join this demo with the rollout state machine."
