#!/usr/bin/env bash
# The four workloads of issue 6, timed for rbuild and — when installed — BuildKit (a docker
# daemon answering on the default socket; ../shared/scripts/peer-lab.sh) and Buildah, side by
# side in one run. Reports hyperfine medians and the ratio rbuild / BuildKit.
#
#   noop   fully cached rebuild, debian:bookworm base, 10k-file context (~100 MB)
#   edit   one source file changed → the COPY and one RUN re-run
#   fanout 4 independent stages (RUN sleep 1 + 20 MB each) merged by COPY --from (--no-cache)
#   cold   --no-cache build of the noop Dockerfile
#
# Needs root, hyperfine, the test registry (.ci/setup.sh) with library/debian:bookworm (seeded
# here from the peer lab's registry on localhost:5000 when missing).
# Usage: bash bench/run.sh [workload…]   (default: noop edit fanout cold)
# Env: RUNS_NOOP=10 RUNS_EDIT=5 RUNS_FANOUT=3 RUNS_COLD=3, BENCH_WORK=/tmp/rbuild-bench6,
#      BENCH_BUILDKIT=0 / BENCH_BUILDAH=0 to skip a tool.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKLOADS=("$@")
[ ${#WORKLOADS[@]} -gt 0 ] || WORKLOADS=(noop edit fanout cold)
. bench/lib.sh
bench_setup
bench_rbuild
W=${BENCH_WORK:-/tmp/rbuild-bench6}
mkdir -p "$W"
CTX=$W/ctx
bench_context "$CTX"
FAN=$W/fanout
mkdir -p "$FAN"

# Dockerfiles per tool (only the base reference differs).
write_dockerfiles() { # base
  bench_app_dockerfile "$1" > "$CTX/Dockerfile.$2"
  {
    for i in 1 2 3 4; do
      printf 'FROM %s AS s%d\nRUN sleep 1 && head -c 20000000 /dev/urandom > /data%d\n' "$1" "$i" "$i"
    done
    printf 'FROM %s\n' "$1"
    for i in 1 2 3 4; do printf 'COPY --from=s%d /data%d /data%d\n' "$i" "$i" "$i"; done
  } > "$FAN/Dockerfile.$2"
}
write_dockerfiles debian:bookworm rbuild
write_dockerfiles localhost:5000/debian:bookworm buildkit
write_dockerfiles $REG/library/debian:bookworm buildah

TOOLS=(rbuild)
if [ "${BENCH_BUILDKIT:-1}" = 1 ] && /usr/bin/docker info >/dev/null 2>&1; then TOOLS+=(buildkit); fi
if [ "${BENCH_BUILDAH:-1}" = 1 ] && command -v buildah >/dev/null; then TOOLS+=(buildah); fi

export RBUILD_REGISTRY_MIRRORS=docker.io=$REG RBUILD_PROGRESS=quiet DOCKER_BUILDKIT=1
# A fresh store per run. Old ones are deleted only after the timings: on ext4 without a journal
# (these VMs) inodes freed in the last minutes are skipped one by one when new files are made
# (ext4's recently_deleted), so deleting a 4 GB store right before the runs slows every file
# creation for minutes — BuildKit's store in /var/lib/docker is never deleted between runs either.
STORE=$W/store-$(date +%s)
OLD_STORES=$(find "$W" -maxdepth 1 \( -name 'store' -o -name 'store-*' -o -name buildah \) ! -path "$STORE")
EDIT=$CTX/src/d00/f00000.bin
PREP_EDIT="head -c 16 /dev/urandom >> $EDIT"

# cmd TOOL WORKLOAD → the command line to time
cmd() {
  local nc=""
  case $2 in cold|fanout) nc="--no-cache" ;; esac
  local dir=$CTX; [ "$2" = fanout ] && dir=$FAN
  case $1 in
    rbuild) echo "RBUILD_ROOT=$STORE $RB build $nc -q -f $dir/Dockerfile.rbuild -t bench6:$2 $dir" ;;
    buildkit) echo "/usr/bin/docker build --network=host $nc -q -f $dir/Dockerfile.buildkit -t bench6:$2 $dir" ;;
    buildah) echo "buildah --root $W/buildah/root --runroot $W/buildah/run --storage-driver vfs bud --layers --tls-verify=false --isolation chroot $nc -q -f $dir/Dockerfile.buildah -t bench6:$2 $dir" ;;
  esac
}
runs() { case $1 in noop) echo "${RUNS_NOOP:-10}";; edit) echo "${RUNS_EDIT:-5}";; fanout) echo "${RUNS_FANOUT:-3}";; cold) echo "${RUNS_COLD:-3}";; esac; }

declare -A MED
for wl in "${WORKLOADS[@]}"; do
  for t in "${TOOLS[@]}"; do
    c=$(cmd "$t" "$wl")
    # Warm the cache for noop/edit (one untimed build), like a developer's second build.
    if [ "$wl" = noop ] || [ "$wl" = edit ]; then
      sh -c "$c" >/dev/null 2>&1 || { echo "$t $wl: warm-up build failed: $c"; sh -c "$c" | tail -20; continue; }
    fi
    prep=true; [ "$wl" = edit ] && prep=$PREP_EDIT
    if hyperfine -w 0 -r "$(runs "$wl")" --prepare "$prep" -u second \
        --export-json "$W/$t-$wl.json" --shell=bash "$c" >"$W/$t-$wl.log" 2>&1; then
      MED[$t-$wl]=$(bench_median "$W/$t-$wl.json")
    else
      MED[$t-$wl]=fail; tail -5 "$W/$t-$wl.log"
    fi
    echo "$wl $t median ${MED[$t-$wl]} s"
  done
done

echo
printf '%-8s' workload; for t in "${TOOLS[@]}"; do printf '%12s' "$t"; done; printf '%16s\n' "rbuild/buildkit"
for wl in "${WORKLOADS[@]}"; do
  printf '%-8s' "$wl"
  for t in "${TOOLS[@]}"; do printf '%11ss' "${MED[$t-$wl]:-n/a}"; done
  r=$(python3 -c "import sys
try: print('%.2fx' % (float(sys.argv[1]) / float(sys.argv[2])))
except Exception: print('n/a')" "${MED[rbuild-$wl]:-x}" "${MED[buildkit-$wl]:-x}")
  printf '%16s\n' "$r"
done

# Now the old stores can go.
[ -z "$OLD_STORES" ] || rm -rf $OLD_STORES
