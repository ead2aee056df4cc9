#!/usr/bin/env bash
# The whole test suite: the unit tier (no Nix, no ssh), the tests that
# evaluate lib/ with a real `nix eval`, and the lab tier (real targets
# booted on this machine). Prepares the machine first (tests/prepare.sh).
#
#   bash tests/run.sh [cargo test arguments...]
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
bash tests/prepare.sh
# Nothing outside is reachable: asking a binary cache only adds timeouts.
export NIX_CONFIG=$'substituters =\nbuild-users-group =\nsandbox = false'
# Lab tests mostly wait on targets: run more of them than there are cores.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-4}
# Every test binary runs even when one fails, and leftover targets are
# looked for after a failed run too; the run still exits with the tests'
# status when they failed, and with 1 when only leftovers were found.
leaks() {
    local status=$?
    trap - EXIT
    bash tests/lab/lab.sh leaks || { [ "$status" -ne 0 ] || status=1; }
    exit "$status"
}
trap leaks EXIT
cargo test --locked --no-fail-fast "$@"
