#!/usr/bin/env bash
# Export speed: build + export (gzip OCI archive, uncompressed OCI archive, rootfs tar) of a COPY of
# incompressible files, rbuild and —
# when a docker daemon answers (../shared/scripts/peer-lab.sh) — BuildKit, side by side; then
# gzip throughput of rbuild's layer compressor on all cores vs one core, on compressible data
# (a tar of /usr) and on incompressible data. Needs root and the test registry (.ci/setup.sh).
# Usage: bash bench/export.sh [total-MB=600] [files=60]
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-600}
FILES=${2:-60}
bash .ci/setup.sh >/dev/null
command -v hyperfine >/dev/null || { apt-get install -y -qq hyperfine >/dev/null; }
cargo build --release --locked -p rbuild -q
RB=$PWD/target/release/rbuild
W=${BENCH_WORK:-/tmp/rbuild-bench-export}
CTX=$W/ctx
mkdir -p "$W"
if [ ! -f "$CTX/.data-$MB-$FILES" ]; then
  rm -rf "$CTX"; mkdir -p "$CTX/data"
  per=$(( MB / FILES ))
  for i in $(seq 1 "$FILES"); do
    head -c "$(( per * 1024 * 1024 ))" /dev/urandom > "$CTX/data/f$i.bin"
  done
  touch "$CTX/.data-$MB-$FILES"
fi
cat > "$CTX/Dockerfile" <<'DF'
FROM busybox
COPY data/ /data/
DF
echo ".data-*" > "$CTX/.dockerignore"
export RBUILD_REGISTRY_MIRRORS=docker.io=127.0.0.1:5055 RBUILD_PROGRESS=quiet
STORE=$W/store
median() { python3 -c "import json,sys; print('%.2f' % (json.load(open(sys.argv[1]))['results'][0]['median']))" "$1"; }

echo "== rbuild: build --no-cache + export type=oci (gzip) of ${MB} MB incompressible"
rm -rf "$STORE"
# each run starts from a store without the compressed-layer cache (fresh store), base pulled
hyperfine -r 5 -u second --export-json "$W/rbuild-export.json" \
  --prepare "rm -rf $STORE $W/out.tar" \
  "RBUILD_ROOT=$STORE $RB build --no-cache -q -o type=oci,dest=$W/out.tar $CTX" | sed -n '/Time/p'
echo "rbuild build+export median: $(median "$W/rbuild-export.json") s  ($(stat -c %s "$W/out.tar") bytes)"
hyperfine -r 3 -u second --export-json "$W/rbuild-oci-plain.json" \
  --prepare "rm -rf $STORE $W/out.tar" \
  "RBUILD_ROOT=$STORE $RB build --no-cache -q -o type=oci,dest=$W/out.tar,compression=uncompressed $CTX" | sed -n '/Time/p'
echo "rbuild build+export type=oci,compression=uncompressed median: $(median "$W/rbuild-oci-plain.json") s"
# the exporter BuildKit 0.8 has under dockerd (no type=oci there): the rootfs as a tar
hyperfine -r 3 -u second --export-json "$W/rbuild-tar.json" \
  --prepare "rm -rf $STORE $W/out.tar" \
  "RBUILD_ROOT=$STORE $RB build --no-cache -q -o type=tar,dest=$W/out.tar $CTX" | sed -n '/Time/p'
echo "rbuild build+export type=tar median: $(median "$W/rbuild-tar.json") s"
rm -f "$W/out.tar"
hyperfine -r 5 -u second --export-json "$W/rbuild-build.json" \
  --prepare "rm -rf $STORE" \
  "RBUILD_ROOT=$STORE $RB build --no-cache -q $CTX" | sed -n '/Time/p'
echo "rbuild build only median:   $(median "$W/rbuild-build.json") s"

if /usr/bin/docker info >/dev/null 2>&1; then
  echo "== BuildKit (dockerd $(/usr/bin/docker version -f '{{.Server.Version}}'))"
  sed -i 's|^FROM busybox|FROM localhost:5000/busybox|' "$CTX/Dockerfile"
  export DOCKER_BUILDKIT=1
  if /usr/bin/docker build --network=host --no-cache -q -o "type=oci,dest=$W/bk.tar" "$CTX" >/dev/null 2>"$W/bk.err"; then
    hyperfine -r 5 -u second --export-json "$W/bk-export.json" \
      "/usr/bin/docker build --network=host --no-cache -q -o type=oci,dest=$W/bk.tar $CTX" | sed -n '/Time/p'
    echo "BuildKit build+export (type=oci) median: $(median "$W/bk-export.json") s"
  else
    echo "BuildKit type=oci not available here ($(head -c 200 "$W/bk.err")); using type=tar"
    hyperfine -r 5 -u second --export-json "$W/bk-export.json" \
      "/usr/bin/docker build --network=host --no-cache -q -o type=tar,dest=$W/bk.tar $CTX" | sed -n '/Time/p'
    echo "BuildKit build+export (type=tar) median: $(median "$W/bk-export.json") s"
  fi
  sed -i 's|^FROM localhost:5000/busybox|FROM busybox|' "$CTX/Dockerfile"
fi

echo "== gzip throughput (rbuild debug compress; level 6)"
if [ ! -f "$W/usr.tar" ]; then tar -cf "$W/usr.tar" -C / usr/share usr/lib 2>/dev/null || true; head -c 600M "$W/usr.tar" > "$W/usr600.tar"; mv "$W/usr600.tar" "$W/usr.tar"; fi
cat "$W/usr.tar" "$CTX"/data/f1.bin > /dev/null
SIZE=$(stat -c %s "$W/usr.tar")
NPROC=$(nproc)
for t in 1 "$NPROC"; do
  hyperfine -r 3 -u second --export-json "$W/gz-$t.json" \
    "$RB debug compress --threads $t < $W/usr.tar > $W/usr.tar.gz" | sed -n '/Time/p'
  s=$(median "$W/gz-$t.json")
  echo "compressible ($((SIZE / 1048576)) MiB -> $(( $(stat -c %s "$W/usr.tar.gz") / 1048576 )) MiB), $t thread(s): $s s = $(python3 -c "print('%.0f' % ($SIZE/1e6/$s))") MB/s"
done
python3 -c "import json; a=json.load(open('$W/gz-1.json'))['results'][0]['median']; b=json.load(open('$W/gz-$NPROC.json'))['results'][0]['median']; print('speed-up on $NPROC cores: %.2fx' % (a/b))"
gzip -t "$W/usr.tar.gz" && echo "gzip -t: the parallel output is valid gzip"
cat "$CTX"/data/f*.bin | head -c 600M > "$W/rand.bin"
RSIZE=$(stat -c %s "$W/rand.bin")
for t in 1 "$NPROC"; do
  hyperfine -r 3 -u second --export-json "$W/gzr-$t.json" \
    "$RB debug compress --threads $t < $W/rand.bin > $W/rand.bin.gz" | sed -n '/Time/p'
  s=$(median "$W/gzr-$t.json")
  echo "incompressible ($((RSIZE / 1048576)) MiB), $t thread(s): $s s = $(python3 -c "print('%.0f' % ($RSIZE/1e6/$s))") MB/s"
done
