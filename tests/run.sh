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
cargo test --locked "$@"
bash tests/lab/lab.sh leaks
