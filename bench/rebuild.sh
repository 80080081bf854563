#!/usr/bin/env bash
# Cold build vs fully cached rebuild on a 10k-file (~100 MB) context, rbuild and — when a docker
# daemon answers (../shared/scripts/peer-lab.sh) — BuildKit, side by side. Reports hyperfine
# medians. Needs root, the test registry (.ci/setup.sh) and hyperfine.
# Usage: bash bench/rebuild.sh [files=10000] [kib-per-file=10]
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:-10000}
KIB=${2:-10}
bash .ci/setup.sh >/dev/null
command -v hyperfine >/dev/null || { apt-get install -y -qq hyperfine >/dev/null; }
cargo build --release --locked -p rbuild -q
RB=$PWD/target/release/rbuild
W=${BENCH_WORK:-/tmp/rbuild-bench}
CTX=$W/ctx
if [ ! -f "$CTX/.files-$FILES-$KIB" ]; then
  rm -rf "$CTX"; mkdir -p "$CTX/src"
  python3 - "$CTX/src" "$FILES" "$KIB" <<'PY'
import os, sys
d, n, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    sub = os.path.join(d, f"d{i % 100:02d}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(kib * 1024))
PY
  touch "$CTX/.files-$FILES-$KIB"
fi
cat > "$CTX/Dockerfile" <<'DF'
FROM busybox
WORKDIR /app
COPY src/ /app/src/
RUN find /app/src -type f | wc -l > /app/count
DF
echo ".files-*" > "$CTX/.dockerignore"
export RBUILD_REGISTRY_MIRRORS=docker.io=127.0.0.1:5055 RBUILD_PROGRESS=quiet
STORE=$W/store
rm -rf "$STORE"
echo "== rbuild ($FILES files x ${KIB} KiB)"
hyperfine -w 1 -r 5 -u millisecond --export-json "$W/rbuild-cold.json" \
  "RBUILD_ROOT=$STORE $RB build --no-cache -q -t bench:1 $CTX" | sed -n '/Time/p'
RBUILD_ROOT=$STORE $RB build -q -t bench:1 "$CTX" >/dev/null
hyperfine -w 2 -r 20 -u millisecond --export-json "$W/rbuild-cached.json" \
  "RBUILD_ROOT=$STORE $RB build -q -t bench:1 $CTX" | sed -n '/Time/p'
median() { python3 -c "import json,sys; print('%.1f' % (json.load(open(sys.argv[1]))['results'][0]['median']*1000))" "$1"; }
echo "rbuild cold (--no-cache) median: $(median $W/rbuild-cold.json) ms"
echo "rbuild cached rebuild median:    $(median $W/rbuild-cached.json) ms"
if /usr/bin/docker info >/dev/null 2>&1; then
  echo "== BuildKit (dockerd $(/usr/bin/docker version -f '{{.Server.Version}}'))"
  sed -i 's|^FROM busybox|FROM localhost:5000/busybox|' "$CTX/Dockerfile"
  export DOCKER_BUILDKIT=1
  hyperfine -w 1 -r 5 -u millisecond --export-json "$W/bk-cold.json" \
    "/usr/bin/docker build --network=host --no-cache -q -t bench:1 $CTX" | sed -n '/Time/p'
  hyperfine -w 2 -r 20 -u millisecond --export-json "$W/bk-cached.json" \
    "/usr/bin/docker build --network=host -q -t bench:1 $CTX" | sed -n '/Time/p'
  sed -i 's|^FROM localhost:5000/busybox|FROM busybox|' "$CTX/Dockerfile"
  echo "BuildKit cold median:   $(median $W/bk-cold.json) ms"
  echo "BuildKit cached median: $(median $W/bk-cached.json) ms"
fi
