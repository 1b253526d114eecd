#!/usr/bin/env bash
# Benchmark of the longconn gateway against nginx and HAProxy, in front of the same echo
# upstream, driven by the same load generator (gateway/examples/loadgen/), beside a reference byte
# relay on the gateway's runtime. Prints six tables;
# gateway/README.md explains how each figure is measured.
#
#   make bench-gateway            (or: bash gateway/bench/run.sh)
#
# Environment: SESSIONS (idle sessions, default 8000), STALLED (connections that never finish a
# handshake, default 10000), SECONDS_PER_RUN (default 3), ROUNDS
# (default 5: every rate and latency is measured ROUNDS times, interleaved, and the median shown).
# With two or more CPUs the proxy under test runs alone on CPU 1 and the load generator and the echo
# upstream on CPU 0, so "one proxy thread at saturation" is what the rates measure.
# Everything listens on 127.0.0.1. Needs root to install nginx and haproxy with apt-get.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SESSIONS="${SESSIONS:-8000}"
STALLED="${STALLED:-10000}"
SECS="${SECONDS_PER_RUN:-3}"
ROUNDS="${ROUNDS:-5}"
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
# perf counts the proxies' system calls for the "where the CPU time goes" table; without it (or
# where the kernel does not let it trace system calls) that column shows "-".
if ! command -v perf >/dev/null; then
    log "installing perf from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null 2>&1 || true
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
UP_PROXY_CPU=19087
RELAY=19089
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

# CPU placement: the proxies on one CPU, everything that makes the load on the other.
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    ON_PROXY_CPU=(taskset -c 1)
    ON_LOAD_CPU=(taskset -c 0)
    PLACEMENT="each proxy alone on CPU 1; load generator and echo upstream on CPU 0"
else
    ON_PROXY_CPU=()
    ON_LOAD_CPU=()
    PLACEMENT="proxy, load generator and echo upstream sharing the CPUs (no taskset or one CPU)"
fi
load() { "${ON_LOAD_CPU[@]}" "$LOADGEN" "$@"; }

LAST=""
start() { # name, command...; sets LAST to the new process id
    local name="$1"; shift
    "$@" >"$WORK/$name.log" 2>&1 &
    LAST=$!
    PIDS+=("$LAST")
}

# --- upstream and proxies ------------------------------------------------------------------
start echo "${ON_LOAD_CPU[@]}" "$LOADGEN" echo --listen "127.0.0.1:$UP"
# A second echo upstream on the proxies' CPU: a direct path that crosses CPUs as the proxied
# ones do, the anchor that tells a proxy's own latency from the cost of waking another CPU.
start echo-proxy-cpu "${ON_PROXY_CPU[@]}" "$LOADGEN" echo --listen "127.0.0.1:$UP_PROXY_CPU"
wait_port "$UP"
wait_port "$UP_PROXY_CPU"
# The reference: a byte relay on the same runtime, one thread, no WebSocket awareness (see
# `relay` in the load generator). What the gateway costs beyond it is its own work per message.
start relay "${ON_PROXY_CPU[@]}" "$LOADGEN" relay --listen "127.0.0.1:$RELAY" --upstream "127.0.0.1:$UP"
RELAY_PID=$LAST

GW_COMMON=(--upstream "127.0.0.1:$UP" --worker-threads 1 --max-connections $((SESSIONS + 1000))
    --rate-limit-connections-per-second-per-ip 0 --heartbeat-interval 10m --idle-timeout 1h)
start gateway "${ON_PROXY_CPU[@]}" env LONGCONN_GATEWAY_LOG_LEVEL=warn "$GW" run --listen "127.0.0.1:$GW_PLAIN" \
    --admin-listen 127.0.0.1:19091 "${GW_COMMON[@]}"
GW_PID=$LAST
start gateway-tls "${ON_PROXY_CPU[@]}" env LONGCONN_GATEWAY_LOG_LEVEL=warn "$GW" run --listen "127.0.0.1:$GW_TLS" \
    --admin-listen 127.0.0.1:19092 "${GW_COMMON[@]}" \
    --tls-cert "$WORK/tls/cert.pem" --tls-key "$WORK/tls/key.pem"
GW_TLS_PID=$LAST

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
start nginx "${ON_PROXY_CPU[@]}" "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;'
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
start haproxy "${ON_PROXY_CPU[@]}" "$HAPROXY" -f "$WORK/haproxy.cfg" -db
HAP_PID=$LAST

for p in $RELAY $GW_PLAIN $GW_TLS $NGX_PLAIN $NGX_TLS $HAP_PLAIN $HAP_TLS; do
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
names=(gateway nginx haproxy)
declare -A PLAIN=([gateway]=$GW_PLAIN [nginx]=$NGX_PLAIN [haproxy]=$HAP_PLAIN [relay]=$RELAY)
declare -A TLSP=([gateway]=$GW_TLS [nginx]=$NGX_TLS [haproxy]=$HAP_TLS)
declare -A PROXYPIDS=([gateway]=$GW_PID [nginx]=$NGX_PIDS [haproxy]=$HAP_PID [relay]=$RELAY_PID)
declare -A TLSPIDS=([gateway]=$GW_TLS_PID [nginx]=$NGX_PIDS [haproxy]=$HAP_PID)
# Samples, one space-separated list per measurement and name; medians at the end.
declare -A S

add() { S[$1]="${S[$1]:-} $2"; } # key, value
median() { # key -> median of its samples
    printf '%s\n' ${S[$1]} | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "-" }'
}
# Round, names... -> the names in a different order each round, so no proxy always runs right
# after another.
rotated() {
    local r=$1 i
    shift
    for i in $(seq 0 $(($# - 1))); do
        local k=$(((i + r) % $# + 1))
        echo "${!k}"
    done
}

declare -A MEM
for n in "${names[@]}"; do
    log "$n: RSS per idle session at $SESSIONS sessions"
    out=$(load idle --target "127.0.0.1:${PLAIN[$n]}" --sessions "$SESSIONS" --pids "${PROXYPIDS[$n]}")
    log "   $out"
    MEM[$n]=$(echo "$out" | field kib_per_session)
    sleep 2
done

# Connections that never finish a handshake: STALLED of them at once, plain ones that send the
# start of a request head and TLS ones that send nothing. What each proxy holds for them 3 s later
# (RSS growth, descriptors, connections neither answered nor closed). The gateway admits 1,024
# handshakes in progress (its default --max-handshakes) and refuses the rest at accept.
declare -A STALL
for n in "${names[@]}"; do
    for kind in plain tls; do
        if [ "$kind" = tls ]; then port=${TLSP[$n]} pids=${TLSPIDS[$n]} tls=(--tls); else port=${PLAIN[$n]} pids=${PROXYPIDS[$n]} tls=(); fi
        log "$n: $STALLED $kind connections that never finish their handshake"
        out=$(load stalled --target "127.0.0.1:$port" --connections "$STALLED" --pids "$pids" "${tls[@]}")
        log "   $out"
        STALL["$kind $n"]="$(echo "$out" | field stalled_rss_kib) / $(echo "$out" | field fds) / $(echo "$out" | field held)"
        # The load generator's sockets are closed; let the proxy free what it held.
        sleep 3
    done
done

for r in $(seq 1 "$ROUNDS"); do
    for n in $(rotated "$r" "${names[@]}" relay); do
        log "round $r/$ROUNDS, $n: echo throughput (8 and 1 in flight per connection), handshakes (not the relay's)"
        out=$(load throughput --target "127.0.0.1:${PLAIN[$n]}" --pids "${PROXYPIDS[$n]}" --seconds "$SECS")
        log "   $out"
        add "tput8 $n" "$(echo "$out" | field msgs_per_sec)"
        add "cpu8 $n" "$(echo "$out" | field proxy_cpu_us_per_op)"
        add "share8 $n" "$(echo "$out" | field proxy_cpu_share)"
        add "user8 $n" "$(echo "$out" | field proxy_user_share)"
        out=$(load throughput --target "127.0.0.1:${PLAIN[$n]}" --pids "${PROXYPIDS[$n]}" --seconds "$SECS" --depth 1)
        log "   $out"
        add "tput1 $n" "$(echo "$out" | field msgs_per_sec)"
        add "cpu1 $n" "$(echo "$out" | field proxy_cpu_us_per_op)"
        [ "$n" = relay ] && continue
        out=$(load handshakes --target "127.0.0.1:${PLAIN[$n]}" --pids "${PROXYPIDS[$n]}" --seconds "$SECS")
        log "   $out"
        add "hs $n" "$(echo "$out" | field handshakes_per_sec)"
        add "cpuhs $n" "$(echo "$out" | field proxy_cpu_us_per_op)"
        add "sharehs $n" "$(echo "$out" | field proxy_cpu_share)"
        out=$(load handshakes --target "127.0.0.1:${TLSP[$n]}" --pids "${TLSPIDS[$n]}" \
            --tls-cert "$WORK/tls/cert.pem" --seconds "$SECS")
        log "   $out"
        add "tls $n" "$(echo "$out" | field handshakes_per_sec)"
        add "cputls $n" "$(echo "$out" | field proxy_cpu_us_per_op)"
        add "sharetls $n" "$(echo "$out" | field proxy_cpu_share)"
    done
done

# System calls per echoed message, 8 in flight, counted by `perf stat` on the system-call
# tracepoints over SECS while the load runs. Runs of their own: tracing every system call costs the
# proxy kernel time, which the rates and CPU figures above must not carry. Skipped where perf
# cannot trace system calls.
COST_ROUNDS=0
if command -v perf >/dev/null && perf stat -x, -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
    COST_ROUNDS=$((ROUNDS < 3 ? ROUNDS : 3))
fi
for r in $(seq 1 "$COST_ROUNDS"); do
    for n in $(rotated "$r" "${names[@]}" relay); do
        load throughput --target "127.0.0.1:${PLAIN[$n]}" --seconds $((SECS + 2)) >"$WORK/cost.out" &
        lp=$!
        sleep 1.5
        perf stat -x, -e raw_syscalls:sys_enter -p "${PROXYPIDS[$n]}" -- sleep "$SECS" 2>"$WORK/perf.out" \
            || : >"$WORK/perf.out"
        wait "$lp"
        rate=$(field msgs_per_sec <"$WORK/cost.out")
        calls=$(awk -F, -v m="$rate" -v t="$SECS" '$3 == "raw_syscalls:sys_enter" { printf "%.2f", $1 / (m * t) }' "$WORK/perf.out")
        log "round $r/$COST_ROUNDS, $n at $rate msg/s: ${calls:--} system calls per message"
        add "calls $n" "$calls"
    done
done

# Latency. The probe (`load latency`) sends evenly spaced 128-byte messages through a proxy and
# every twentieth message of its schedule (every second one at the light rate, to have as many
# samples) straight to an echo upstream instead (the anchor), so the anchor's round trips come from
# the same seconds as the proxy's and whatever the machine does meanwhile is in both; "added" is
# the proxy's p50 or p99 minus the anchor's from the same run.
# The rate is calibrated instead of derived from the saturation rates: a probe message costs more
# CPU than a closed-loop one (each one wakes the sender, the proxy, the upstream and a reader), so
# half the saturation rate left the load's CPU almost fully busy. `calibrate` starts from that and
# scales the rate three times by 0.5 over the busiest proxy's share of FIELD (the proxy's own CPU
# share, or how busy the CPUs given are), so that it ends about half busy. The CPU busy columns
# show what the measured rounds had.
calibrate() { # field, cpus, anchor port, start rate -> the calibrated rate
    local field=$1 cpus=$2 anchor=$3 rate=$4 step n out v most
    for step in 1 2 3; do
        most=0
        for n in "${names[@]}"; do
            out=$(load latency --target "127.0.0.1:${PLAIN[$n]}" --anchor "127.0.0.1:$anchor" \
                --rate "$rate" --seconds 2 --pids "${PROXYPIDS[$n]}" --cpus "$cpus")
            log "calibrating $step/3, $n at $rate msg/s: $out"
            v=$(echo "$out" | field "$field")
            most=$(awk -v a="$most" -v b="$v" 'BEGIN { print (b > a) ? b : a }')
        done
        rate=$(awk -v r="$rate" -v m="$most" 'BEGIN { printf "%d", r * 0.5 / (m > 0.05 ? m : 0.05) }')
    done
    echo "$rate"
}
# One probe run: tag, name, rate, anchor port, cpus[, anchor every]; its figures are kept under
# "<what> <tag> <name>".
probe() {
    local out q
    out=$(load latency --target "127.0.0.1:${PLAIN[$2]}" --anchor "127.0.0.1:$4" --rate "$3" \
        --anchor-every "${6:-20}" --seconds "$SECS" --pids "${PROXYPIDS[$2]}" --cpus "$5")
    log "round $r/$ROUNDS, $2 at $3 msg/s ($1): $out"
    for q in p50 p99; do
        add "$q $1 $2" "$(echo "$out" | field "${q}_us")"
        add "$q $1 direct" "$(echo "$out" | field "anchor_${q}_us")"
        add "+$q $1 $2" "$(awk -v a="$(echo "$out" | field "${q}_us")" \
            -v b="$(echo "$out" | field "anchor_${q}_us")" 'BEGIN { print a - b }')"
    done
    add "share $1 $2" "$(echo "$out" | field proxy_cpu_share)"
    add "busy $1 $2" "$(echo "$out" | field cpus_busy)"
}

# Each proxy on its CPU, the anchor an echo upstream on that CPU too (a direct path that crosses
# CPUs as the proxied ones do); the busiest proxy about half busy, then a light 1,000 msg/s.
LOWEST=$(for n in "${names[@]}"; do median "tput1 $n"; done | sort -g | head -1)
RATE=$(calibrate proxy_cpu_share 0 "$UP_PROXY_CPU" "$(awk -v t="$LOWEST" 'BEGIN { printf "%d", t / 2 }')")
LIGHT=1000
for r in $(seq 1 "$ROUNDS"); do
    for n in $(rotated "$r" "${names[@]}"); do
        probe half "$n" "$RATE" "$UP_PROXY_CPU" 0
        probe light "$n" "$LIGHT" "$UP_PROXY_CPU" 0 2
    done
done

# Everything on the load's CPU: no message has to wake another CPU, which on a virtual machine is
# what dominates the tails above, so this shows what a proxy itself adds. The anchor is the
# proxies' own upstream; the rate is calibrated so that the one CPU is about half busy.
ONE_CPU_RATE=""
if [ ${#ON_PROXY_CPU[@]} -gt 0 ]; then
    for n in "${names[@]}"; do
        for pid in ${PROXYPIDS[$n]//,/ }; do taskset -a -p -c 0 "$pid" >/dev/null; done
    done
    for r in $(seq 1 "$ROUNDS"); do
        for n in $(rotated "$r" "${names[@]}"); do
            out=$(load throughput --target "127.0.0.1:${PLAIN[$n]}" --pids "${PROXYPIDS[$n]}" \
                --seconds "$SECS" --depth 1)
            log "round $r/$ROUNDS, $n on the load's CPU, 1 in flight: $out"
            add "onetput $n" "$(echo "$out" | field msgs_per_sec)"
        done
    done
    LOWEST=$(for n in "${names[@]}"; do median "onetput $n"; done | sort -g | head -1)
    ONE_CPU_RATE=$(calibrate cpus_busy 0 "$UP" "$(awk -v t="$LOWEST" 'BEGIN { printf "%d", t / 2 }')")
    for r in $(seq 1 "$ROUNDS"); do
        for n in $(rotated "$r" "${names[@]}"); do
            probe one "$n" "$ONE_CPU_RATE" "$UP" 0
        done
    done
fi

ms() { awk -v us="$1" 'BEGIN { if (us == "-") print "-"; else printf "%.3f", us / 1000 }'; }
lat() { echo "$(ms "$(median "p50 $1 $2")") / $(ms "$(median "p99 $1 $2")")"; } # tag, name
added() { # tag, name -> median over runs of the proxy's p50 and p99 minus the anchor's, same run
    awk -v a="$(median "+p50 $1 $2")" -v b="$(median "+p99 $1 $2")" \
        'BEGIN { printf "%+.3f / %+.3f", a / 1000, b / 1000 }'
}
spread() { # key -> "median (min-max)"
    local sorted
    sorted=$(printf '%s\n' ${S[$1]} | sort -g)
    echo "$(median "$1") ($(echo "$sorted" | head -1)-$(echo "$sorted" | tail -1))"
}
label() {
    case "$1" in
        gateway) echo "longconn-gateway" ;;
        relay) echo "reference relay" ;;
        *) echo "$1" ;;
    esac
}
# Measurement, proxy, higher|lower (which is better)[, base] -> "<median ratio> (<rounds
# better>/<rounds>)": the proxy's figure over the base's (nginx's) from the same round. Pairing
# by round cancels most of the machine's drift between rounds, which moves the independent
# medians above by up to 25 %.
paired() {
    local pairs wins ratio
    pairs=$(paste -d' ' <(printf '%s\n' ${S["$1 $2"]}) <(printf '%s\n' ${S["$1 ${4:-nginx}"]}))
    wins=$(echo "$pairs" | awk -v b="$3" '(b == "higher" && $1 > $2) || (b == "lower" && $1 < $2) { w++ } END { print w + 0 }')
    ratio=$(echo "$pairs" | awk '{ printf "%.3f\n", $1 / $2 }' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
    echo "$ratio ($wins/$(echo "$pairs" | wc -l))"
}

echo
echo "longconn gateway vs nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///') vs HAProxy $("$HAPROXY" -v | head -1 | awk '{print $3}')  ($(nproc) CPUs, $(date -u +%Y-%m-%d))"
echo "one proxy thread / worker each; $PLACEMENT"
echo "rates: median (min-max) of $ROUNDS rounds; CPU: the proxy's CPU time per message or handshake (median)"
echo
row() { printf '| %-17s | %8s | %26s | %10s | %8s | %24s | %10s |\n' "$@"; }
row proxy "KiB/idle" "msg/s, 8 in flight" "CPU us/msg" "CPU busy" "msg/s, 1 in flight" "CPU us/msg"
row "---" "---:" "---:" "---:" "---:" "---:" "---:"
for n in "${names[@]}" relay; do
    row "$(label "$n")" "${MEM[$n]:--}" "$(spread "tput8 $n")" "$(median "cpu8 $n")" \
        "$(median "share8 $n")" "$(spread "tput1 $n")" "$(median "cpu1 $n")"
done
echo
echo "idle session memory, longconn-gateway against HAProxy: ${MEM[gateway]} against ${MEM[haproxy]} KiB per session ($(awk -v g="${MEM[gateway]}" -v h="${MEM[haproxy]}" 'BEGIN { print (g < h) ? "ahead" : "NOT ahead" }'))"
echo
echo "$STALLED connections that never finish a handshake, held for 3 s: the proxy's RSS growth (KiB) / descriptors / connections held"
echo
row() { printf '| %-17s | %28s | %28s |\n' "$@"; }
row proxy "plain (start of a head)" "TLS (no ClientHello)"
row "---" "---:" "---:"
for n in "${names[@]}"; do
    row "$(label "$n")" "${STALL[plain $n]}" "${STALL[tls $n]}"
done
echo
echo "latency: p50/p99 of the round trips (median over rounds); added: the proxy's p50 and p99 minus those"
echo "of a direct path probed in the same seconds (median over rounds); CPU busy: the proxy's, and the load's CPU"
echo
row() { printf '| %-17s | %16s | %19s | %17s | %19s | %17s |\n' "$@"; }
row "path" "CPU busy" "p50/p99 ms @$RATE/s" "added, ms" "p50/p99 ms @$LIGHT/s" "added, ms"
row "---" "---:" "---:" "---:" "---:" "---:"
row "direct, other CPU" "" "$(lat half direct)" "" "$(lat light direct)" ""
for n in "${names[@]}"; do
    row "$(label "$n")" "$(median "share half $n") / $(median "busy half $n")" "$(lat half "$n")" \
        "$(added half "$n")" "$(lat light "$n")" "$(added light "$n")"
done
if [ -n "$ONE_CPU_RATE" ]; then
    echo
    row() { printf '| %-17s | %24s | %8s | %19s | %17s |\n' "$@"; }
    row "all on one CPU" "msg/s, 1 in flight" "CPU busy" "p50/p99 ms @$ONE_CPU_RATE/s" "added, ms"
    row "---" "---:" "---:" "---:" "---:"
    row "direct" "" "" "$(lat one direct)" ""
    for n in "${names[@]}"; do
        row "$(label "$n")" "$(spread "onetput $n")" "$(median "busy one $n")" "$(lat one "$n")" \
            "$(added one "$n")"
    done
fi
echo
row() { printf '| %-17s | %20s | %13s | %8s | %18s | %13s | %8s |\n' "$@"; }
row proxy "handshake/s" "CPU us/hshake" "CPU busy" "TLS handshake/s" "CPU us/TLS hs" "CPU busy"
row "---" "---:" "---:" "---:" "---:" "---:" "---:"
for n in "${names[@]}"; do
    row "$(label "$n")" "$(spread "hs $n")" "$(median "cpuhs $n")" "$(median "sharehs $n")" \
        "$(spread "tls $n")" "$(median "cputls $n")" "$(median "sharetls $n")"
done
echo
echo "where the CPU time goes, 8 in flight: system calls per echoed message (perf stat, median of"
echo "$COST_ROUNDS rounds of their own; - where perf cannot count them) and the user-space share of the"
echo "proxy's CPU time (median of the $ROUNDS throughput rounds)"
echo
row() { printf '| %-17s | %16s | %16s |\n' "$@"; }
row proxy "syscalls/msg" "user share"
row "---" "---:" "---:"
for n in "${names[@]}" relay; do
    row "$(label "$n")" "$(median "calls $n")" "$(median "user8 $n")"
done
echo
echo "each proxy against nginx in the same round: median of the per-round ratios (rounds in which it did better)"
echo
row() { printf '| %-17s | %12s | %12s | %12s | %12s | %12s | %12s | %12s | %12s |\n' "$@"; }
row "ratio to nginx" "msg/s, 8" "CPU/msg, 8" "msg/s, 1" "CPU/msg, 1" "handshake/s" "CPU/hshake" "TLS hs/s" "CPU/TLS hs"
row "---" "---:" "---:" "---:" "---:" "---:" "---:" "---:" "---:"
for n in gateway haproxy; do
    row "$(label "$n")" "$(paired tput8 "$n" higher)" "$(paired cpu8 "$n" lower)" \
        "$(paired tput1 "$n" higher)" "$(paired cpu1 "$n" lower)" \
        "$(paired hs "$n" higher)" "$(paired cpuhs "$n" lower)" \
        "$(paired tls "$n" higher)" "$(paired cputls "$n" lower)"
done
row "$(label relay)" "$(paired tput8 relay higher)" "$(paired cpu8 relay lower)" \
    "$(paired tput1 relay higher)" "$(paired cpu1 relay lower)" - - - -
echo
echo "the gateway's CPU per message over the reference relay's, same round: $(paired cpu8 gateway lower relay)" \
    "with 8 in flight, $(paired cpu1 gateway lower relay) with 1"
