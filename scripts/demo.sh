#!/usr/bin/env bash
# make demo: the operator against the embedded local control plane.
#
# Builds everything (the control plane, the nodes' components and the project's images), starts
# the local cluster with three real nodes (containerd, kubelet and kube-proxy each), installs the
# operator with its Helm chart (the CRD, RBAC and two operator pods with leader election, from the
# operator's image) into a namespace that enforces the restricted Pod Security level, shows the API
# server refusing a bad object, applies examples/chat.yaml, waits for its pods (the gateway and
# echo images) to become ready, shows what it became and its status, runs 200 live WebSocket
# sessions against it from the cluster's client host through the Service's ClusterIP while one
# pod is deleted (its sessions migrate to the others),
# performs a drain-orchestrated rolling update under 300 live sessions, lets the operator autoscale
# it on sessions from 3 pods to 5 and back (rebalancing the new pods, draining the removed pods
# first), deletes it and watches
# garbage collection remove what it owned, uninstalls the chart (only the CRD stays), then tears
# everything down. Exits non-zero if any step fails, a session is dropped or a message lost.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Building the cluster's tools, the images (operator, gateway, echo, pause) and longconn-e2e"
make --no-print-directory tools images
cargo build -q -p longconn-e2e
bin="$(cd "${CARGO_TARGET_DIR:-target}/debug" && pwd)"
work=$(mktemp -d)
cluster="$work/cluster"
# Helm keeps its configuration and cache with the demo's files, not in the home folder.
export HELM_CACHE_HOME="$work/helm/cache" HELM_CONFIG_HOME="$work/helm/config" HELM_DATA_HOME="$work/helm/data"
load_pid=
burst_pid=

cleanup() {
  status=$?
  for pid in $load_pid $burst_pid; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ]; then
    # Copied before the nodes go: the kubelets remove the logs of the pods they remove.
    mkdir -p "$work/pod-logs"
    cp -r "$cluster"/nodes/*/pod-logs/. "$work/pod-logs/" 2>/dev/null || true
  fi
  "$bin/longconn-e2e" cluster down --dir "$cluster" >/dev/null 2>&1 || true
  if [ "$status" -ne 0 ]; then
    echo "demo failed; logs: $work/pod-logs (longconn-system_* are the operator's pods)," \
      "$cluster/nodes/*/logs (containerd, kubelet, kube-proxy), $cluster/logs" >&2
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT

step "Starting the local cluster: the control plane and 3 nodes (containerd, kubelet, kube-proxy)"
"$bin/longconn-e2e" cluster up --dir "$cluster"
eval "$("$bin/longconn-e2e" cluster env --dir "$cluster")"
kubectl version | sed 's/^/    /'
kubectl get nodes -o wide

step "Installing the operator with Helm: the CRD, RBAC, two operator pods with leader election"
# Both namespaces that run workloads enforce the restricted Pod Security level: the API server
# refuses any pod that does not meet it. The chart's images are the ones just built and loaded
# into every node. (The chart's NOTES, printed after the install, are left out here.)
kubectl create namespace longconn-system
kubectl label namespace longconn-system default pod-security.kubernetes.io/enforce=restricted
helm install longconn charts/longconn-operator --namespace longconn-system \
  --wait --timeout 180s | sed '/^NOTES:/,$d'
# Right after creation the CRD may have no status yet, which kubectl wait refuses; retry.
for _ in $(seq 1 30); do
  kubectl wait --for condition=established --timeout=60s crd/longconnservices.longconn.dev 2>/dev/null && break
  sleep 1
done
kubectl wait --for condition=established --timeout=5s crd/longconnservices.longconn.dev >/dev/null
# Both replicas are Ready once the API answers; one of them then takes the leader Lease.
leader=
for _ in $(seq 1 60); do
  leader=$(kubectl get lease longconn-operator -n longconn-system -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
  [ -n "$leader" ] && break
  sleep 1
done
[ -n "$leader" ] || { echo "no operator pod took the leader Lease within 60 s" >&2; exit 1; }
kubectl get pods -n longconn-system -o wide
echo "    leader (Lease longconn-system/longconn-operator): $leader"

step "Refusing a bad LongConnService (tls.mode Secret without secretName)"
if kubectl create --dry-run=server -f operator/tests/samples/bad/tls-secret-without-name.yaml 2>"$work/refusal"; then
  echo "the API server accepted a bad object" >&2
  exit 1
fi
sed 's/^/    /' "$work/refusal"

step "Applying examples/chat.yaml"
kubectl apply --server-side -f examples/chat.yaml
kubectl wait lcs/chat --for=jsonpath='{.status.observedGeneration}'=1 --timeout=60s
# The status is recorded before the objects are made, so the pods may not exist yet: `kubectl
# wait` on a selector that matches nothing fails at once.
for _ in $(seq 1 120); do
  [[ -n $(kubectl get pods -l longconn.dev/service=chat -o name) ]] && break
  sleep 0.5
done
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
# The clients run on the cluster's client host and connect to chat's ClusterIP (kube-proxy picks a
# pod for each connection), over TLS verified against chat-tls's CA, 2 messages per second each,
# every echo checked. The deleted pod's preStop drains its gateway: close 1012 spread over 10 s,
# and its sessions reconnect to the Ready pods, resending what was not yet echoed.
load=("$bin/longconn-e2e" load --netns longconn-client --route cluster-ip --service chat)
"${load[@]}" --sessions 200 --rate 2 --duration 20s --json >"$work/load.json" &
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

step "Rolling update under load: 300 sessions while a template change replaces every pod"
# The operator surges one pod of the new revision, waits until it is Ready, drains the old pod
# with the fewest sessions through its gateway's admin API (close 1012 spread over 10 s; the
# clients reconnect to Ready pods), records the gateway's report in status.rollout, and only then
# removes that pod. Three times.
"${load[@]}" --sessions 300 --rate 2 --duration 75s --json \
  >"$work/rollout-load.json" 2>"$work/rollout-load.log" &
load_pid=$!
sleep 8
before=$(kubectl get lcs chat -o jsonpath='{.status.rollout.startedAt}')
kubectl patch lcs chat --type merge -p '{"spec":{"template":{"metadata":{"annotations":{"demo.longconn.dev/release":"2"}}}}}'
# One line, rewritten in place: the operator's status.rollout and the clients' own count.
rollout_status() {
  kubectl get lcs chat -o jsonpath='{.status.rollout.startedAt}{" "}{.status.rollout.phase}{" "}{.status.rollout.podsDrained}{" "}{.status.rollout.sessionsMigrated}{" "}{.status.rollout.sessionsDropped}'
}
# watch_rollout SECONDS STARTED_BEFORE LOAD_LOG: until a rollout other than the one that started
# at STARTED_BEFORE is Complete, showing the clients' count from LOAD_LOG beside the operator's.
watch_rollout() {
  local limit=$1 before=$2 started phase drained migrated dropped clients
  for _ in $(seq 1 "$limit"); do
    read -r started phase drained migrated dropped <<<"$(rollout_status)"
    clients=$(tail -n 1 "$3" 2>/dev/null | sed -n 's/.*\(migrated [0-9]*  dropped [0-9]*\).*/\1/p')
    printf '\r\033[K    operator: %-9s pods drained %s, sessions migrated %s, dropped %s | clients: %s' \
      "${phase:--}" "${drained:-0}" "${migrated:-0}" "${dropped:-0}" "${clients:--}"
    if [ "$started" != "$before" ] && [ "$phase" = Complete ]; then
      echo
      operator_dropped=$dropped
      return 0
    fi
    sleep 1
  done
  echo
  echo "no completed rollout within $limit s" >&2
  return 1
}
watch_rollout 180 "$before" "$work/rollout-load.log"
dropped=$operator_dropped
load_status=0
wait "$load_pid" || load_status=$?
load_pid=
echo "    clients: $(cat "$work/rollout-load.json")"
kubectl get lcs chat -o jsonpath='{range .status.conditions[?(@.type=="SessionsPreserved")]}    {.type}={.status}: {.message}{"\n"}{end}'
kubectl get pods -l longconn.dev/service=chat
if [ "$load_status" -ne 0 ] || [ "$dropped" != 0 ]; then
  echo "the rolling update dropped sessions (clients: exit $load_status; operator: $dropped)" >&2
  exit 1
fi

step "Autoscaling on sessions: 300 sessions scale chat from 3 pods to 5, rebalanced; 120 bring it back to 3"
# The operator is the autoscaler for targetSessionsPerPod (nothing else to install): 300 sessions
# at 60 a pod want 5 pods; the new pods start empty, so a rebalancing round asks the busiest
# gateways to move what they hold above the mean (spread over 5 s here, 30 s by default). When
# the 180-session burst ends, 120 sessions want 2 pods, held at minReplicas 3; after the
# scale-down stabilization window (15 s here, 300 s by default) the two pods that go are drained
# first, never cut. One line, rewritten in place, shows it all.
kubectl patch lcs chat --type merge -p '{"spec":{"autoscaling":{"minReplicas":3,"maxReplicas":5,"targetSessionsPerPod":60,
  "behavior":{"scaleDown":{"stabilizationWindow":"15s"}},"rebalance":{"spread":"5s","cooldown":"10s"}}}}'
"${load[@]}" --sessions 120 --rate 2 --duration 140s --json \
  >"$work/base-load.json" 2>"$work/base-load.log" &
base_pid=$!
load_pid=$base_pid
"${load[@]}" --sessions 180 --rate 2 --duration 45s --json \
  >"$work/burst-load.json" 2>"$work/burst-load.log" &
burst_pid=$!
autoscale_status() {
  # Fields a status does not have yet print empty: split on "|", which keeps empty fields.
  kubectl get lcs chat -o jsonpath='{.spec.replicas}{"|"}{.status.autoscaling.desiredReplicas}{"|"}{.status.readyReplicas}{"|"}{.status.activeSessions}{"|"}{.status.rebalance.round}{"|"}{.status.rebalance.sessionsAsked}{"|"}{.status.autoscaling.lastDecision.reason}'
}
# watch_autoscaling SECONDS REPLICAS NEED_ROUND: until spec.replicas and the Ready pods are
# REPLICAS (and, with NEED_ROUND, a rebalancing round has started), showing the autoscaler's view.
watch_autoscaling() {
  local limit=$1 want=$2 need_round=$3 replicas desired ready sessions round asked reason
  for _ in $(seq 1 "$limit"); do
    IFS='|' read -r replicas desired ready sessions round asked reason <<<"$(autoscale_status)"
    printf '\r\033[K    replicas %s, desired %s, Ready %s, sessions %s, rebalancing rounds %s (%s sessions asked) | last: %.70s' \
      "${replicas:--}" "${desired:--}" "${ready:-0}" "${sessions:-0}" "${round:-0}" "${asked:-0}" "${reason:--}"
    pods=$(kubectl get pods -l longconn.dev/service=chat -o name | wc -l)
    if [ "$replicas" = "$want" ] && [ "$ready" = "$want" ] && [ "$pods" = "$want" ] &&
      { [ "$need_round" = no ] || [ "${round:-0}" -ge 1 ]; }; then
      echo
      return 0
    fi
    sleep 1
  done
  echo
  echo "chat did not reach $want Ready pods within $limit s" >&2
  return 1
}
watch_autoscaling 120 5 yes
burst_status=0
wait "$burst_pid" || burst_status=$?
burst_pid=
echo "    burst clients: $(cat "$work/burst-load.json")"
watch_autoscaling 120 3 no
base_status=0
wait "$base_pid" || base_status=$?
load_pid=
echo "    base clients: $(cat "$work/base-load.json")"
kubectl get lcs chat -o wide
kubectl get events --field-selector involvedObject.name=chat,reason=Scaled \
  -o jsonpath='{range .items[*]}    {.reason}: {.message}{"\n"}{end}'
dropped=$(kubectl get lcs chat -o jsonpath='{.status.rollout.sessionsDropped}')
kubectl get lcs chat -o jsonpath='{range .status.conditions[?(@.type=="SessionsPreserved")]}    {.type}={.status}: {.message}{"\n"}{end}'
if [ "$burst_status" -ne 0 ] || [ "$base_status" -ne 0 ] || [ "${dropped:-0}" != 0 ]; then
  echo "autoscaling dropped sessions (clients: exit $burst_status and $base_status; operator: ${dropped:-0})" >&2
  exit 1
fi

step "Deleting chat: garbage collection removes everything it owned"
kubectl delete lcs chat --wait=true
for _ in $(seq 1 60); do
  left=$(kubectl get deployments,services,secrets -l app.kubernetes.io/instance=chat -o name | wc -l)
  [ "$left" -eq 0 ] && break
  sleep 1
done
[ "$left" -eq 0 ] || { echo "$left owned objects left after 60s" >&2; exit 1; }
echo "    nothing left"

step "Uninstalling the operator with Helm: nothing of the release is left, the CRD stays"
helm uninstall longconn --namespace longconn-system --wait --timeout 120s
release_objects() {
  kubectl get all,serviceaccounts,configmaps,poddisruptionbudgets,networkpolicies,roles,rolebindings \
    -n longconn-system -l app.kubernetes.io/instance=longconn -o name
  kubectl get clusterroles,clusterrolebindings -l app.kubernetes.io/instance=longconn -o name
}
for _ in $(seq 1 60); do
  left=$(release_objects | wc -l)
  [ "$left" -eq 0 ] && break
  sleep 1
done
[ "$left" -eq 0 ] || { echo "left after helm uninstall:" >&2; release_objects >&2; exit 1; }
echo "    release objects left: none"
kubectl get crd longconnservices.longconn.dev

step "Done"
