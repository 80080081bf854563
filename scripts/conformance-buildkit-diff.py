#!/usr/bin/env python3
"""Check testdata/conformance cases against a docker daemon's BuildKit.

For every case (or those named on the command line) that builds an image and needs no HTTP or
git server, build it with `docker build` (bases from $BK_REGISTRY, default localhost:5000,
`# syntax=` lines dropped because the peer lab cannot pull frontends), export it as a tar, and
compare what expected.json says (files: content/mode/uid/gid/type/target, absent paths, config
fields) with what BuildKit produced. Prints one line per case: `same`, the differences, or why
BuildKit could not build it. Needs docker and jq; no part of the test suite depends on it.
"""
import json, os, re, shutil, subprocess, sys, tarfile, tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testdata", "conformance")
REG = os.environ.get("BK_REGISTRY", "localhost:5000")
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")

def build(case, exp):
    d = tempfile.mkdtemp()
    ctx = os.path.join(d, "ctx")
    shutil.copytree(os.path.join(ROOT, case, "context"), ctx, symlinks=True)
    args = exp.get("args", [])
    # A named context called busybox replaces the image: the name must stay as written.
    named_busybox = any(a.startswith("busybox=") for a in args)
    for f in os.listdir(ctx):
        p = os.path.join(ctx, f)
        if "ockerfile" in f and os.path.isfile(p) and not f.endswith(".dockerignore"):
            t = open(p).read()
            t = re.sub(r"(?m)^# *syntax=.*\n", "", t)
            if not named_busybox:
                t = re.sub(r"(?m)^(FROM(?: --platform=\S+)? )busybox", r"\1" + REG + "/busybox", t)
                t = re.sub(r"--from=busybox\b", "--from=" + REG + "/busybox", t)
            open(p, "w").write(t)
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    tag = "rbuild-conf-" + case
    r = subprocess.run([DOCKER, "build", "-q", "--network=host", "-t", tag] + args + [ctx],
                       capture_output=True, text=True, env=env, cwd=ctx)
    if r.returncode != 0:
        return None, None, r.stderr.strip().splitlines()[-1:] if r.stderr else ["failed"]
    cfg = json.loads(subprocess.run([DOCKER, "image", "inspect", "--format", "{{json .Config}}", tag],
                                    capture_output=True, text=True).stdout)
    tarp = os.path.join(d, "out.tar")
    subprocess.run([DOCKER, "build", "-q", "--network=host", "-o", "type=tar,dest=" + tarp] + args + [ctx],
                   capture_output=True, text=True, env=env, check=True, cwd=ctx)
    files = {}
    with tarfile.open(tarp) as tf:
        for m in tf.getmembers():
            p = "/" + m.name.lstrip("./").rstrip("/")
            data = tf.extractfile(m).read() if m.isfile() else b""
            files[p] = m, data
    shutil.rmtree(d, ignore_errors=True)
    return files, cfg, None

def compare(case):
    exp = json.load(open(os.path.join(ROOT, case, "expected.json")))
    if any(os.path.exists(os.path.join(ROOT, case, x)) for x in ("http", "git")):
        return "skipped (needs the test's HTTP/git server)"
    if "exit_code" in exp:
        return "skipped (--check case)"
    if case == "error-no-stages":
        # BuildKit 0.8 (docker 20.10) panics on a Dockerfile without FROM and takes dockerd down.
        return "skipped (crashes BuildKit 0.8's dockerd: index out of range in dockerfile2llb)"
    if "error" in exp:
        _, _, err = build(case, exp)
        return "both fail: " + " ".join(err) if err else "BuildKit built it (rbuild rejects it)"
    files, cfg, err = build(case, exp)
    if err:
        return "BuildKit failed: " + " ".join(err)
    diffs = []
    for p, want in exp.get("files", {}).items():
        if p not in files:
            diffs.append(f"{p} missing"); continue
        m, data = files[p]
        kind = "dir" if m.isdir() else "symlink" if m.issym() else "file"
        if "content" in want and data.decode(errors="replace") != want["content"]:
            diffs.append(f"{p} content {data!r}")
        if "mode" in want and (m.mode & 0o7777) != int(want["mode"], 8):
            diffs.append(f"{p} mode {m.mode & 0o7777:o}")
        for k, g in (("uid", m.uid), ("gid", m.gid)):
            if k in want and want[k] != g:
                diffs.append(f"{p} {k} {g}")
        if "type" in want and want["type"] != kind:
            diffs.append(f"{p} type {kind}")
        if "target" in want and want["target"] != m.linkname:
            diffs.append(f"{p} target {m.linkname}")
    for p in exp.get("absent", []):
        if p in files:
            diffs.append(f"{p} present")
    for k, want in exp.get("config", {}).items():
        got = cfg.get(k)
        if got in ({}, [], "") and want is None:
            got = None
        if got != want:
            diffs.append(f"config.{k} {json.dumps(got)}")
    return "same" if not diffs else "; ".join(diffs)

cases = sys.argv[1:] or sorted(c for c in os.listdir(ROOT) if os.path.exists(os.path.join(ROOT, c, "expected.json")))
for c in cases:
    try:
        print(f"{c}: {compare(c)}", flush=True)
    except Exception as e:  # report and go on
        print(f"{c}: error {e}", flush=True)
