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
for name in context file tags labels build-args target platforms push load outputs cache-from cache-to secrets no-cache pull provenance; do
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
[ "${#runs[@]}" = 2 ] || fail "expected 2 steps, found ${#runs[@]}"

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
  INPUT_NO_CACHE=false INPUT_PULL=false INPUT_PROVENANCE=false \
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
[ ! -s "$tmp/output" ] || fail "a failing build wrote outputs: $(cat "$tmp/output")"
grep -q "build failed" "$tmp/summary" || fail "no failure summary"
grep -q "exit code 9" "$tmp/summary" || fail "the failure summary lacks the error: $(cat "$tmp/summary")"

# push: true pushes the tags to their registry (the test registry on 127.0.0.1:5055).
printf 'FROM busybox\nRUN echo pushed > /pushed\n' > "$tmp/ws/app/Dockerfile"
export INPUT_PUSH=true INPUT_TAGS="127.0.0.1:5055/rbuild-action/act:1"
run_steps > "$tmp/log" 2>&1 || { cat "$tmp/log"; fail "push=true failed"; }
skopeo inspect --tls-verify=false docker://127.0.0.1:5055/rbuild-action/act:1 > "$tmp/pushed.json" \
  || fail "the pushed image is not in the registry"
grep -q '"Layers"' "$tmp/pushed.json" || fail "skopeo could not read the pushed image: $(cat "$tmp/pushed.json")"

echo "test-action: 1 passed, 0 failed"
