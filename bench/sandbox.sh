#!/usr/bin/env bash
# Per-step sandbox overhead: a Dockerfile of 30 trivial `RUN echo` steps built with --no-cache,
# minus the same Dockerfile with no RUN step, divided by 30. rbuild with each runtime it has
# (built-in; runc when `--runtime runc` is available) and — when a docker daemon answers
# (../shared/scripts/peer-lab.sh) — BuildKit. Median of N runs (default 5) after one warm-up.
# Needs root and the test registry (.ci/setup.sh). BENCH_USER=rbuild-test runs rbuild rootless
# as that user (setpriv; the store is given to it). The steps use rbuild's default network (an
# isolated namespace with slirp4netns, docs/sandbox.md); BENCH_RBUILD_FLAGS adds flags to every
# rbuild build (e.g. `--network=host` measures the host network, rbuild's default before;
# `--isolation=chroot` runs every row in chroot isolation). Two more rows compare the sandbox
# and chroot isolation on the copy snapshotter (BENCH_CHROOT=0: not measured).
# Usage: bash bench/sandbox.sh [runs=5] [steps=30]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
STEPS=${2:-30}
bash .ci/setup.sh >/dev/null
cargo build --release --locked -p rbuild -q
RB=$PWD/target/release/rbuild
W=${BENCH_WORK:-/tmp/rbuild-bench-sandbox}
rm -rf "$W"; mkdir -p "$W/steps" "$W/base"
{ echo "FROM busybox"; for i in $(seq 1 "$STEPS"); do echo "RUN echo step $i"; done; } > "$W/steps/Dockerfile"
echo "FROM busybox" > "$W/base/Dockerfile"
export RBUILD_REGISTRY_MIRRORS=docker.io=127.0.0.1:5055 RBUILD_PROGRESS=quiet RBUILD_ROOT=$W/store
AS=()
if [ -n "${BENCH_USER:-}" ]; then
  mkdir -p "$W/store"; chown -R "$BENCH_USER:" "$W"
  AS=(setpriv --reuid="$(id -u "$BENCH_USER")" --regid="$(id -g "$BENCH_USER")" --init-groups
      env HOME="$(getent passwd "$BENCH_USER" | cut -d: -f6)")
  echo "rootless: rbuild runs as $BENCH_USER"
fi

# median_ms CMD...: run once to warm up, then RUNS times; print the median wall time in ms.
median_ms() {
  "$@" >/dev/null 2>&1
  local t=()
  for _ in $(seq 1 "$RUNS"); do
    local a b
    a=$(date +%s%N); "$@" >/dev/null 2>&1; b=$(date +%s%N)
    t+=($(( (b - a) / 1000000 )))
  done
  printf '%s\n' "${t[@]}" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'
}

report() { # name steps_ms base_ms
  local per; per=$(awk -v s="$2" -v b="$3" -v n="$STEPS" 'BEGIN {printf "%.1f", (s-b)/n}')
  printf '%-22s %4d steps: %6d ms, no steps: %5d ms, per step: %6s ms\n' "$1" "$STEPS" "$2" "$3" "$per"
  echo "$per"
}

declare -A PER
runtimes=(builtin)
if "$RB" build --help 2>/dev/null | grep -q -- '--runtime'; then runtimes+=(runc); fi
for rt in "${runtimes[@]}"; do
  s=$(median_ms "${AS[@]}" "$RB" build --runtime "$rt" ${BENCH_RBUILD_FLAGS:-} --no-cache -q "$W/steps")
  b=$(median_ms "${AS[@]}" "$RB" build --runtime "$rt" ${BENCH_RBUILD_FLAGS:-} --no-cache -q "$W/base")
  out=$(report "rbuild ($rt)" "$s" "$b"); echo "$out" | head -1; PER[$rt]=$(echo "$out" | tail -1)
done
# Chroot isolation (--isolation=chroot, docs/sandbox.md "Reduced isolation"), which always runs
# on the copy snapshotter, next to the sandbox on the copy snapshotter: the difference is the
# isolation's own cost. BENCH_CHROOT=0 leaves these rows out.
if [ "${BENCH_CHROOT:-1}" = 1 ] && "$RB" build --help 2>/dev/null | grep -q -- '--isolation'; then
  for iso in sandbox chroot; do
    s=$(median_ms "${AS[@]}" env RBUILD_SNAPSHOTTER=copy "$RB" build --isolation="$iso" ${BENCH_RBUILD_FLAGS:-} --no-cache -q "$W/steps")
    b=$(median_ms "${AS[@]}" env RBUILD_SNAPSHOTTER=copy "$RB" build --isolation="$iso" ${BENCH_RBUILD_FLAGS:-} --no-cache -q "$W/base")
    report "rbuild ($iso, copy)" "$s" "$b" | head -1
  done
fi
if /usr/bin/docker info >/dev/null 2>&1; then
  sed -i 's|^FROM busybox|FROM localhost:5000/busybox|' "$W/steps/Dockerfile" "$W/base/Dockerfile"
  export DOCKER_BUILDKIT=1
  s=$(median_ms /usr/bin/docker build --network=host --no-cache -q "$W/steps")
  b=$(median_ms /usr/bin/docker build --network=host --no-cache -q "$W/base")
  out=$(report "BuildKit (dockerd)" "$s" "$b"); echo "$out" | head -1; bk=$(echo "$out" | tail -1)
  for rt in "${runtimes[@]}"; do
    awk -v r="${PER[$rt]}" -v k="$bk" -v n="$rt" 'BEGIN {if (k > 0) printf "rbuild (%s) / BuildKit per-step ratio: %.2f (target < 0.30)\n", n, r/k}'
  done
else
  echo "BuildKit: no docker daemon answers; skipped"
fi
