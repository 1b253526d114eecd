#!/usr/bin/env bash
# cargo-deny over the workspace (deny.toml): licenses, bans and sources always; security advisories
# where the RustSec database can be fetched. cargo-deny itself is built from crates.io the first
# time, into a directory of the machine's cache named by its version ($DENY_ROOT, by default
# ~/.cache/longconn/cargo-deny-VERSION), so that a fresh clone on the same machine does not build
# it again (216 s on two cores, `time make deny` with the build, 6 December 2026), as Go's caches spare `make tools` its rebuilds.
#
# The advisory database lives in a Git repository on GitHub. Where it cannot be fetched, this says
# so on a line of its own ("advisories: NOT CHECKED ...") and goes on; with
# LONGCONN_REQUIRE_ADVISORIES=1 that is an error instead.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
VERSION=0.20.2
root=${DENY_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/longconn/cargo-deny-$VERSION}
deny="$root/bin/cargo-deny"

if [[ ! -x $deny ]] || [[ $("$deny" --version 2>/dev/null) != "cargo-deny $VERSION" ]]; then
  echo "deny: building cargo-deny $VERSION from crates.io into $root"
  "$CARGO" install --locked --quiet cargo-deny --version "$VERSION" --root "$root"
fi

"$deny" --color never check --hide-inclusion-graph licenses bans sources

fetch_log=$(mktemp)
trap 'rm -f "$fetch_log"' EXIT
if timeout 120 "$deny" --color never fetch db >"$fetch_log" 2>&1; then
  "$deny" --color never --offline check advisories
  echo "advisories: checked against the RustSec database"
else
  why=$(grep -m1 -E "fatal|ERROR|error" "$fetch_log" || tail -n1 "$fetch_log")
  echo "advisories: NOT CHECKED: the RustSec database (https://github.com/RustSec/advisory-db) cannot be fetched here: ${why}"
  if [[ ${LONGCONN_REQUIRE_ADVISORIES:-0} == 1 ]]; then
    exit 1
  fi
fi
