#!/usr/bin/env bash
# rbuild's main job on a fresh machine: build rbuild, then build an example image with it.
# The machine has no route to Docker Hub, so `busybox` comes from a local registry (started and
# seeded by .ci/setup.sh) through rbuild's mirror setting. Needs root for the sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup.sh >/dev/null
cargo build --release --locked -p rbuild
RB=./target/release/rbuild
export RBUILD_REGISTRY_MIRRORS=docker.io=127.0.0.1:5055
echo "1.0" > examples/hello/version.txt
echo "== cold build"
time $RB build -t hello:v1 --output type=docker,dest=/tmp/hello-docker.tar examples/hello
echo "== cached rebuild"
time $RB build -t hello:v1 examples/hello
$RB images
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  docker load -i /tmp/hello-docker.tar && docker run --rm hello:v1
else
  echo "(no docker daemon here: /tmp/hello-docker.tar is ready for 'docker load -i')"
fi
