#!/usr/bin/env bash
# Test environment for rbuild: installs the real parts the tests use and starts them.
#  - Debian packages: docker-registry (CNCF distribution), busybox-static, skopeo, umoci, runc, jq,
#    git (git contexts), zip + unzip (local cache round trips), bsdutils (`script`, the tty progress test), uidmap (newuidmap/newgidmap,
#    rootless tests), slirp4netns and passt (the isolated default network of RUN steps; iproute2's
#    `ip` builds the test network namespaces), gcc + libc6-dev (the security suite builds its
#    attack program statically), util-linux (setpriv, flock, dmesg, nsenter), zip + unzip (the remote
#    cache tests carry a cache directory as CI caches do), rpm (rpmbuild + rpm: real rpm headers and
#    databases for the SBOM's rpm cataloger), db-util (db_load: Berkeley DB Packages files as
#    CentOS 7 has them), default-jdk-headless (`jar`: the nested-jar fixtures); PyPI spdx-tools (pyspdxtools, the SBOM validator)
#  - a Go 1.17 executable from npm (esbuild-linux-64@0.13.15, Go's pre-1.18 build info) in $W/go117
#  - a plain-HTTP registry on 127.0.0.1:5055, seeded with library/busybox:latest (and :musl-free
#    alias busybox:1) built from Debian's busybox-static by umoci, pushed by skopeo
# Idempotent. Prints the env vars tests read. Needs root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
for p in docker-registry:docker-registry busybox:busybox-static skopeo:skopeo umoci:umoci runc:runc jq:jq curl:curl git:git script:bsdutils htpasswd:apache2-utils openssl:openssl newuidmap:uidmap setpriv:util-linux slirp4netns:slirp4netns pasta:passt ip:iproute2 nsenter:util-linux flock:util-linux dmesg:util-linux cc:gcc zip:zip unzip:unzip rpmbuild:rpm db_load:db-util jar:default-jdk-headless; do
  command -v "${p%%:*}" >/dev/null 2>&1 || need+=("${p#*:}")
done
# busybox from busybox-static must be a static binary (the dynamic one won't run in a rootfs)
if ! file -L /bin/busybox 2>/dev/null | grep -q 'statically linked'; then need+=(busybox-static file); fi
# static libc for `cc -static` (cli/tests/security/attack.c)
compgen -G '/usr/lib/*/libc.a' >/dev/null || need+=(libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/tmp/rbuild-apt.log 2>&1 || { cat /tmp/rbuild-apt.log; exit 1; }
fi

# /run/netns as a shared mount point before the network tests run `ip netns add` in parallel
# (iproute2 sets it up on first use, and two first uses at once can hide a namespace).
ip netns add rbuild-setup-probe >/dev/null 2>&1 && ip netns del rbuild-setup-probe >/dev/null 2>&1 || true

# Rootless slirp4netns opens /dev/net/tun: distributions ship it 0666 (udev's default rule); a
# container without udev may have it 0600.
if [ -c /dev/net/tun ]; then chmod 0666 /dev/net/tun; fi
# PyPI's spdx-tools: the independent SPDX validator the SBOM tests run on every document
# (cli/tests/supply.rs). pip (python3-pip) when missing.
if ! command -v pyspdxtools >/dev/null 2>&1; then
  command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1 || {
    apt-get update -qq && apt-get install -y -qq python3-pip >/tmp/rbuild-apt.log 2>&1; }
  PIP=$(command -v pip3 || command -v pip)
  "$PIP" install -q spdx-tools >/tmp/rbuild-pip.log 2>&1 \
    || "$PIP" install -q --break-system-packages spdx-tools >/tmp/rbuild-pip.log 2>&1 \
    || { cat /tmp/rbuild-pip.log; exit 1; }
fi

# The unprivileged user of the rootless tests (cli/tests/rootless.rs), with subordinate id
# ranges, and one without ranges (single-id map).
for u in rbuild-test rbuild-nosub; do
  id "$u" >/dev/null 2>&1 || useradd -m -s /bin/sh "$u"
done
for f in /etc/subuid /etc/subgid; do
  touch "$f"
  grep -q '^rbuild-test:' "$f" || echo 'rbuild-test:200000:65536' >> "$f"
  sed -i '/^rbuild-nosub:/d' "$f"
done

REG=127.0.0.1:5055
W=${RBUILD_TEST_WORK:-/tmp/rbuild-test-env}
mkdir -p "$W"

# A real executable built by Go 1.17 (pointer-format build info; oci/src/sbom/tests.rs)
if [ ! -x "$W/go117/esbuild" ]; then
  rm -rf "$W/go117" && mkdir -p "$W/go117"
  # the npm registry's tarball, pinned by its sha256
  (cd "$W/go117" && curl -sfL -o esb.tgz \
      https://registry.npmjs.org/esbuild-linux-64/-/esbuild-linux-64-0.13.15.tgz \
    && echo "4441c72e5a251f9d7c83fc1949f74c46d92ddeff8ca67eb7f3050dc6401e9f03  esb.tgz" | sha256sum -c --quiet \
    && tar xzf esb.tgz package/bin/esbuild && mv package/bin/esbuild . \
    && rm -rf package esb.tgz) || { echo "setup: fetching esbuild-linux-64@0.13.15 from npm failed" >&2; exit 1; }
fi
if ! curl -sf "http://$REG/v2/" >/dev/null; then
  cat > "$W/registry.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $W/registry-data
  delete:
    enabled: true
http:
  addr: $REG
YML
  (setsid nohup docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &)
  for _ in $(seq 50); do curl -sf "http://$REG/v2/" >/dev/null && break; sleep 0.2; done
  curl -sf "http://$REG/v2/" >/dev/null || { echo "registry did not start"; cat "$W/registry.log"; exit 1; }
fi

seed_busybox() {
  local L=$W/busybox-oci
  rm -rf "$L" "$W/bundle"
  umoci init --layout "$L"
  umoci new --image "$L:latest"
  umoci unpack --rootless --image "$L:latest" "$W/bundle" >/dev/null
  local R=$W/bundle/rootfs
  mkdir -p "$R/bin" "$R/etc" "$R/tmp" "$R/root" "$R/home" "$R/usr/bin"
  chmod 1777 "$R/tmp"
  cp /bin/busybox "$R/bin/busybox"
  for a in $("$R/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$R/etc/passwd"
  printf 'root:x:0:\napp:x:1000:\nnogroup:x:65534:\n' > "$R/etc/group"
  umoci repack --image "$L:latest" "$W/bundle" >/dev/null
  umoci config --image "$L:latest" --config.cmd sh --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin >/dev/null
  skopeo copy -q --dest-tls-verify=false "oci:$L:latest" "docker://$REG/library/busybox:latest"
  skopeo copy -q --dest-tls-verify=false "oci:$L:latest" "docker://$REG/library/busybox:1"
}
if ! curl -sf "http://$REG/v2/library/busybox/tags/list" | grep -q latest; then
  seed_busybox
fi

# A second registry with TLS (self-signed CA generated here) and htpasswd auth, for push/pull
# tests with real credentials: user rbuild / password rbuild-secret.
TREG=127.0.0.1:5056
TLS=$W/tls
if [ ! -f "$TLS/ca.crt" ] || [ ! -f "$TLS/server.crt" ]; then
  mkdir -p "$TLS"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=rbuild test CA" \
    -keyout "$TLS/ca.key" -out "$TLS/ca.crt" >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$TLS/server.key" -out "$TLS/server.csr" >/dev/null 2>&1
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$TLS/ext.cnf"
  openssl x509 -req -in "$TLS/server.csr" -CA "$TLS/ca.crt" -CAkey "$TLS/ca.key" -CAcreateserial \
    -days 3650 -extfile "$TLS/ext.cnf" -out "$TLS/server.crt" >/dev/null 2>&1
fi
[ -f "$TLS/htpasswd" ] || htpasswd -Bbc "$TLS/htpasswd" rbuild rbuild-secret >/dev/null 2>&1
tls_status() { curl -s --cacert "$TLS/ca.crt" -o /dev/null -w '%{http_code}' "https://$TREG/v2/" || true; }
if [ "$(tls_status)" != 401 ]; then
  cat > "$W/registry-tls.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $W/registry-tls-data
  delete:
    enabled: true
auth:
  htpasswd:
    realm: rbuild-test
    path: $TLS/htpasswd
http:
  addr: $TREG
  tls:
    certificate: $TLS/server.crt
    key: $TLS/server.key
YML
  (setsid nohup docker-registry serve "$W/registry-tls.yml" >"$W/registry-tls.log" 2>&1 &)
  for _ in $(seq 50); do
    [ "$(tls_status)" = 401 ] && break
    sleep 0.2
  done
  [ "$(tls_status)" = 401 ] || { echo "TLS registry did not start"; cat "$W/registry-tls.log"; exit 1; }
fi
echo "RBUILD_TEST_REGISTRY=$REG"
echo "RBUILD_TEST_TLS_REGISTRY=$TREG"
echo "RBUILD_TEST_TLS_CA=$TLS/ca.crt"
echo "RBUILD_TEST_ROOTLESS_USER=rbuild-test"
