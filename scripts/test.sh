#!/usr/bin/env bash
# The test command (README): installs what the tests need, starts the test registry, then runs
# format and lint checks and the whole test suite once, in one cargo process tree.
# Needs root (namespaces, overlayfs, apt). Under CI=true every prerequisite is mandatory.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup.sh
export RBUILD_TEST_REGISTRY=127.0.0.1:5055
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast
