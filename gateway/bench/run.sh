#!/usr/bin/env bash
# Benchmark of the longconn gateway against nginx and HAProxy, in front of the same echo
# upstream, driven by the same load generator (gateway/examples/loadgen.rs). Prints one table.
#
#   make bench-gateway            (or: bash gateway/bench/run.sh)
#
# Environment: SESSIONS (idle sessions, default 8000), SECONDS_PER_RUN (default 5).
# Everything listens on 127.0.0.1. Needs root to install nginx and haproxy with apt-get.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SESSIONS="${SESSIONS:-8000}"
SECS="${SECONDS_PER_RUN:-5}"
WORK="$(mktemp -d /tmp/longconn-bench.XXXXXX)"
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

log() { printf '>> %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------------------
if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
    log "installing nginx and haproxy from Debian's packages"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light haproxy >/dev/null 2>&1 \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy >/dev/null
fi
NGINX="$(command -v nginx)"
HAPROXY="$(command -v haproxy)"

log "building the gateway and the load generator (release)"
(cd "$ROOT" && cargo build -q --release -p longconn-gateway --bin longconn-gateway --example loadgen)
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
GW="$TARGET_DIR/release/longconn-gateway"
LOADGEN="$TARGET_DIR/release/examples/loadgen"

ulimit -n 20000 2>/dev/null || true
"$LOADGEN" cert "$WORK/tls"

# --- ports --------------------------------------------------------------------------------
UP=19080
GW_PLAIN=19081 GW_TLS=19082
NGX_PLAIN=19083 NGX_TLS=19084
HAP_PLAIN=19085 HAP_TLS=19086

wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "port $1 did not open" >&2
    return 1
}

LAST=""
start() { # name, command...; sets LAST to the new process id
    local name="$1"; shift
    "$@" >"$WORK/$name.log" 2>&1 &
    LAST=$!
    PIDS+=("$LAST")
}

# --- upstream and proxies ------------------------------------------------------------------
start echo "$LOADGEN" echo --listen "127.0.0.1:$UP"
wait_port "$UP"

GW_COMMON=(--upstream "127.0.0.1:$UP" --worker-threads 1 --max-connections 30000
    --rate-limit-connections-per-second-per-ip 0 --heartbeat-interval 10m --idle-timeout 1h)
start gateway env LONGCONN_GATEWAY_LOG=warn "$GW" run --listen "127.0.0.1:$GW_PLAIN" \
    --admin-listen 127.0.0.1:19091 "${GW_COMMON[@]}"
GW_PID=$LAST
start gateway-tls env LONGCONN_GATEWAY_LOG=warn "$GW" run --listen "127.0.0.1:$GW_TLS" \
    --admin-listen 127.0.0.1:19092 "${GW_COMMON[@]}" \
    --tls-cert "$WORK/tls/cert.pem" --tls-key "$WORK/tls/key.pem"

mkdir -p "$WORK/nginx/logs"
cat >"$WORK/nginx/nginx.conf" <<CONF
user root;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 20000; }
http {
    access_log off;
    map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
    upstream app { server 127.0.0.1:$UP; }
    server {
        listen 127.0.0.1:$NGX_PLAIN;
        listen 127.0.0.1:$NGX_TLS ssl;
        ssl_certificate $WORK/tls/cert.pem;
        ssl_certificate_key $WORK/tls/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }
    }
}
CONF
start nginx "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;'
NGX_PID=$LAST

cat >"$WORK/haproxy.cfg" <<CONF
global
    # Two descriptors per proxied session, within the 20000 a process may open here.
    maxconn 9900
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
frontend fe
    bind 127.0.0.1:$HAP_PLAIN
    bind 127.0.0.1:$HAP_TLS ssl crt $WORK/tls/combined.pem
    default_backend app
backend app
    server s1 127.0.0.1:$UP maxconn 9900
CONF
start haproxy "$HAPROXY" -f "$WORK/haproxy.cfg" -db
HAP_PID=$LAST

for p in $GW_PLAIN $GW_TLS $NGX_PLAIN $NGX_TLS $HAP_PLAIN $HAP_TLS; do
    wait_port "$p" || { tail -n 5 "$WORK"/*.log >&2; exit 1; }
done
for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "process $pid exited early (port taken?)" >&2; tail -n 5 "$WORK"/*.log >&2; exit 1; }
done
sleep 0.5
# The nginx master and its worker.
NGX_PIDS="$(printf '%s\n' "$NGX_PID" $(pgrep -P "$NGX_PID" || true) | paste -sd, -)"

field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p"; }

# --- measurements -------------------------------------------------------------------------
declare -A MEM TPUT P50 P99 L50 L99 HS HSTLS
names=(gateway nginx haproxy)
declare -A PLAIN=([gateway]=$GW_PLAIN [nginx]=$NGX_PLAIN [haproxy]=$HAP_PLAIN)
declare -A TLSP=([gateway]=$GW_TLS [nginx]=$NGX_TLS [haproxy]=$HAP_TLS)
declare -A MEMPIDS=([gateway]=$GW_PID [nginx]=$NGX_PIDS [haproxy]=$HAP_PID)

for n in "${names[@]}"; do
    log "$n: RSS per idle session at $SESSIONS sessions"
    out=$("$LOADGEN" idle --target "127.0.0.1:${PLAIN[$n]}" --sessions "$SESSIONS" --pids "${MEMPIDS[$n]}")
    log "   $out"
    MEM[$n]=$(echo "$out" | field kib_per_session)
    sleep 2
done

for n in "${names[@]}"; do
    log "$n: echo throughput at saturation"
    out=$("$LOADGEN" throughput --target "127.0.0.1:${PLAIN[$n]}" --seconds "$SECS")
    log "   $out"
    TPUT[$n]=$(echo "$out" | field msgs_per_sec)
done

# Half the lowest saturation rate, the same for every row, so the latencies compare.
LOWEST=$(printf '%s\n' "${TPUT[@]}" | sort -n | head -1)
RATE=$((LOWEST / 2))
latency() { # name, rate -> "p50_us p99_us"
    local port=${PLAIN[$1]:-$UP} out
    log "$1: latency at $2 msgs/s"
    out=$("$LOADGEN" latency --target "127.0.0.1:$port" --rate "$2" --seconds "$SECS")
    log "   $out"
    echo "$(echo "$out" | field p50_us) $(echo "$out" | field p99_us)"
}
for n in direct "${names[@]}"; do
    read -r "P50[$n]" "P99[$n]" < <(latency "$n" "$RATE")
done

# The same at a light rate, where the two cores are not saturated by the load generator and the
# echo upstream themselves: this shows the latency a proxy adds.
LIGHT=1000
for n in direct "${names[@]}"; do
    read -r "L50[$n]" "L99[$n]" < <(latency "$n" "$LIGHT")
done

for n in "${names[@]}"; do
    log "$n: handshakes per second, plain and TLS"
    out=$("$LOADGEN" handshakes --target "127.0.0.1:${PLAIN[$n]}" --seconds 3)
    log "   $out"
    HS[$n]=$(echo "$out" | field handshakes_per_sec)
    out=$("$LOADGEN" handshakes --target "127.0.0.1:${TLSP[$n]}" --tls-cert "$WORK/tls/cert.pem" --seconds 3)
    log "   $out"
    HSTLS[$n]=$(echo "$out" | field handshakes_per_sec)
done

ms() { awk -v us="$1" 'BEGIN { printf "%.3f", us / 1000 }'; }

echo
echo "longconn gateway vs nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///') vs HAProxy $("$HAPROXY" -v | head -1 | awk '{print $3}')  ($(nproc) CPUs, $(date -u +%Y-%m-%d))"
echo "one proxy thread / worker each; echo upstream and load generator on the same machine"
echo
row() { printf '| %-17s | %9s | %11s | %17s | %17s | %12s | %12s |\n' "$@"; }
row proxy "KiB/idle" "echo msg/s" "p50/p99 ms @$RATE/s" "p50/p99 ms @$LIGHT/s" "handshake/s" "TLS hshake/s"
row "---" "---:" "---:" "---:" "---:" "---:" "---:"
row "direct (no proxy)" "-" "-" "$(ms "${P50[direct]}") / $(ms "${P99[direct]}")" \
    "$(ms "${L50[direct]}") / $(ms "${L99[direct]}")" "-" "-"
for n in "${names[@]}"; do
    label=$n; [ "$n" = gateway ] && label="longconn-gateway"
    row "$label" "${MEM[$n]}" "${TPUT[$n]}" "$(ms "${P50[$n]}") / $(ms "${P99[$n]}")" \
        "$(ms "${L50[$n]}") / $(ms "${L99[$n]}")" "${HS[$n]}" "${HSTLS[$n]}"
done
