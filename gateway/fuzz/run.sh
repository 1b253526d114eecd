#!/usr/bin/env bash
# Runs every fuzz target of the gateway for FUZZ_SECONDS (default 30) each, with libFuzzer through
# cargo fuzz, starting from the target's corpus (corpus/<target>/, which grows between runs on one
# machine). A panic, a failed assertion or a sanitizer finding fails the run and leaves the input
# in artifacts/<target>/; `cargo +nightly fuzz run <target> artifacts/<target>/<file>` replays it.
#
# cargo fuzz builds with sanitizers and needs the nightly toolchain. Without it the run is skipped
# with a message, or fails when LONGCONN_REQUIRE_FUZZ=1 (as `make test` sets). cargo-fuzz itself
# is installed from crates.io when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
SECS="${FUZZ_SECONDS:-30}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    if [ "${LONGCONN_REQUIRE_FUZZ:-0}" = 1 ]; then
        echo "fuzz: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
        exit 1
    fi
    echo "fuzz: SKIPPED, no nightly toolchain (rustup toolchain install nightly)" >&2
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz from crates.io" >&2
    cargo install --locked cargo-fuzz
fi

LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
for target in $(cargo +nightly fuzz list); do
    echo "fuzz: $target for ${SECS}s" >&2
    if ! cargo +nightly fuzz run "$target" -- -max_total_time="$SECS" >"$LOG" 2>&1; then
        tail -n 60 "$LOG" >&2
        echo "fuzz: $target failed; the input is in gateway/fuzz/artifacts/$target/" >&2
        exit 1
    fi
    tail -n 1 "$LOG" >&2
done
