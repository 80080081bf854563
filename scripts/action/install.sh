#!/usr/bin/env bash
# Step "Install rbuild" of action.yml: make `rbuild` available, in this order:
#  1. an rbuild already on PATH whose version is the one asked for (any version when the
#     `version` input is empty and `rbuild` is on PATH);
#  2. a binary of that version in the tool cache ($RBUILD_INSTALL_DIR, which the action keeps
#     between runs with actions/cache keyed on the version);
#  3. the release archive rbuild-<version>-<arch>-linux.tar.gz, downloaded from the action's
#     repository releases and accepted only if its sha256 is the one pinned for that file in
#     scripts/action/checksums.txt of the action's own checkout (a download whose checksum is
#     not pinned, or differs, is never run);
#  4. otherwise `cargo install --locked --path cli` from the action's checkout into the tool
#     cache (then step 2 finds it on the next run of the same version).
# The directory holding the chosen binary is appended to $GITHUB_PATH.
#
# Environment (set by action.yml; overridable for tests and mirrors):
#   INPUT_VERSION            rbuild version (default: the version of the action's checkout)
#   RBUILD_INSTALL_DIR       tool cache dir (default $RUNNER_TOOL_CACHE|$RUNNER_TEMP/rbuild/<version>)
#   RBUILD_DOWNLOAD_BASE     release download base (default <server>/<action repo>/releases/download)
#   RBUILD_CHECKSUMS         pinned checksums file (default scripts/action/checksums.txt)
set -euo pipefail

# shellcheck source=version.sh
. "$(dirname "${BASH_SOURCE[0]}")/version.sh"
note() { echo "rbuild install: $*"; }
version="$rbuild_version" asked="$rbuild_asked" arch="$rbuild_arch" dir="$rbuild_dir"
file="rbuild-$version-$arch-linux.tar.gz"

installed_version() { # installed_version BINARY: its version line's number
  "$1" version 2>/dev/null | sed -n '1s/^rbuild \([^ ]*\).*/\1/p'
}
use_binary() { # use_binary DIR SOURCE
  echo "$1" >> "${GITHUB_PATH:-/dev/null}"
  note "using $1/rbuild ($2): $("$1/rbuild" version | head -n 1)"
  exit 0
}

# 1. already on PATH
if command -v rbuild >/dev/null 2>&1; then
  have="$(installed_version "$(command -v rbuild)")"
  if [ -z "$asked" ] || [ "$have" = "$version" ]; then
    echo "rbuild found: $(command -v rbuild) ($(rbuild version | head -n 1))"
    exit 0
  fi
  note "rbuild on PATH is version '$have', not $version"
fi

# 2. tool cache
if [ -x "$dir/bin/rbuild" ] && [ "$(installed_version "$dir/bin/rbuild")" = "$version" ]; then
  use_binary "$dir/bin" "tool cache"
fi

# 3. release download, verified against the pinned checksum
checksums="${RBUILD_CHECKSUMS:-$action_path/scripts/action/checksums.txt}"
pinned=""
if [ -f "$checksums" ]; then
  pinned="$(awk -v f="$file" '$2 == f || $2 == "*" f { print $1; exit }' "$checksums")"
fi
if [ -n "$pinned" ]; then
  if [ -z "${RBUILD_DOWNLOAD_BASE:-}" ]; then
    repo="${RBUILD_ACTION_REPOSITORY:-}"
    [ -n "$repo" ] || repo="${GITHUB_ACTION_REPOSITORY:-}"
    base="${GITHUB_SERVER_URL:-https://github.com}/${repo:-rbuild/rbuild}/releases/download"
  else
    base="$RBUILD_DOWNLOAD_BASE"
  fi
  url="$base/v$version/$file"
  tmp="$(mktemp -d "${RUNNER_TEMP:-/tmp}/rbuild-dl.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  note "downloading $url"
  if curl -fsSL --retry 3 --retry-delay 1 --max-time 300 -o "$tmp/$file" "$url"; then
    got="$(sha256sum "$tmp/$file" | cut -d' ' -f1)"
    if [ "$got" = "$pinned" ]; then
      mkdir -p "$tmp/x"
      tar -xzf "$tmp/$file" -C "$tmp/x" --no-same-owner
      [ -f "$tmp/x/rbuild" ] || { echo "::error::rbuild install: $file has no rbuild binary at its top"; exit 1; }
      mkdir -p "$dir/bin"
      install -m 0755 "$tmp/x/rbuild" "$dir/bin/rbuild.new"
      mv -f "$dir/bin/rbuild.new" "$dir/bin/rbuild"
      use_binary "$dir/bin" "release $version, sha256 $got verified"
    fi
    echo "::warning::rbuild install: $file has sha256 $got, but $pinned is pinned for it in $(basename "$checksums"); not using the download"
  else
    note "download failed; building from source instead"
  fi
else
  note "no checksum is pinned for $file in $(basename "$checksums"); building from source"
fi

# 4. build from the action's checkout into the tool cache
if ! command -v cargo >/dev/null 2>&1; then
  echo "::error::rbuild $version could not be installed: no verified release binary and no cargo to build it (add dtolnay/rust-toolchain@stable before this action, or put rbuild on PATH)"
  exit 1
fi
have_src="$(own_version)"
if [ "$have_src" != "$version" ]; then
  echo "::error::rbuild install: version $version asked for, but the action's checkout is $have_src; use the action at the matching tag"
  exit 1
fi
cargo install --locked --path "$action_path/cli" --root "$dir"
use_binary "$dir/bin" "built from source"
