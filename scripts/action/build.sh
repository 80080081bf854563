#!/usr/bin/env bash
# Step 2 of action.yml: turn the INPUT_* variables (docker/build-push-action's input names) into
# an `rbuild build` command line, run it with plain progress, then write the step outputs
# (imageid, digest, metadata) to $GITHUB_OUTPUT and a job summary to $GITHUB_STEP_SUMMARY
# (set DOCKER_BUILD_SUMMARY=false or RBUILD_BUILD_SUMMARY=false to skip it).
set -euo pipefail

work="$(mktemp -d "${RUNNER_TEMP:-/tmp}/rbuild-action.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# List inputs are newline-separated; some (tags, platforms, no-cache-filters) also take commas.
list() { # list VALUE [csv]
  local v="$1"
  if [ "${2:-}" = csv ]; then v="${v//,/$'\n'}"; fi
  while IFS= read -r item; do
    item="${item#"${item%%[![:space:]]*}"}"; item="${item%"${item##*[![:space:]]}"}"
    [ -n "$item" ] && printf '%s\n' "$item"
  done <<< "$v"
}
truthy() { [ "${1:-}" = true ] || [ "${1:-}" = 1 ]; }

args=(build --progress=plain --metadata-file "$work/metadata.json" --iidfile "$work/iid")
[ -n "${INPUT_FILE:-}" ] && args+=(--file "$INPUT_FILE")
while IFS= read -r t; do args+=(--tag "$t"); done < <(list "${INPUT_TAGS:-}" csv)
while IFS= read -r l; do args+=(--label "$l"); done < <(list "${INPUT_LABELS:-}")
while IFS= read -r a; do args+=(--annotation "$a"); done < <(list "${INPUT_ANNOTATIONS:-}")
while IFS= read -r a; do args+=(--build-arg "$a"); done < <(list "${INPUT_BUILD_ARGS:-}")
while IFS= read -r c; do args+=(--build-context "$c"); done < <(list "${INPUT_BUILD_CONTEXTS:-}")
[ -n "${INPUT_TARGET:-}" ] && args+=(--target "$INPUT_TARGET")
while IFS= read -r p; do args+=(--platform "$p"); done < <(list "${INPUT_PLATFORMS:-}" csv)
truthy "${INPUT_PUSH:-}" && args+=(--push)
truthy "${INPUT_LOAD:-}" && args+=(--load)
while IFS= read -r o; do args+=(--output "$o"); done < <(list "${INPUT_OUTPUTS:-}")
while IFS= read -r c; do args+=(--cache-from "$c"); done < <(list "${INPUT_CACHE_FROM:-}")
while IFS= read -r c; do args+=(--cache-to "$c"); done < <(list "${INPUT_CACHE_TO:-}")
# secrets: KEY=VALUE lines; the value goes to a private file, never onto the command line.
n=0
while IFS= read -r s; do
  n=$((n + 1))
  key="${s%%=*}"
  (umask 077; printf '%s' "${s#*=}" > "$work/secret-$n")
  args+=(--secret "id=$key,src=$work/secret-$n")
done < <(list "${INPUT_SECRETS:-}")
while IFS= read -r s; do args+=(--secret "id=${s%%=*},src=${s#*=}"); done < <(list "${INPUT_SECRET_FILES:-}")
while IFS= read -r s; do args+=(--secret "id=${s%%=*},env=${s#*=}"); done < <(list "${INPUT_SECRET_ENVS:-}")
truthy "${INPUT_NO_CACHE:-}" && args+=(--no-cache)
while IFS= read -r f; do args+=(--no-cache-filter "$f"); done < <(list "${INPUT_NO_CACHE_FILTERS:-}" csv)
truthy "${INPUT_PULL:-}" && args+=(--pull)
[ -n "${INPUT_PROVENANCE:-}" ] && args+=("--provenance=$INPUT_PROVENANCE")
[ -n "${INPUT_SBOM:-}" ] && args+=("--sbom=$INPUT_SBOM")
while IFS= read -r a; do args+=(--attest "$a"); done < <(list "${INPUT_ATTESTS:-}")
[ -n "${INPUT_NETWORK:-}" ] && args+=(--network "$INPUT_NETWORK")
while IFS= read -r h; do args+=(--add-host "$h"); done < <(list "${INPUT_ADD_HOSTS:-}")
while IFS= read -r a; do args+=(--allow "$a"); done < <(list "${INPUT_ALLOW:-}" csv)
[ -n "${INPUT_SHM_SIZE:-}" ] && args+=(--shm-size "$INPUT_SHM_SIZE")
while IFS= read -r u; do args+=(--ulimit "$u"); done < <(list "${INPUT_ULIMIT:-}")
while IFS= read -r s; do args+=(--ssh "$s"); done < <(list "${INPUT_SSH:-}")
[ -n "${INPUT_CALL:-}" ] && args+=("--call=$INPUT_CALL")
for ignored in builder cgroup-parent; do
  var="INPUT_$(tr 'a-z-' 'A-Z_' <<< "$ignored")"
  [ -n "${!var:-}" ] && echo "::warning::rbuild: input '$ignored' is ignored (${!var}): rbuild has no builder instances and gives each RUN step its own cgroup"
done

# The context: as build-push-action, the Git context of the workflow's repository at its ref
# when none is given (GITHUB_REF, else GITHUB_SHA). A token for it reaches git as an HTTP
# header through git's environment config, never on the command line or in the log.
context="${INPUT_CONTEXT:-}"
if [ -z "$context" ]; then
  if [ -n "${GITHUB_REPOSITORY:-}" ]; then
    ref="${GITHUB_REF:-${GITHUB_SHA:-}}"
    context="${GITHUB_SERVER_URL:-https://github.com}/$GITHUB_REPOSITORY.git${ref:+#$ref}"
    if [ -n "${INPUT_GITHUB_TOKEN:-}" ]; then
      echo "::add-mask::$INPUT_GITHUB_TOKEN"
      auth="$(printf 'x-access-token:%s' "$INPUT_GITHUB_TOKEN" | base64 -w0)"
      echo "::add-mask::$auth"
      n="${GIT_CONFIG_COUNT:-0}"
      export "GIT_CONFIG_KEY_$n=http.${GITHUB_SERVER_URL:-https://github.com}/.extraheader"
      export "GIT_CONFIG_VALUE_$n=AUTHORIZATION: basic $auth"
      export GIT_CONFIG_COUNT=$((n + 1))
    fi
  else
    context=.
  fi
fi
args+=("$context")

rbuild="$(command -v rbuild || echo "${RUNNER_TEMP:-/tmp}/rbuild-install/bin/rbuild")"
# RUN steps need namespaces: run as root (GitHub-hosted runners have passwordless sudo).
runner=()
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then
  runner=(sudo --preserve-env)
fi

echo "rbuild ${args[*]}"
start=$(date +%s)
set +e
"${runner[@]}" "$rbuild" "${args[@]}" 2> >(tee "$work/log" >&2)
status=$?
set -e
wait
elapsed=$(( $(date +%s) - start ))

summary() {
  case "${RBUILD_BUILD_SUMMARY:-${DOCKER_BUILD_SUMMARY:-true}}" in false|0) return ;; esac
  [ -n "${GITHUB_STEP_SUMMARY:-}" ] || return 0
  cat >> "$GITHUB_STEP_SUMMARY"
}

if [ "$status" != 0 ]; then
  {
    echo "### :x: rbuild: build failed (exit code $status, ${elapsed}s)"
    echo
    echo '```'
    tail -n 40 "$work/log"
    echo '```'
  } | summary
  exit "$status"
fi

json_field() { # json_field KEY FILE: a top-level string field of the metadata JSON
  sed -n "s/^  \"$1\": \"\\([^\"]*\\)\".*/\\1/p" "$2" | head -n 1
}
imageid="$(cat "$work/iid")"
digest="$(json_field 'containerimage\.digest' "$work/metadata.json")"
names="$(json_field 'image\.name' "$work/metadata.json")"
{
  echo "imageid=$imageid"
  echo "digest=$digest"
  delim="rbuild_metadata_$RANDOM$RANDOM"
  echo "metadata<<$delim"
  cat "$work/metadata.json"
  echo "$delim"
} >> "${GITHUB_OUTPUT:-/dev/null}"

steps=$(grep -cE '^#[0-9]+ (DONE|CACHED)' "$work/log" || true)
cached=$(grep -cE '^#[0-9]+ CACHED' "$work/log" || true)
{
  echo "### :white_check_mark: rbuild: image built in ${elapsed}s"
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| Tags | ${names:-_(none)_} |"
  echo "| Image ID | \`$imageid\` |"
  echo "| Digest | \`$digest\` |"
  echo "| Steps | $steps ($cached cached) |"
  echo "| Context | \`$context\` |"
} | summary
