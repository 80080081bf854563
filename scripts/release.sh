#!/usr/bin/env bash
# Makes the release archive the GitHub Action downloads and pins its checksum:
#   dist/rbuild-<version>-<arch>-linux.tar.gz   (one file, `rbuild`, at its top)
#   scripts/action/checksums.txt                 ("<sha256>  <file>", the line for this file replaced)
# Upload the archive as an asset of the release tagged v<version> and commit checksums.txt in
# that tag: the action installs a downloaded archive only when its sha256 is the one pinned in
# the action's own checkout. Usage: bash scripts/release.sh [--binary PATH]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bin=""
if [ "${1:-}" = --binary ]; then bin="$2"; fi
version="$(sed -n '/^\[workspace.package\]/,/^\[/{s/^version *= *"\([^"]*\)".*/\1/p}' "$repo/Cargo.toml" | head -n 1)"
case "$(uname -m)" in x86_64 | amd64) arch=x86_64 ;; aarch64 | arm64) arch=aarch64 ;; *) arch="$(uname -m)" ;; esac
if [ -z "$bin" ]; then
  cargo build --release --locked -p rbuild --manifest-path "$repo/Cargo.toml"
  bin="${CARGO_TARGET_DIR:-$repo/target}/release/rbuild"
fi
file="rbuild-$version-$arch-linux.tar.gz"
out="${RBUILD_DIST:-$repo/dist}"
mkdir -p "$out"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$bin" "$stage/rbuild"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$stage" -cf - rbuild | gzip -n -9 > "$out/$file"
sum="$(sha256sum "$out/$file" | cut -d' ' -f1)"
sums="${RBUILD_CHECKSUMS:-$repo/scripts/action/checksums.txt}"
touch "$sums"
{ grep -v "  $file\$" "$sums" | grep -v '^$' || true; echo "$sum  $file"; } > "$sums.new"
mv "$sums.new" "$sums"
echo "$out/$file"
echo "$sum  $file"
