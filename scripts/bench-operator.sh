#!/usr/bin/env bash
# make bench-operator: what the operator costs the API server, beside an anchor measured in the
# same run, on a local control plane without nodes (pods stay Pending). COUNT plain Deployments
# (the ones the operator would make), then COUNT LongConnServices with the operator running as a
# host process; creates and convergence timed, the operator's API requests per LongConnService,
# its requests and writes over an idle period, its peak and settled memory; a table with the
# targets, then one JSON line. The work is `longconn-e2e bench-operator`
# (e2e/src/bench/operator.rs); this script builds what it needs and runs it.
#
#   COUNT (1000)   objects of each kind
#   IDLE           the idle period after the last LongConnService converged (default: the
#                  operator's resync period and 30 s, 330 s, so every service's resync is in it)
#   BENCH_ARGS     further flags of `longconn-e2e bench-operator` (--concurrency N, --work-dir DIR)
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-1000}
IDLE=${IDLE:-}
TOOLS_DIR=${TOOLS_DIR:-$PWD/.tools}
CARGO=${CARGO:-cargo}
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Building the control plane's tools, the images' binaries and longconn-e2e (release)"
make --no-print-directory tools images TOOLS_DIR="$TOOLS_DIR" CARGO="$CARGO"
"$CARGO" build -q --release -p longconn-e2e
bin=${CARGO_TARGET_DIR:-target}/release
# The operator measured is the binary its image ships (static musl, profile dist): what users
# run, and what the memory target is judged on.
operator=${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-musl/dist/longconn-operator

step "$COUNT plain Deployments, then $COUNT LongConnServices with the operator; idle ${IDLE:-its default}"
# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
LONGCONN_E2E_TOOLS_DIR="$TOOLS_DIR" exec "$bin/longconn-e2e" bench-operator \
  --operator-bin "$operator" --count "$COUNT" ${IDLE:+--idle "$IDLE"} ${BENCH_ARGS:-}
