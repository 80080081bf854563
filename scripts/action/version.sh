#!/usr/bin/env bash
# Step "rbuild version" of action.yml (and sourced by install.sh): which rbuild version the
# action installs and where its tool cache lives. Writes the step outputs `version`, `dir` and
# `key` (the actions/cache key) when run as a step.
#   INPUT_VERSION       the `version` input; empty = the version of the action's own checkout
#   RBUILD_INSTALL_DIR  overrides the tool cache dir
set -euo pipefail

action_path="${GITHUB_ACTION_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
own_version() { # the version of the action checkout's workspace Cargo.toml
  sed -n '/^\[workspace.package\]/,/^\[/{s/^version *= *"\([^"]*\)".*/\1/p}' "$action_path/Cargo.toml" | head -n 1
}
rbuild_asked="${INPUT_VERSION:-}"
rbuild_asked="${rbuild_asked#v}"
rbuild_version="${rbuild_asked:-$(own_version)}"
if [ -z "$rbuild_version" ]; then
  echo "::error::rbuild: cannot tell which rbuild version to install" >&2
  exit 1
fi
case "$rbuild_version" in
  *[!0-9A-Za-z.+-]*) echo "::error::rbuild: invalid version '$rbuild_version'" >&2; exit 1 ;;
esac
case "$(uname -m)" in
  x86_64 | amd64) rbuild_arch=x86_64 ;;
  aarch64 | arm64) rbuild_arch=aarch64 ;;
  *) rbuild_arch="$(uname -m)" ;;
esac
rbuild_dir="${RBUILD_INSTALL_DIR:-${RUNNER_TOOL_CACHE:-${RUNNER_TEMP:-/tmp}}/rbuild/$rbuild_version/$rbuild_arch}"

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  {
    echo "version=$rbuild_version"
    echo "dir=$rbuild_dir"
    echo "key=rbuild-$rbuild_version-linux-$rbuild_arch"
  } >> "${GITHUB_OUTPUT:-/dev/stdout}"
fi
