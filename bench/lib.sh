# Shared parts of the bench/ scripts (sourced, not run): the test environment, the release
# binary, the debian:bookworm base in the test registry and the 10k-file context of issue 6's
# workloads (bench/run.sh, bench/remote.sh).

# bench_setup: test packages and registries (.ci/setup.sh), hyperfine, the debian:bookworm base
# in the test registry (seeded from the peer lab's registry on localhost:5000 when missing); $REG
# is the test registry. Run from the repository root.
bench_setup() {
  bash .ci/setup.sh >/dev/null
  command -v hyperfine >/dev/null || apt-get install -y -qq hyperfine >/dev/null
  REG=127.0.0.1:5055
  if ! curl -sf "http://$REG/v2/library/debian/tags/list" | grep -q bookworm; then
    skopeo copy -q --src-tls-verify=false --dest-tls-verify=false \
      docker://localhost:5000/debian:bookworm "docker://$REG/library/debian:bookworm"
  fi
}

# bench_rbuild: the release binary, built, in $RB.
bench_rbuild() {
  cargo build --release --locked -p rbuild -q
  RB=$PWD/${CARGO_TARGET_DIR:-target}/release/rbuild
  [ -x "$RB" ] || RB=$PWD/target/release/rbuild
}

# bench_context DIR: DIR/src holds 10,000 files of 10 KiB random bytes in 100 directories
# (~100 MB), made once (DIR/.files-10000 marks it complete); DIR/.dockerignore hides the marker.
bench_context() {
  local ctx=$1
  if [ ! -f "$ctx/.files-10000" ]; then
    rm -rf "$ctx"; mkdir -p "$ctx/src"
    python3 - "$ctx/src" <<'PY'
import os, sys
d = sys.argv[1]
for i in range(10000):
    sub = os.path.join(d, f"d{i % 100:02d}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(10 * 1024))
PY
    touch "$ctx/.files-10000"
  fi
  echo ".files-*" > "$ctx/.dockerignore"
}

# bench_app_dockerfile BASE: the noop/edit/cold app of bench/run.sh on BASE.
bench_app_dockerfile() {
  cat <<DF
FROM $1
WORKDIR /app
COPY src/ /app/src/
RUN find /app/src -type f | wc -l > /app/count
DF
}

# bench_median FILE: the median of hyperfine's --export-json FILE, in seconds.
bench_median() {
  python3 -c "import json,sys; print('%.3f' % json.load(open(sys.argv[1]))['results'][0]['median'])" "$1"
}
