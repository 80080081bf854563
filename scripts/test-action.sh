#!/usr/bin/env bash
# Runs the steps of action.yml locally, as GitHub would, and checks the results:
#  - every input declared in action.yml reaches the build step as INPUT_<NAME> (and nothing
#    else is passed), every output maps to a build-step output;
#  - each step's `run:` line is taken from action.yml and run with GITHUB_ACTION_PATH,
#    GITHUB_OUTPUT, GITHUB_STEP_SUMMARY and GITHUB_PATH pointing at temporary files;
#  - a successful build writes imageid, digest and metadata outputs that agree with the
#    store, and a job summary; a failing build fails the step and summarises the error.
# Needs: root, the test registry (.ci/setup.sh), and RBUILD_BIN=/path/to/rbuild (built if unset).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
action="$repo/action.yml"
fail() { echo "test-action: FAIL: $*" >&2; exit 1; }

if [ -z "${RBUILD_BIN:-}" ]; then
  cargo build -q -p rbuild --manifest-path "$repo/Cargo.toml"
  RBUILD_BIN="${CARGO_TARGET_DIR:-$repo/target}/debug/rbuild"
fi
[ -x "$RBUILD_BIN" ] || fail "RBUILD_BIN=$RBUILD_BIN is not executable"

# --- action.yml is consistent -------------------------------------------------------------
inputs=$(awk '/^inputs:/{f=1;next} /^[a-z]/{f=0} f && /^  [a-z-]+:$/{sub(":","");print $1}' "$action")
[ -n "$inputs" ] || fail "no inputs found in action.yml"
for name in context file tags labels build-args target platforms push load outputs cache-from cache-to secrets secret-files secret-envs no-cache pull provenance sbom attests call cgroup-parent github-token builder; do
  grep -qx "$name" <<< "$inputs" || fail "input $name (docker/build-push-action) is missing"
done
for name in $inputs; do
  var="INPUT_$(tr 'a-z-' 'A-Z_' <<< "$name")"
  grep -q "^        $var: \${{ inputs.$name }}$" "$action" || fail "input $name is not passed as $var"
done
for out in imageid digest metadata; do
  grep -q "value: \${{ steps.build.outputs.$out }}" "$action" || fail "output $out is not mapped"
done
mapfile -t runs < <(sed -n 's/^      run: //p' "$action")
[ "${#runs[@]}" = 3 ] || fail "expected 3 run steps (version, install, build), found ${#runs[@]}"
grep -q '^      uses: actions/cache@' "$action" || fail "the tool cache step is missing"
grep -q 'path: ${{ steps.version.outputs.dir }}' "$action" || fail "the tool cache is not the version step's dir"
grep -q 'key: ${{ steps.version.outputs.key }}' "$action" || fail "the tool cache is not keyed on the version"

# --- run the steps ----------------------------------------------------------------------
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/ws/app"
ln -s "$RBUILD_BIN" "$tmp/bin/rbuild"
cat > "$tmp/ws/app/Dockerfile" <<'DOCKERFILE'
FROM busybox
ARG GREETING
COPY msg.txt /msg.txt
RUN echo "$GREETING $(cat /msg.txt)" > /out.txt
DOCKERFILE
echo world > "$tmp/ws/app/msg.txt"

run_steps() { # run the action's steps with INPUT_* already exported; returns the build status
  : > "$tmp/output"; : > "$tmp/summary"; : > "$tmp/path"
  local r
  for r in "${runs[@]}"; do
    (
      cd "$tmp/ws"
      export GITHUB_ACTION_PATH="$repo" GITHUB_OUTPUT="$tmp/output" \
        GITHUB_STEP_SUMMARY="$tmp/summary" GITHUB_PATH="$tmp/path" RUNNER_TEMP="$tmp" \
        PATH="$tmp/bin:$PATH" RBUILD_ROOT="$tmp/store" \
        RBUILD_REGISTRY_MIRRORS="docker.io=${RBUILD_TEST_REGISTRY:-127.0.0.1:5055}"
      eval "$r"
    ) || return $?
  done
}

export INPUT_CONTEXT=app INPUT_TAGS=$'act:1\nact:latest' INPUT_BUILD_ARGS="GREETING=hello" \
  INPUT_LABELS=$'org.opencontainers.image.title=act\nteam=ci' INPUT_PUSH=false INPUT_LOAD=false \
  INPUT_NO_CACHE=false INPUT_PULL=false INPUT_PROVENANCE=false INPUT_SBOM=false \
  INPUT_ATTESTS="type=sbom,disabled=true" \
  INPUT_OUTPUTS="type=oci,dest=$tmp/act.tar"
run_steps > "$tmp/log" 2>&1 || { cat "$tmp/log"; fail "the build step failed"; }

imageid=$(sed -n 's/^imageid=//p' "$tmp/output")
digest=$(sed -n 's/^digest=//p' "$tmp/output")
[[ "$imageid" =~ ^sha256:[0-9a-f]{64}$ ]] || fail "imageid output: '$imageid'"
[[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || fail "digest output: '$digest'"
delim=$(sed -n 's/^metadata<<//p' "$tmp/output")
[ -n "$delim" ] || fail "no multi-line metadata output"
metadata=$(sed -n "/^metadata<<$delim\$/,/^$delim\$/p" "$tmp/output" | sed '1d;$d')
grep -q "\"containerimage.digest\": \"$digest\"" <<< "$metadata" || fail "metadata lacks the digest: $metadata"
grep -q "\"containerimage.config.digest\": \"$imageid\"" <<< "$metadata" || fail "metadata lacks the image id"
grep -q '"image.name": "docker.io/library/act:1,docker.io/library/act:latest"' <<< "$metadata" || fail "metadata image.name: $metadata"
# The outputs agree with the store: the tag points at that manifest, whose config is the id.
index="$tmp/store/layout-v1/index.json"
grep -q "\"digest\":\"$digest\"" "$index" || grep -q "\"digest\": \"$digest\"" "$index" || fail "digest $digest not in the store's index"
grep -q "${imageid#sha256:}" "$tmp/store/blobs-v1/sha256/${digest#sha256:}" || fail "the manifest does not name config $imageid"
[ -s "$tmp/act.tar" ] || fail "the outputs input did not export an OCI archive"
grep -q "^rbuild build --progress=plain" "$tmp/log" || fail "the command line is not logged"
grep -q -- "--build-arg GREETING=hello" "$tmp/log" || fail "build-args not passed"
grep -q -- "--label team=ci" "$tmp/log" || fail "labels not passed"
grep -q -- "--provenance=false" "$tmp/log" || fail "provenance not passed"
grep -q -- "--sbom=false" "$tmp/log" || fail "sbom not passed"
grep -q -- "--attest type=sbom,disabled=true" "$tmp/log" || fail "attests not passed"
grep -q "rbuild found:" "$tmp/log" || fail "the install step did not find the rbuild on PATH"
grep -q "image built" "$tmp/summary" || fail "no job summary: $(cat "$tmp/summary")"
grep -q "$digest" "$tmp/summary" || fail "the summary lacks the digest"
grep -q "docker.io/library/act:1" "$tmp/summary" || fail "the summary lacks the tags"

# A cached rebuild gives the same image id; the summary counts cached steps.
run_steps > "$tmp/log" 2>&1 || { cat "$tmp/log"; fail "the cached rebuild failed"; }
[ "$(sed -n 's/^imageid=//p' "$tmp/output")" = "$imageid" ] || fail "a cached rebuild changed the image id"
grep -Eq "\| Steps \| [0-9]+ \(3 cached\)" "$tmp/summary" || fail "summary of the cached build: $(cat "$tmp/summary")"

# A failing build fails the step, writes no outputs and summarises the error.
printf 'FROM busybox\nRUN echo broken >&2; exit 9\n' > "$tmp/ws/app/Dockerfile"
if run_steps > "$tmp/log" 2>&1; then fail "a failing build did not fail the step"; fi
! grep -Eq '^(imageid|digest|metadata)' "$tmp/output" || fail "a failing build wrote outputs: $(cat "$tmp/output")"
grep -q "build failed" "$tmp/summary" || fail "no failure summary"
grep -q "exit code 9" "$tmp/summary" || fail "the failure summary lacks the error: $(cat "$tmp/summary")"

# push: true pushes the tags to their registry (the test registry on 127.0.0.1:5055).
printf 'FROM busybox\nRUN echo pushed > /pushed\n' > "$tmp/ws/app/Dockerfile"
export INPUT_PUSH=true INPUT_TAGS="127.0.0.1:5055/rbuild-action/act:1"
run_steps > "$tmp/log" 2>&1 || { cat "$tmp/log"; fail "push=true failed"; }
skopeo inspect --tls-verify=false docker://127.0.0.1:5055/rbuild-action/act:1 > "$tmp/pushed.json" \
  || fail "the pushed image is not in the registry"
grep -q '"Layers"' "$tmp/pushed.json" || fail "skopeo could not read the pushed image: $(cat "$tmp/pushed.json")"

# cache-to / cache-from: one spec per line, each line one flag (commas stay in the value); a
# local cache directory written by one run fills an empty store in the next, where the RUN
# step is a cache hit; a missing cache is a warning, not a failure.
printf 'FROM busybox\nRUN echo "from the cache $RANDOM" > /c\n' > "$tmp/ws/app/Dockerfile"
export INPUT_PUSH=false INPUT_TAGS=act:cache \
  INPUT_CACHE_TO=$'type=local,dest='"$tmp"$'/cache-a,mode=max\n  type=local,dest='"$tmp"'/cache-b  '
run_steps > "$tmp/log" 2>&1 || { cat "$tmp/log"; fail "cache-to failed"; }
grep -q -- "--cache-to type=local,dest=$tmp/cache-a,mode=max --cache-to type=local,dest=$tmp/cache-b " "$tmp/log" \
  || fail "cache-to lines are not one flag each: $(grep '^rbuild build' "$tmp/log")"
for d in cache-a cache-b; do
  [ -f "$tmp/$d/index.json" ] && [ -f "$tmp/$d/oci-layout" ] || fail "no OCI layout cache in $d: $(ls -la "$tmp/$d" 2>&1)"
done
first=$(sed -n 's/^imageid=//p' "$tmp/output")
rm -rf "$tmp/store"
export INPUT_CACHE_TO="" \
  INPUT_CACHE_FROM=$'type=local,src='"$tmp"$'/no-such-cache\ntype=local,src='"$tmp"'/cache-a'
run_steps > "$tmp/log" 2>&1 || { cat "$tmp/log"; fail "cache-from failed"; }
grep -q -- "--cache-from type=local,src=$tmp/no-such-cache --cache-from type=local,src=$tmp/cache-a " "$tmp/log" \
  || fail "cache-from lines are not one flag each: $(grep '^rbuild build' "$tmp/log")"
grep -q "WARNING: cache import from $tmp/no-such-cache failed" "$tmp/log" || fail "no warning for the missing cache: $(cat "$tmp/log")"
run=$(grep -E '^#[0-9]+ \[2/2\] RUN' "$tmp/log" | head -n 1 | cut -d' ' -f1)
[ -n "$run" ] && grep -qx "$run CACHED" "$tmp/log" || fail "the RUN step did not come from the cache: $(cat "$tmp/log")"
[ "$(sed -n 's/^imageid=//p' "$tmp/output")" = "$first" ] || fail "the image from the cache differs from the exported build"
# a service rbuild has no client for fails the step with the way out
export INPUT_CACHE_FROM="" INPUT_CACHE_TO="type=gha,mode=max"
if run_steps > "$tmp/log" 2>&1; then fail "cache-to type=gha did not fail the step"; fi
grep -q "type=gha is not supported.*type=registry.*type=local" "$tmp/log" || fail "unclear type=gha error: $(cat "$tmp/log")"
export INPUT_CACHE_TO=""

# --- the install step's download path ----------------------------------------------------
# A release archive made by scripts/release.sh from the binary under test, served over HTTP on
# 127.0.0.1; the steps run with a PATH that has neither rbuild nor cargo.
version=$(bash "$repo/scripts/action/version.sh" | sed -n 's/^version=//p')
[ -n "$version" ] || fail "the version step printed no version"
mkdir -p "$tmp/srv/v$version" "$tmp/fakebin"
RBUILD_DIST="$tmp/srv/v$version" RBUILD_CHECKSUMS="$tmp/checksums.txt" \
  bash "$repo/scripts/release.sh" --binary "$RBUILD_BIN" > "$tmp/release.log" || fail "release.sh failed"
archive=$(head -n 1 "$tmp/release.log")
[ -f "$archive" ] || fail "release.sh made no archive: $(cat "$tmp/release.log")"
grep -q "  $(basename "$archive")\$" "$tmp/checksums.txt" || fail "release.sh pinned no checksum"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$tmp/srv" "$port" > "$tmp/http.log" 2>&1 &
http_pid=$!
trap 'kill $http_pid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
for tool in bash sh curl sha256sum tar gzip install mv mkdir mktemp rm sed awk cut uname basename dirname head cat tr cp chmod; do
  ln -sf "$(command -v "$tool")" "$tmp/fakebin/$tool"
done
install_steps() { # run the version and install steps (not the build) with a bare PATH
  : > "$tmp/path"
  (
    cd "$tmp/ws"
    export GITHUB_ACTION_PATH="$repo" GITHUB_OUTPUT="$tmp/output" GITHUB_PATH="$tmp/path" \
      RUNNER_TEMP="$tmp" RUNNER_TOOL_CACHE="$tmp/toolcache" PATH="$tmp/fakebin" \
      RBUILD_DOWNLOAD_BASE="http://127.0.0.1:$port" RBUILD_CHECKSUMS="$tmp/checksums.txt"
    eval "${runs[0]}" && eval "${runs[1]}"
  )
}
install_steps > "$tmp/log" 2>&1 || { cat "$tmp/log"; fail "install from the release archive failed"; }
grep -q "sha256 .* verified" "$tmp/log" || fail "the archive was not verified: $(cat "$tmp/log")"
grep -q "GET /v$version/$(basename "$archive")" "$tmp/http.log" || fail "nothing was downloaded: $(cat "$tmp/http.log")"
dir=$(cat "$tmp/path")
[ -x "$dir/rbuild" ] || fail "no rbuild in the GITHUB_PATH dir '$dir'"
"$dir/rbuild" version | grep -q "^rbuild $version" || fail "the installed rbuild does not run"
# Second run: the tool cache (what actions/cache restores) is used, nothing is downloaded.
kill $http_pid; wait $http_pid 2>/dev/null || true
install_steps > "$tmp/log" 2>&1 || { cat "$tmp/log"; fail "install from the tool cache failed"; }
grep -q "(tool cache)" "$tmp/log" || fail "the tool cache was not used: $(cat "$tmp/log")"
# A download whose sha256 is not the pinned one is never used: the step builds from source
# (a fake cargo here, recording its arguments) into the tool cache instead.
python3 -m http.server --bind 127.0.0.1 --directory "$tmp/srv" "$port" > "$tmp/http.log" 2>&1 &
http_pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
rm -rf "$tmp/toolcache"
sed -i "s/^[0-9a-f]\{64\}  /$(printf '0%.0s' $(seq 64))  /" "$tmp/checksums.txt"
cat > "$tmp/fakebin/cargo" <<CARGO
#!/bin/sh
echo "\$@" > "$tmp/cargo-args"
root=\$(echo "\$@" | sed -n 's/.*--root \([^ ]*\).*/\1/p')
mkdir -p "\$root/bin" && cp "$RBUILD_BIN" "\$root/bin/rbuild"
CARGO
chmod +x "$tmp/fakebin/cargo"
install_steps > "$tmp/log" 2>&1 || { cat "$tmp/log"; fail "the fallback build failed"; }
grep -q "not using the download" "$tmp/log" || fail "a tampered archive was not refused: $(cat "$tmp/log")"
grep -q "install --locked --path $repo/cli --root $tmp/toolcache/" "$tmp/cargo-args" || fail "cargo install args: $(cat "$tmp/cargo-args")"
grep -q "(built from source)" "$tmp/log" || fail "the source build was not used"
# No pinned checksum and no cargo: the step fails and says what to do.
rm -rf "$tmp/toolcache" "$tmp/fakebin/cargo"
: > "$tmp/checksums.txt"
if install_steps > "$tmp/log" 2>&1; then fail "install without a verified archive or cargo succeeded"; fi
grep -q "no verified release binary and no cargo" "$tmp/log" || fail "unclear install error: $(cat "$tmp/log")"

# --- the default context: the repository's Git context at GITHUB_REF -------------------------
git init -q --bare "$tmp/git/org/app.git"
git -C "$tmp/ws/app" init -q -b main
git -C "$tmp/ws/app" add -A >/dev/null
printf 'FROM busybox\nCOPY msg.txt /msg.txt\nRUN cat /msg.txt > /copied\n' > "$tmp/ws/app/Dockerfile"
git -C "$tmp/ws/app" add -A
git -C "$tmp/ws/app" -c user.name=t -c user.email=t@e commit -q -m ctx
git -C "$tmp/ws/app" push -q "$tmp/git/org/app.git" main
unset INPUT_CONTEXT
export INPUT_PUSH=false INPUT_TAGS=act:git INPUT_GITHUB_TOKEN=tok-$RANDOM$RANDOM INPUT_BUILDER=mybuilder
export GITHUB_SERVER_URL="file://$tmp/git" GITHUB_REPOSITORY=org/app GITHUB_REF=refs/heads/main
run_steps > "$tmp/log" 2>&1 || { cat "$tmp/log"; fail "the default Git context build failed"; }
grep -q "^rbuild build .* file://$tmp/git/org/app.git#refs/heads/main\$" "$tmp/log" || fail "the default context is not the Git context: $(grep '^rbuild build' "$tmp/log")"
! grep "^rbuild build" "$tmp/log" | grep -q "$INPUT_GITHUB_TOKEN" || fail "the token is on the command line"
grep -q "input 'builder' is ignored" "$tmp/log" || fail "the ignored builder input is not reported"
grep -q "file://$tmp/git/org/app.git#refs/heads/main" "$tmp/summary" || fail "the summary lacks the Git context"

echo "test-action: 1 passed, 0 failed"
