#!/usr/bin/env bash
# make bench-rollout: a 6-pod rolling update under live sessions, with longconn and with a plain
# Deployment, on the embedded local cluster (three real nodes running the project's images),
# printed side by side. The load clients run on the cluster's client host and connect through
# the Service's ClusterIP, as clients do.
#
# 1. longconn: a LongConnService with 6 replicas (drain.spread 10s), SESSIONS live WebSocket
#    sessions, a template change; measured from the change until status.rollout is Complete (every
#    old pod drained and gone). API requests are the operator's own count
#    (longconn_operator_api_requests_total) over the rollout; its leader election's requests,
#    which come at a fixed pace whatever it does, are counted apart
#    (longconn_operator_lease_requests_total) and shown beside; the balance when done is
#    status.rollout.balance (the busiest pod's sessions over the mean). Three times: with the
#    default settings (maxSurge 1, maxConcurrentDrains unset: drains are paced by the room the
#    receiving pods have), with maxConcurrentDrains 1 (one drain at a time), and with maxSurge
#    100% (every new pod started at once, drains paced by their room: the setting for speed,
#    at the price of twice the pods while the rollout lasts).
# 2. The anchor, on the same cluster and the same pods: the operator is stopped and the
#    LongConnService deleted with --cascade=orphan, which leaves its Deployment as a plain one
#    (same pod template: gateway sidecar, preStop `drain --wait` with the same spread, less the
#    hook's --handoff, which waits for an operator to start the drain), set to
#    maxSurge 1 / maxUnavailable 0. Same load, a template change; measured until the Deployment's
#    rollout is done and no old pod is left. Then once more with maxSurge 100%, beside longconn's
#    run with the same setting.
# Dropped sessions are counted by the clients (and, for longconn, by the operator too), and so are
# refused attempts: reconnects of moved sessions refused, apart from those of the sessions' opening.
#
#   SESSIONS (600)   live sessions
#   OPERATOR_LOG     a file to copy the operator's log to at the end; with
#                    RUST_LOG=info,kube=warn,longconn_operator::api=debug it names every request
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${SESSIONS:-600}
REPLICAS=6
# Sessions run this long in each part; the rollout must end well within it (checked).
LOAD=180s
LOAD_SECONDS=180
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Building the cluster's tools, the images and the operator and longconn-e2e (release)"
make --no-print-directory tools images
cargo build -q --release -p longconn-operator -p longconn-e2e
bin=target/release
work=$(mktemp -d)
cluster="$work/cluster"
operator_pid=
load_pid=

cleanup() {
  status=$?
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null && wait "$load_pid" 2>/dev/null || true
  [ -n "$operator_pid" ] && kill "$operator_pid" 2>/dev/null && wait "$operator_pid" 2>/dev/null || true
  "$bin/longconn-e2e" cluster down --dir "$cluster" >/dev/null 2>&1 || true
  if [ -n "${OPERATOR_LOG:-}" ] && [ -f "$work/operator.log" ]; then
    cp "$work/operator.log" "$OPERATOR_LOG"
  fi
  if [ "$status" -ne 0 ]; then
    echo "bench failed; logs: $work/operator.log, $cluster/nodes/*/logs, $cluster/logs" >&2
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
# The load starts 10 s before the change; the rollout must end at least 10 s before the load.
check_within_load() {
  awk -v t="$1" -v l="$LOAD_SECONDS" 'BEGIN { exit !(t + 20 <= l) }' ||
    { echo "the rollout took $1 s, too close to the end of the $LOAD load" >&2; exit 1; }
}
# json_field FILE NAME: the first number named NAME in the load's report (the run's total: the
# per-endpoint counts come after it).
json_field() { grep -o "\"$2\":[0-9]*" "$1" | head -n 1 | cut -d: -f2; }
# refused FILE: reconnects of moved sessions refused (the rollout's), then in brackets the
# attempts refused while the sessions opened (before the change, so not the rollout's doing).
refused() {
  local counts total reconnecting
  counts=$(grep -o '"refused_attempts":{[^}]*}' "$1" | head -n 1)
  total=$(json_field <(echo "$counts") total)
  reconnecting=$(json_field <(echo "$counts") reconnecting)
  echo "$reconnecting ($(( total - reconnecting )) opening)"
}

step "Starting the local cluster: the control plane and 3 nodes"
"$bin/longconn-e2e" cluster up --dir "$cluster"
eval "$("$bin/longconn-e2e" cluster env --dir "$cluster")"
kubectl label namespace default pod-security.kubernetes.io/enforce=restricted >/dev/null
kubectl apply --server-side -f crds/longconnservices.longconn.dev.yaml >/dev/null
for _ in $(seq 1 30); do
  kubectl wait --for condition=established --timeout=60s crd/longconnservices.longconn.dev >/dev/null 2>&1 && break
  sleep 1
done
kubectl create namespace longconn-system >/dev/null
# The log exists before the loop below reads it: the background job opens its redirection on
# its own schedule, and a read that came first failed the bench.
: >"$work/operator.log"
"$bin/longconn-operator" run --log-format=text --operator-namespace=longconn-system \
  --metrics-listen=127.0.0.1:0 >"$work/operator.log" 2>&1 &
operator_pid=$!
metrics=
for _ in $(seq 1 50); do
  metrics=$(sed -e 's/\x1b\[[0-9;]*m//g' "$work/operator.log" |
    sed -n 's/.*serving \/metrics.*addr=Some(\([0-9.:]*\)).*/\1/p' | head -n 1)
  [ -n "$metrics" ] && break
  sleep 0.2
done
[ -n "$metrics" ] || { echo "the operator did not report its metrics address" >&2; exit 1; }
# requests NAME: the operator's count of its API requests of that name (api, lease).
requests() {
  curl -fsS "http://$metrics/metrics" | awk -v m="^longconn_operator_$1_requests_total" '$0 ~ m { n += $2 } END { print n + 0 }'
}

sed -e "s/replicas: 3/replicas: $REPLICAS/" examples/chat.yaml | kubectl apply --server-side -f - >/dev/null
kubectl wait lcs/chat --for=jsonpath='{.status.readyReplicas}'=$REPLICAS --timeout=300s >/dev/null

load=("$bin/longconn-e2e" load --netns longconn-client --route cluster-ip --service chat)

# longconn_rollout NAME RELEASE: a template change under load; records wall_time, requests,
# drained and operator_dropped under NAME and leaves the clients' report in $work/NAME-load.json.
declare -A wall_time api lease drained operator_dropped balance
longconn_rollout() {
  local name=$1 release=$2 before api_before lease_before start started phase
  "${load[@]}" --sessions "$SESSIONS" --rate 1 --duration "$LOAD" --json \
    >"$work/$name-load.json" 2>"$work/$name-load.log" &
  load_pid=$!
  sleep 10
  before=$(kubectl get lcs chat -o jsonpath='{.status.rollout.startedAt}')
  api_before=$(requests api)
  lease_before=$(requests lease)
  start=$(now)
  kubectl patch lcs chat --type merge -p "{\"spec\":{\"template\":{\"metadata\":{\"annotations\":{\"bench.longconn.dev/release\":\"$release\"}}}}}" >/dev/null
  for _ in $(seq 1 1200); do
    read -r started phase <<<"$(kubectl get lcs chat -o jsonpath='{.status.rollout.startedAt}{" "}{.status.rollout.phase}')"
    [ "$started" != "$before" ] && [ "$phase" = Complete ] && break
    sleep 0.25
  done
  [ "$phase" = Complete ] || { echo "the longconn rollout did not complete within 5 minutes" >&2; exit 1; }
  wall_time[$name]=$(elapsed "$start" "$(now)")
  check_within_load "${wall_time[$name]}"
  api[$name]=$(( $(requests api) - api_before ))
  lease[$name]=$(( $(requests lease) - lease_before ))
  drained[$name]=$(kubectl get lcs chat -o jsonpath='{.status.rollout.podsDrained}')
  operator_dropped[$name]=$(kubectl get lcs chat -o jsonpath='{.status.rollout.sessionsDropped}')
  balance[$name]=$(kubectl get lcs chat -o jsonpath='{.status.rollout.balance}')
  wait "$load_pid" || true
  load_pid=
  echo "    ${wall_time[$name]}s, ${drained[$name]} pods drained, operator: ${operator_dropped[$name]} dropped, balance ${balance[$name]:-?}; clients: $(tail -n 1 "$work/$name-load.log")"
}

step "longconn, default settings (maxSurge 1, drains paced by the receivers' room): $REPLICAS pods, $SESSIONS live sessions, a template change"
longconn_rollout default 2

step "longconn, maxConcurrentDrains 1 (one drain at a time)"
kubectl patch lcs chat --type merge -p '{"spec":{"rollout":{"maxConcurrentDrains":1}}}' >/dev/null
longconn_rollout serial 3

step "longconn, maxSurge 100% (every new pod at once; drains paced by the receivers' room)"
kubectl patch lcs chat --type merge -p '{"spec":{"rollout":{"maxConcurrentDrains":null,"maxSurge":"100%"}}}' >/dev/null
longconn_rollout surge 4

step "Plain Deployment: the same pods, the operator stopped, the LongConnService orphaned"
kill "$operator_pid"
wait "$operator_pid" || true
operator_pid=
deployment=$(kubectl get deployments -l longconn.dev/service=chat -o jsonpath='{.items[0].metadata.name}')
kubectl delete lcs chat --cascade=orphan >/dev/null
# A plain Deployment's pods go on their own: without the operator, nothing would release the
# pods' drain-report finalizer, so it goes from the running pods and from the template.
for pod in $(kubectl get pods -l longconn.dev/service=chat -o name); do
  kubectl patch "$pod" --type=json -p '[{"op":"remove","path":"/metadata/finalizers"}]' >/dev/null
done
# Its hook drains at once, as a plain Deployment's would: longconn's hook first gives the operator
# up to 20 s (--handoff) to start the drain, and with no operator it would wait all of it.
hook=$(kubectl get deployment "$deployment" -o jsonpath='{.spec.template.spec.containers[0].lifecycle.preStop.exec.command}')
plain_hook=$(sed -e 's/,"--handoff","[^"]*"//' <<<"$hook")
[ "$plain_hook" != "$hook" ] || { echo "no --handoff in the drain hook: $hook" >&2; exit 1; }
# One change of the template: pods made from one that still had the finalizer would stay.
kubectl patch deployment "$deployment" --type json -p "[
  {\"op\":\"replace\",\"path\":\"/spec/template/spec/containers/0/lifecycle/preStop/exec/command\",\"value\":$plain_hook},
  {\"op\":\"remove\",\"path\":\"/spec/template/metadata/finalizers\"}]" >/dev/null
kubectl rollout status deployment "$deployment" --timeout=120s >/dev/null

# one_template: waits until every pod of chat is of one template (the pods a template change
# replaced are gone, not only the new ones Ready) and prints its pod-template-hash: the old pods
# of the next change are exactly these.
one_template() {
  local hashes
  for _ in $(seq 1 240); do
    hashes=$(kubectl get pods -l longconn.dev/service=chat \
      -o jsonpath='{range .items[*]}{.metadata.labels.pod-template-hash}{"\n"}{end}' | sort -u)
    if [ -n "$hashes" ] && [ "$(wc -l <<<"$hashes")" -eq 1 ]; then
      echo "$hashes"
      return
    fi
    sleep 0.5
  done
  echo "pods of more than one template were left after 2 minutes" >&2
  return 1
}

# plain_rollout NAME SURGE RELEASE: the Deployment set to maxSurge SURGE / maxUnavailable 0, then
# a template change under load; records plain_time under NAME, the clients' report in
# $work/plain-NAME-load.json.
declare -A plain_time
plain_rollout() {
  local name=$1 surge=$2 release=$3 old_hash start
  kubectl patch deployment "$deployment" --type merge \
    -p "{\"spec\":{\"strategy\":{\"type\":\"RollingUpdate\",\"rollingUpdate\":{\"maxSurge\":$surge,\"maxUnavailable\":0}}}}" >/dev/null
  old_hash=$(one_template)
  "${load[@]}" --sessions "$SESSIONS" --rate 1 --duration "$LOAD" --json \
    >"$work/plain-$name-load.json" 2>"$work/plain-$name-load.log" &
  load_pid=$!
  sleep 10
  start=$(now)
  kubectl patch deployment "$deployment" --type merge -p "{\"spec\":{\"template\":{\"metadata\":{\"annotations\":{\"bench.longconn.dev/release\":\"$release\"}}}}}" >/dev/null
  kubectl rollout status deployment "$deployment" --timeout=300s >/dev/null
  for _ in $(seq 1 1200); do
    [ "$(kubectl get pods -l "longconn.dev/service=chat,pod-template-hash=$old_hash" -o name | wc -l)" -eq 0 ] && break
    sleep 0.25
  done
  plain_time[$name]=$(elapsed "$start" "$(now)")
  check_within_load "${plain_time[$name]}"
  wait "$load_pid" || true
  load_pid=
  echo "    ${plain_time[$name]}s; clients: $(tail -n 1 "$work/plain-$name-load.log")"
}
plain_rollout default 1 5

step "Plain Deployment with maxSurge 100% (every new pod at once)"
plain_rollout surge '"100%"' 6

step "Results: $REPLICAS-pod rolling update, $SESSIONS live sessions, drain.spread 10s, one run"
per_pod() { awk -v r="$1" -v d="$2" 'BEGIN { if (d > 0) printf "%.1f (%d for %d pods)", r / d, r, d; else print "-" }'; }
row() { printf '    %-34s %10s %18s %19s %12s %20s %8s %30s %15s\n' "$@"; }
row "" "wall time" "dropped (clients)" "dropped (operator)" "moved twice" "refused reconnects" "balance" "API requests per drained pod" "Lease requests"
declare -A label=(
  [default]="longconn, default settings"
  [serial]="longconn, maxConcurrentDrains 1"
  [surge]="longconn, maxSurge 100%"
  [plain-default]="plain Deployment (anchor)"
  [plain-surge]="plain Deployment, maxSurge 100%"
)
for name in default serial surge; do
  row "${label[$name]}" "${wall_time[$name]}s" "$(json_field "$work/$name-load.json" dropped)" \
    "${operator_dropped[$name]}" "$(json_field "$work/$name-load.json" moved_more_than_once)" \
    "$(refused "$work/$name-load.json")" "${balance[$name]:--}" \
    "$(per_pod "${api[$name]}" "${drained[$name]}")" "${lease[$name]}"
done
for name in default surge; do
  row "${label[plain-$name]}" "${plain_time[$name]}s" "$(json_field "$work/plain-$name-load.json" dropped)" "-" \
    "$(json_field "$work/plain-$name-load.json" moved_more_than_once)" \
    "$(refused "$work/plain-$name-load.json")" "-" "- (made by the controllers)" "-"
done
for name in default serial surge; do
  awk -v t="${wall_time[$name]}" -v p="${plain_time[default]}" -v l="${label[$name]}" \
    'BEGIN { printf "    wall time against the anchor, %s: %.2f\n", l, t / p }'
done
awk -v t="${wall_time[surge]}" -v p="${plain_time[surge]}" \
  'BEGIN { printf "    longconn with maxSurge 100%% against the plain Deployment with maxSurge 100%%: %.2f\n", t / p }'
