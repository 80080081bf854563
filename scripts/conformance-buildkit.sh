#!/usr/bin/env bash
# Build one conformance case (testdata/conformance/<case>) with the docker daemon's BuildKit, to
# compare with expected.json: prints the image config and a `tar -tv` listing of the result
# (owners and modes as BuildKit wrote them) and the contents of small files under the paths
# given after the case name. Base images are taken from $BK_REGISTRY (default localhost:5000).
# BK_DOCKER=docker-modern compares with BuildKit v0.25 (../shared/scripts/modern-buildkit.sh:
# `docker-modern buildx build`); the default is the peer lab's docker 20.10 (BuildKit 0.8).
# {{HTTP}}/{{GIT}} placeholders are not substituted (start your own server for those cases).
# Usage: scripts/conformance-buildkit.sh <case> [path…]
set -euo pipefail
case=$1; shift
reg=${BK_REGISTRY:-localhost:5000}
root=$(cd "$(dirname "$0")/.." && pwd)
src=$root/testdata/conformance/$case
d=$(mktemp -d)
cp -a "$src/context/." "$d/"
for f in "$d"/*Dockerfile*; do
  [ -f "$f" ] && sed -i "/^# *syntax=/d" "$f"
  [ -f "$f" ] && sed -i -E "s#(FROM( --platform=[^ ]+)? )busybox#\1$reg/busybox#" "$f"
done
mapfile -t args < <(jq -r '.args // [] | .[]' "$src/expected.json")
tag=rbuild-conf-$case
docker=${BK_DOCKER:-/usr/bin/docker}
build=(build)
[ "$docker" = docker-modern ] && build=(buildx build --load)
DOCKER_BUILDKIT=1 $docker "${build[@]}" -q --network=host -t "$tag" "${args[@]}" "$d" >/dev/null
$docker image inspect --format '{{json .Config}}' "$tag" | jq -c .
$docker image inspect --format '{{json .Author}}' "$tag"
$docker history --no-trunc --format '{{.CreatedBy}} | {{.Size}}' "$tag" | head -n 12
[ "$docker" = docker-modern ] && build=(buildx build)
DOCKER_BUILDKIT=1 $docker "${build[@]}" -q --network=host "${args[@]}" -o "type=tar,dest=$d.tar" "$d" >/dev/null
tar -tvf "$d.tar" | grep -vE ' (bin|etc|dev|proc|sys|lib|usr|var|tmp|root|home)/' || true
for p in "$@"; do echo "== $p"; tar -xOf "$d.tar" "${p#/}" || true; done
rm -rf "$d" "$d.tar"
