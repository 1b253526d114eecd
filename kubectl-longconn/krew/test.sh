#!/usr/bin/env bash
# Installs kubectl-longconn with krew, from the archive and manifest package.sh makes, as a user
# installs it from an index, and runs it as a kubectl plugin: `kubectl longconn --help` must list
# every command. An archive that does not match its manifest's sha256 must be refused.
#
# Usage: TOOLS_DIR=.tools IMAGES_DIR=.images bash kubectl-longconn/krew/test.sh
#   krew is built from its Go module into TOOLS_DIR once; kubectl comes from `make tools`, the
#   plugin's static binary from `make images`.
set -euo pipefail

KREW_VERSION=v0.4.3
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
tools_dir="${TOOLS_DIR:-${root}/.tools}"
kubectl="${tools_dir}/kubectl"
krew="${tools_dir}/krew-${KREW_VERSION}/krew"

[[ -x "${kubectl}" ]] || { echo "krew: ${kubectl} missing: run make tools" >&2; exit 1; }
if [[ ! -x "${krew}" ]]; then
  echo "krew: building sigs.k8s.io/krew ${KREW_VERSION} into $(dirname "${krew}")"
  GOBIN="$(dirname "${krew}")" go install -trimpath "sigs.k8s.io/krew/cmd/krew@${KREW_VERSION}"
fi

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
bash "${here}/package.sh" "${work}/out"
archive="$(find "${work}/out" -name 'kubectl-longconn_*.tar.gz')"

failed=0
fail() {
  echo "FAIL $*"
  failed=1
}

if KREW_ROOT="${work}/root" "${krew}" install --manifest="${work}/out/longconn.yaml" \
  --archive="${archive}" </dev/null >"${work}/install.log" 2>&1; then
  echo "ok   krew installs the plugin from longconn.yaml and its archive"
else
  fail "krew install:"
  cat "${work}/install.log"
fi
if help="$(PATH="${work}/root/bin:${PATH}" "${kubectl}" longconn --help 2>&1)"; then
  missing=()
  for command in status history promote pause resume abort undo; do
    grep -qE "^  ${command} " <<<"${help}" || missing+=("${command}")
  done
  if (( ${#missing[@]} == 0 )); then
    echo "ok   kubectl longconn --help (through krew's bin) lists every command"
  else
    fail "kubectl longconn --help lists no ${missing[*]}:"
    echo "${help}"
  fi
else
  fail "kubectl longconn --help:"
  echo "${help}"
fi

# One byte more: the sha256 no longer matches, and krew must refuse the archive.
cp "${archive}" "${work}/tampered.tar.gz"
printf 'x' >>"${work}/tampered.tar.gz"
if KREW_ROOT="${work}/root-tampered" "${krew}" install --manifest="${work}/out/longconn.yaml" \
  --archive="${work}/tampered.tar.gz" </dev/null >"${work}/tampered.log" 2>&1; then
  fail "krew installed an archive that does not match the manifest's sha256"
elif grep -q "checksum does not match" "${work}/tampered.log"; then
  echo "ok   krew refuses an archive whose sha256 is not the manifest's"
else
  fail "krew refused the changed archive, but not for its sha256:"
  cat "${work}/tampered.log"
fi
exit "${failed}"
