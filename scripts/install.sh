#!/usr/bin/env bash
# Installs rbuild on PATH from this checkout: builds the release binary and copies it to
# $PREFIX/bin (default /usr/local/bin; PREFIX=~/.local for a user install without root).
# Prerequisites: Rust >= 1.85 (cargo), a C compiler (bundled SQLite), Linux with overlayfs and
# user namespaces. Running builds needs root for the full sandbox, or a plain user with
# /etc/subuid ranges and newuidmap (package uidmap) for rootless builds; passt or slirp4netns
# for RUN steps' network.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix="${PREFIX:-/usr/local}"
cargo build --release --locked -p rbuild
install -d "$prefix/bin"
install -m 0755 "${CARGO_TARGET_DIR:-target}/release/rbuild" "$prefix/bin/rbuild"
echo "installed $prefix/bin/rbuild: $("$prefix/bin/rbuild" version | head -n 1)"
case ":$PATH:" in *":$prefix/bin:"*) ;; *) echo "note: $prefix/bin is not on PATH" ;; esac
