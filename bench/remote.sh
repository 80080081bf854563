#!/usr/bin/env bash
# The `remote` workload of issue 13 (remote cache), rbuild next to BuildKit v0.25 in one run:
#
#   A      the bench/run.sh app (debian:bookworm base, 10k-file context, ~100 MB) built on a store
#          with --cache-to type=registry,ref=REG/bench-cache:TOOL,mode=max (once, untimed)
#   B      the same build on an EMPTY store with --cache-from that ref (timed, RUNS_REMOTE runs):
#          rbuild gets a new RBUILD_ROOT per run; BuildKit gets `buildx prune -af` and the
#          built tag removed before each run. Also: bytes downloaded by one extra B run,
#          next to the compressed size of the cache layers the output needs.
#   export a --no-cache build with and without --cache-to (RUNS_COLD runs each): the export's
#          share of a cold build.
#
# Bytes downloaded = bytes the registries send on loopback during the run (an iptables counter
# on lo for source ports 5000 and 5055: the cache registry and rbuild's base-image mirror; packet
# bytes, so headers included; other traffic to those registries at that moment counts too).
# BuildKit keeps images in containerd's content store across `buildx prune` (the peer lab
# preloaded debian:bookworm there), so its B may download less than an empty machine would.
#
# Needs root, hyperfine, the test registry (.ci/setup.sh) and the peer lab's registry on
# 127.0.0.1:5000; BuildKit's column needs docker-modern (../shared/scripts/modern-buildkit.sh,
# started by the peer lab, never by this script). It can only hit once rbuild implements
# --cache-to/--cache-from (issue 13).
# Usage: bash bench/remote.sh
# Env: RUNS_REMOTE=5 RUNS_COLD=3 BENCH_WORK=/tmp/rbuild-bench-remote, BENCH_BUILDKIT=0 / BENCH_RBUILD=0
#      to skip a tool,
#      BENCH_CACHE_REGISTRY=127.0.0.1:5000
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_setup
RBUILD=${BENCH_RBUILD:-1}
[ "$RBUILD" = 1 ] && bench_rbuild
W=${BENCH_WORK:-/tmp/rbuild-bench-remote}
mkdir -p "$W"
CTX=$W/ctx
bench_context "$CTX"
bench_app_dockerfile debian:bookworm > "$CTX/Dockerfile.rbuild"
bench_app_dockerfile localhost:5000/debian:bookworm > "$CTX/Dockerfile.buildkit"
CREG=${BENCH_CACHE_REGISTRY:-127.0.0.1:5000}
RUNS=${RUNS_REMOTE:-5}
RUNS_COLD=${RUNS_COLD:-3}
export RBUILD_REGISTRY_MIRRORS=docker.io=$REG RBUILD_PROGRESS=quiet

curl -sf "http://$CREG/v2/" >/dev/null || {
  echo "remote.sh: no registry on $CREG (the peer lab's: bash ../shared/scripts/peer-lab.sh)" >&2; exit 1; }
BK=0
if [ "${BENCH_BUILDKIT:-1}" = 1 ]; then
  if command -v docker-modern >/dev/null 2>&1 && docker-modern buildx version >/dev/null 2>&1 \
     && docker-modern info >/dev/null 2>&1; then
    BK=1
    docker-modern buildx version
  else
    echo "remote.sh: docker-modern (Docker 28 + BuildKit v0.25) is not running here, so BuildKit's column is empty;"
    echo "           the peer lab starts it (bash ../shared/scripts/modern-buildkit.sh)"
  fi
fi

# --- the loopback byte counter ---------------------------------------------------------------
CHAIN=RBREMOTE$$
count_setup() {
  iptables -N "$CHAIN"
  iptables -I OUTPUT -j "$CHAIN"
  for p in 5000 5055; do iptables -A "$CHAIN" -o lo -p tcp --sport "$p"; done
}
count_zero() { iptables -Z "$CHAIN"; }
count_bytes() { iptables -L "$CHAIN" -nvx | awk 'NR > 2 { s += $2 } END { print s + 0 }'; }
cleanup() {
  iptables -D OUTPUT -j "$CHAIN" 2>/dev/null || true
  iptables -F "$CHAIN" 2>/dev/null || true
  iptables -X "$CHAIN" 2>/dev/null || true
}
trap cleanup EXIT
count_setup
mb() { python3 -c "import sys; print('%.1f MB' % (int(sys.argv[1]) / 1e6))" "$1"; }

# needed_bytes CACHE_REF CONFIG_BLOB: the compressed size of the cache layers whose diff_id is
# in the image config (a file): what a build that hits everything must download at most.
needed_bytes() {
  local m c
  m=$(skopeo inspect --raw --tls-verify=false "docker://$1")
  c=$(curl -sf "http://${1%%/*}/v2/$(echo "${1#*/}" | sed 's/:[^:]*$//')/blobs/$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["config"]["digest"])' "$m")")
  python3 - "$m" "$c" "$2" <<'PY'
import json, sys
m, c, image = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.load(open(sys.argv[3]))
want = set(image["rootfs"]["diff_ids"])
print(sum(l["size"] for l, info in zip(m["layers"], c["layers"]) if info["diff_id"] in want))
PY
}

declare -A R
STAMP=$(date +%s)
RB_REF=$CREG/bench-cache:rbuild
BK_REF=localhost:5000/bench-cache:bk

# --- rbuild ----------------------------------------------------------------------------------
if [ "$RBUILD" = 1 ]; then
echo "== rbuild A: build and export to $RB_REF"
SA=$W/store-a-$STAMP
RBUILD_ROOT=$SA "$RB" build -q -f "$CTX/Dockerfile.rbuild" -t bench-remote:a \
  --metadata-file "$W/a.json" --cache-to "type=registry,ref=$RB_REF,mode=max" "$CTX" >/dev/null
cfg=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["containerimage.config.digest"])' "$W/a.json")
cp "$SA/blobs-v1/sha256/${cfg#sha256:}" "$W/a-config.json"
R[needed]=$(needed_bytes "$RB_REF" "$W/a-config.json")
echo "== rbuild B: empty store, --cache-from ($RUNS runs)"
hyperfine -w 0 -r "$RUNS" -u second --shell=bash --export-json "$W/rbuild-b.json" \
  "RBUILD_ROOT=$W/store-b-$STAMP-\$(date +%s%N) $RB build -q -f $CTX/Dockerfile.rbuild -t bench-remote:b --cache-from type=registry,ref=$RB_REF $CTX" \
  > "$W/rbuild-b.log" 2>&1 || { tail -5 "$W/rbuild-b.log"; exit 1; }
R[rb-b]=$(bench_median "$W/rbuild-b.json")
count_zero
RBUILD_ROOT=$W/store-b-$STAMP-bytes "$RB" build --progress=plain -f "$CTX/Dockerfile.rbuild" \
  -t bench-remote:b --cache-from "type=registry,ref=$RB_REF" "$CTX" > "$W/rbuild-b-plain.log" 2>&1
R[rb-bytes]=$(count_bytes)
runs=$(grep -E '^#[0-9]+ \[[0-9]+/[0-9]+\] RUN' "$W/rbuild-b-plain.log" | cut -d' ' -f1 | sort -u)
ran_runs=0
for v in $runs; do grep -qx "$v CACHED" "$W/rbuild-b-plain.log" || ran_runs=$((ran_runs + 1)); done
echo "   B ran $ran_runs RUN step(s) (0 expected); its progress: $W/rbuild-b-plain.log"

echo "== rbuild export overhead: --no-cache with and without --cache-to ($RUNS_COLD runs each)"
hyperfine -w 1 -r "$RUNS_COLD" -u second --shell=bash --export-json "$W/rbuild-cold.json" \
  "RBUILD_ROOT=$SA $RB build --no-cache -q -f $CTX/Dockerfile.rbuild -t bench-remote:cold $CTX" \
  "RBUILD_ROOT=$SA $RB build --no-cache -q -f $CTX/Dockerfile.rbuild -t bench-remote:cold --cache-to type=registry,ref=$CREG/bench-cache:rbuild-cold,mode=max $CTX" \
  > "$W/rbuild-cold.log" 2>&1 || { tail -5 "$W/rbuild-cold.log"; exit 1; }
read -r RB_COLD RB_COLD_EXP < <(python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['results']; print('%.3f %.3f' % (r[0]['median'], r[1]['median']))" "$W/rbuild-cold.json")
fi

# --- BuildKit --------------------------------------------------------------------------------
if [ "$BK" = 1 ]; then
  D="docker-modern buildx build --network=host -q -f $CTX/Dockerfile.buildkit"
  RESET="docker-modern buildx prune -af >/dev/null 2>&1; docker-modern image rm -f bench-remote:bk >/dev/null 2>&1 || true"
  echo "== BuildKit A: build and export to $BK_REF"
  $D -t bench-remote:bk --cache-to "type=registry,ref=$BK_REF,mode=max" "$CTX" >/dev/null
  echo "== BuildKit B: buildx prune -af, --cache-from ($RUNS runs)"
  hyperfine -w 0 -r "$RUNS" -u second --shell=bash --prepare "$RESET" --export-json "$W/buildkit-b.json" \
    "$D -t bench-remote:bk --cache-from type=registry,ref=$BK_REF $CTX" \
    > "$W/buildkit-b.log" 2>&1 || { tail -5 "$W/buildkit-b.log"; exit 1; }
  R[bk-b]=$(bench_median "$W/buildkit-b.json")
  bash -c "$RESET"
  count_zero
  $D -t bench-remote:bk --cache-from "type=registry,ref=$BK_REF" "$CTX" >/dev/null
  R[bk-bytes]=$(count_bytes)
  echo "== BuildKit export overhead: --no-cache with and without --cache-to ($RUNS_COLD runs each)"
  hyperfine -w 1 -r "$RUNS_COLD" -u second --shell=bash --export-json "$W/buildkit-cold.json" \
    "$D --no-cache -t bench-remote:bkcold $CTX" \
    "$D --no-cache -t bench-remote:bkcold --cache-to type=registry,ref=localhost:5000/bench-cache:bk-cold,mode=max $CTX" \
    > "$W/buildkit-cold.log" 2>&1 || { tail -5 "$W/buildkit-cold.log"; exit 1; }
  read -r BK_COLD BK_COLD_EXP < <(python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['results']; print('%.3f %.3f' % (r[0]['median'], r[1]['median']))" "$W/buildkit-cold.json")
fi

# --- report ----------------------------------------------------------------------------------
ratio() { python3 -c "import sys
try: print('%.2fx' % (float(sys.argv[1]) / float(sys.argv[2])))
except Exception: print('n/a')" "$1" "$2"; }
overhead() { python3 -c "import sys
try: print('%+.0f %%' % (100 * (float(sys.argv[2]) / float(sys.argv[1]) - 1)))
except Exception: print('n/a')" "$1" "$2"; }
echo
printf '%-34s %14s %14s %16s\n' remote rbuild buildkit rbuild/buildkit
printf '%-34s %13ss %13ss %16s\n' "B: empty store, --cache-from" "${R[rb-b]:-n/a}" "${R[bk-b]:-n/a}" "$(ratio "${R[rb-b]:-x}" "${R[bk-b]:-x}")"
printf '%-34s %14s %14s\n' "B: bytes downloaded" "$( [ -n "${R[rb-bytes]:-}" ] && mb "${R[rb-bytes]}" || echo n/a)" "$( [ -n "${R[bk-bytes]:-}" ] && mb "${R[bk-bytes]}" || echo n/a)"
printf '%-34s %14s\n' "  compressed layers the output needs" "$( [ -n "${R[needed]:-}" ] && mb "${R[needed]}" || echo n/a)"
printf '%-34s %13ss %13ss\n' "cold (--no-cache)" "${RB_COLD:-n/a}" "${BK_COLD:-n/a}"
printf '%-34s %13ss %13ss\n' "cold + --cache-to mode=max" "${RB_COLD_EXP:-n/a}" "${BK_COLD_EXP:-n/a}"
printf '%-34s %14s %14s\n' "export overhead" "$(overhead "${RB_COLD:-x}" "${RB_COLD_EXP:-x}")" "$(overhead "${BK_COLD:-x}" "${BK_COLD_EXP:-x}")"
echo "targets (issue 13): B time <= 0.5x BuildKit's; bytes <= the needed compressed size; export overhead <= +20 %"

# The B stores go last (deleting big trees before timed runs slows ext4 file creation; run.sh).
rm -rf "$W"/store-b-"$STAMP"-* "$W/store-a-$STAMP"
