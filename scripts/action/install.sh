#!/usr/bin/env bash
# Step 1 of action.yml: make `rbuild` available. Uses an rbuild already on PATH; otherwise
# builds it from the action's own checkout (cargo install --path cli) into $RUNNER_TEMP and
# adds it to GITHUB_PATH for later steps.
set -euo pipefail
if command -v rbuild >/dev/null 2>&1; then
  echo "rbuild found: $(command -v rbuild) ($(rbuild version | head -1))"
  exit 0
fi
root="${RUNNER_TEMP:-/tmp}/rbuild-install"
if ! command -v cargo >/dev/null 2>&1; then
  echo "::error::rbuild is not installed and cargo is not available to build it (use actions-rust-lang/setup-rust-toolchain or dtolnay/rust-toolchain first)"
  exit 1
fi
cargo install --locked --path "$GITHUB_ACTION_PATH/cli" --root "$root"
echo "$root/bin" >> "$GITHUB_PATH"
"$root/bin/rbuild" version
