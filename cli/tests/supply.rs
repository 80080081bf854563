//! Supply chain: reproducible-by-default builds (the git commit time as the source date epoch),
//! through the real CLI and the test registry.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

fn git(dir: &Path, args: &[&str], date: &str) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("GIT_AUTHOR_DATE", date)
        .env("GIT_COMMITTER_DATE", date)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rbuild build --metadata-file` of `context` with its own store; returns the metadata.
fn build_in(context: &Path, store: &Path, extra: &[&str]) -> Value {
    let meta = context.parent().unwrap().join("meta.json");
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
    c.arg("build")
        .args(extra)
        .arg("--metadata-file")
        .arg(&meta)
        .arg(context)
        .env("RBUILD_ROOT", store)
        .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
        .env("RBUILD_PROGRESS", "plain")
        .env_remove("RBUILD_RUNTIME")
        .env_remove("SOURCE_DATE_EPOCH");
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "build of {}: {}",
        context.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap()
}

const DOCKERFILE: &str =
    "FROM busybox\nCOPY a.txt /a.txt\nRUN echo x > /x && mkdir -p /made\nWORKDIR /w\n";

#[test]
fn two_clones_two_stores_give_the_same_digest_without_flags() {
    require_env();
    require_tools(&["git", "touch"]);
    let root = tempfile::tempdir().unwrap();
    let origin = root.path().join("origin");
    fs::create_dir(&origin).unwrap();
    fs::write(origin.join("Dockerfile"), DOCKERFILE).unwrap();
    fs::write(origin.join("a.txt"), "same\n").unwrap();
    git(&origin, &["init", "-q"], "@1700000000 +0000");
    git(&origin, &["add", "."], "@1700000000 +0000");
    git(&origin, &["commit", "-q", "-m", "one"], "@1700000000 +0000");

    // two clones at different paths, each built in its own store, at different times and with
    // different file mtimes
    let one = root.path().join("x/one");
    let two = root.path().join("y/z/two");
    for c in [&one, &two] {
        fs::create_dir_all(c.parent().unwrap()).unwrap();
        let status = Command::new("git")
            .args(["clone", "-q"])
            .arg(&origin)
            .arg(c)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let s1 = tempfile::tempdir().unwrap();
    let s2 = tempfile::tempdir().unwrap();
    let m1 = build_in(&one, s1.path(), &["-t", "rep:1"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let status = Command::new("touch")
        .args(["-d", "@1750000000"])
        .arg(two.join("a.txt"))
        .status()
        .unwrap();
    assert!(status.success());
    let m2 = build_in(&two, s2.path(), &[]);
    let d1 = m1["containerimage.digest"].as_str().unwrap();
    let d2 = m2["containerimage.digest"].as_str().unwrap();
    eprintln!("clone one: {d1}\nclone two: {d2}");
    assert_eq!(d1, d2, "same commit, two clones, two stores: same digest");
    // pushed with the default provenance: the index digest is reproducible too
    let mut pushed = Vec::new();
    // (one name: the statements' subjects name the tag)
    for (clone, store) in [(&one, &s1), (&two, &s2)] {
        let name = format!("{REGISTRY}/supply/repro:v1");
        let m = build_in(clone, store.path(), &["--push", "-t", &name]);
        let d = m["containerimage.digest"].as_str().unwrap().to_string();
        assert_eq!(
            m["containerimage.descriptor"]["mediaType"],
            "application/vnd.oci.image.index.v1+json"
        );
        pushed.push(d);
    }
    eprintln!("pushed index: {} / {}", pushed[0], pushed[1]);
    assert_eq!(
        pushed[0], pushed[1],
        "pushed indexes (with provenance) are the same"
    );
    assert_eq!(
        m1["rbuild.source-date-epoch"],
        serde_json::json!({"value": 1_700_000_000, "source": "git-commit"})
    );
    // the config's created is the commit time
    let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .args(["inspect", "rep:1"])
        .env("RBUILD_ROOT", s1.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2023-11-14T22:13:20Z"),
        "created is the commit time: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // one context file changed and committed: another digest
    fs::write(two.join("a.txt"), "changed\n").unwrap();
    git(&two, &["commit", "-q", "-am", "two"], "@1700001000 +0000");
    let m3 = build_in(&two, s2.path(), &[]);
    let d3 = m3["containerimage.digest"].as_str().unwrap();
    eprintln!("changed: {d3}");
    assert_ne!(d1, d3);
    assert_eq!(m3["rbuild.source-date-epoch"]["value"], 1_700_001_000);

    // SOURCE_DATE_EPOCH still wins; outside a work tree there is no epoch (build time)
    let m4 = build_in(&two, s2.path(), &["--build-arg", "SOURCE_DATE_EPOCH=5"]);
    assert_eq!(
        m4["rbuild.source-date-epoch"],
        serde_json::json!({"value": 5, "source": "build-arg:SOURCE_DATE_EPOCH"})
    );
    let plain = root.path().join("plain/ctx");
    fs::create_dir_all(&plain).unwrap();
    fs::write(plain.join("Dockerfile"), DOCKERFILE).unwrap();
    fs::write(plain.join("a.txt"), "same\n").unwrap();
    let m5 = build_in(&plain, s2.path(), &[]);
    assert_eq!(
        m5["rbuild.source-date-epoch"],
        serde_json::json!({"value": null, "source": "none"})
    );

    // a git URL context: the commit checked out gives the epoch
    let url = format!("file://{}/.git", origin.display());
    let m6 = build_in_url(&url, s2.path(), root.path());
    assert_eq!(
        m6["rbuild.source-date-epoch"],
        serde_json::json!({"value": 1_700_000_000, "source": "git-commit"})
    );
}

fn build_in_url(url: &str, store: &Path, work: &Path) -> Value {
    let meta = work.join("url-meta.json");
    let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .args(["build", "--metadata-file"])
        .arg(&meta)
        .arg(url)
        .env("RBUILD_ROOT", store)
        .env("RBUILD_REGISTRY_MIRRORS", format!("docker.io={REGISTRY}"))
        .env("RBUILD_PROGRESS", "plain")
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap()
}

// ---- attestations, through the registry ----

/// GET from the test registry's API (`curl`), as bytes.
fn registry_get(path: &str) -> Vec<u8> {
    let out = Command::new("curl")
        .args([
            "-sfL",
            "-H",
            "Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
            &format!("http://{REGISTRY}/v2/{path}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "GET {path}");
    out.stdout
}

fn skopeo_raw(reference: &str) -> Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A project whose image holds the SBOM fixture filesystem (testdata/sbom/rootfs).
fn fixture_project(dockerfile: &str) -> Project {
    let p = Project::new(dockerfile);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/sbom/rootfs");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(p.path().join("rootfs"))
        .status()
        .unwrap();
    assert!(status.success());
    p
}

fn push(p: &Project, repo: &str, extra: &[&str]) -> (String, Value) {
    let name = format!("{REGISTRY}/supply/{repo}:v1");
    let mut args = vec![
        "-t",
        name.as_str(),
        "--push",
        "--metadata-file",
        "meta.json",
    ];
    args.extend_from_slice(extra);
    p.build(&args).ok();
    let meta: Value =
        serde_json::from_slice(&fs::read(p.path().join("meta.json")).unwrap()).unwrap();
    (name, meta)
}

/// The attestation manifests of a pushed index and their statements: `(entry, [statement])`.
fn attestations(repo: &str, index: &Value) -> Vec<(Value, Vec<Value>)> {
    let mut out = Vec::new();
    for m in index["manifests"].as_array().unwrap() {
        if m["annotations"]["vnd.docker.reference.type"] != "attestation-manifest" {
            continue;
        }
        let digest = m["digest"].as_str().unwrap();
        let man: Value =
            serde_json::from_slice(&registry_get(&format!("supply/{repo}/manifests/{digest}")))
                .unwrap();
        let mut statements = Vec::new();
        for l in man["layers"].as_array().unwrap() {
            assert_eq!(l["mediaType"], "application/vnd.in-toto+json");
            let blob = registry_get(&format!(
                "supply/{repo}/blobs/{}",
                l["digest"].as_str().unwrap()
            ));
            let st: Value = serde_json::from_slice(&blob).unwrap();
            assert_eq!(
                l["annotations"]["in-toto.io/predicate-type"], st["predicateType"],
                "layer annotation = statement predicate type"
            );
            statements.push(st);
        }
        out.push((m.clone(), statements));
    }
    out
}

/// Schema check of an in-toto v0.1 statement about `digest`.
fn check_statement(st: &Value, digest: &str) {
    assert_eq!(st["_type"], "https://in-toto.io/Statement/v0.1");
    assert!(st["predicateType"].is_string());
    assert!(st["predicate"].is_object());
    let subjects = st["subject"].as_array().expect("subject is an array");
    assert!(!subjects.is_empty());
    for s in subjects {
        assert!(
            s["name"].as_str().unwrap().starts_with("pkg:docker/"),
            "{s}"
        );
        assert_eq!(
            s["digest"]["sha256"].as_str().unwrap(),
            digest.trim_start_matches("sha256:")
        );
    }
}

/// Schema check of SLSA provenance v0.2 as BuildKit writes it.
fn check_slsa02(p: &Value) {
    assert!(p["builder"]["id"].is_string());
    assert_eq!(p["buildType"], "https://mobyproject.org/buildkit@v1");
    for m in p["materials"].as_array().unwrap() {
        assert!(m["uri"].is_string() && m["digest"].is_object(), "{m}");
    }
    let inv = &p["invocation"];
    assert!(inv["configSource"]["entryPoint"].is_string());
    assert_eq!(inv["parameters"]["frontend"], "dockerfile.v0");
    assert!(inv["parameters"]["args"].is_object());
    assert!(inv["environment"]["platform"].is_string());
    let md = &p["metadata"];
    // wall-clock times only when the build has no source date epoch
    for k in ["buildStartedOn", "buildFinishedOn"] {
        if md["reproducible"] == true {
            assert!(md.get(k).is_none(), "{k} in a reproducible provenance");
        } else {
            let t = md[k].as_str().unwrap();
            assert!(t.len() == 20 && t.ends_with('Z'), "{k}: {t}");
        }
    }
    assert!(md["buildInvocationID"].is_string());
    assert!(md["completeness"]["parameters"].is_boolean());
    assert!(md["reproducible"].is_boolean());
}

/// Validate an SPDX document with PyPI's spdx-tools (`pyspdxtools -i`).
fn validate_spdx(doc: &Value, dir: &Path) {
    let f = dir.join("sbom.spdx.json");
    fs::write(&f, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let out = Command::new("pyspdxtools")
        .arg("-i")
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyspdxtools rejects the SBOM: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pushed_sbom_and_max_provenance_read_back_and_validate() {
    require_env();
    require_tools(&["skopeo", "curl", "pyspdxtools"]);
    let p = fixture_project("FROM busybox\nARG V=1\nCOPY rootfs/ /\nRUN echo $V > /v\n");
    p.file(
        "ctxlock/package-lock.json",
        r#"{"packages":{"node_modules/ctx-only":{"version":"9.9.9"}}}"#,
    );
    let (name, meta) = push(
        &p,
        "full",
        &[
            "--sbom",
            "--provenance",
            "mode=max",
            "--build-arg",
            "V=2",
            "--build-arg",
            "BUILDKIT_SBOM_SCAN_CONTEXT=true",
        ],
    );
    let index = skopeo_raw(&name);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(
        meta["containerimage.digest"].as_str().unwrap(),
        format!(
            "sha256:{}",
            hex_sha256(&registry_get("supply/full/manifests/v1"))
        ),
        "metadata names the pushed index"
    );
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    let image = &entries[0];
    assert_eq!(image["platform"]["os"], "linux");
    let att = &entries[1];
    assert_eq!(att["platform"]["os"], "unknown");
    assert_eq!(att["platform"]["architecture"], "unknown");
    assert_eq!(
        att["annotations"]["vnd.docker.reference.digest"],
        image["digest"]
    );
    let image_digest = image["digest"].as_str().unwrap();
    let atts = attestations("full", &index);
    let statements = &atts[0].1;
    // image SBOM, context SBOM, provenance
    assert_eq!(statements.len(), 3, "{statements:#?}");
    for st in statements {
        check_statement(st, image_digest);
        assert_eq!(
            st["subject"][0]["name"],
            format!(
                "pkg:docker/{REGISTRY}/supply/full@v1?platform={}",
                host_platform().replace('/', "%2F")
            )
        );
    }
    let sboms: Vec<&Value> = statements
        .iter()
        .filter(|s| s["predicateType"] == "https://spdx.dev/Document")
        .collect();
    assert_eq!(sboms.len(), 2);
    for s in &sboms {
        validate_spdx(&s["predicate"], p.path());
    }
    let purls: Vec<String> = sboms[0]["predicate"]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            p["externalRefs"][0]["referenceLocator"]
                .as_str()
                .map(String::from)
        })
        .collect();
    for want in [
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12&upstream=glibc",
        "pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64&distro=debian-12",
        "pkg:rpm/debian/bash@5.2.15-3.fc39?arch=x86_64&distro=debian-12&epoch=1",
        "pkg:pypi/requests@2.31.0",
        "pkg:npm/%40babel/core@7.23.0",
        "pkg:golang/github.com/google/uuid@v1.6.0",
        "pkg:golang/stdlib@1.21.5",
        "pkg:cargo/serde@1.0.197",
        "pkg:maven/com.google.guava/guava@33.0.0-jre",
    ] {
        assert!(purls.iter().any(|p| p == want), "{want} not in {purls:#?}");
    }
    let ctx = serde_json::to_string(&sboms[1]["predicate"]).unwrap();
    assert!(
        ctx.contains("pkg:npm/ctx-only@9.9.9"),
        "context SBOM: {ctx}"
    );
    // provenance: materials (busybox by digest), args, the build definition (max)
    let prov = statements
        .iter()
        .find(|s| s["predicateType"] == "https://slsa.dev/provenance/v0.2")
        .unwrap();
    let pred = &prov["predicate"];
    check_slsa02(pred);
    let material = &pred["materials"][0];
    assert!(
        material["uri"]
            .as_str()
            .unwrap()
            .starts_with("pkg:docker/busybox@latest?platform="),
        "{material}"
    );
    assert_eq!(material["digest"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(pred["invocation"]["parameters"]["args"]["build-arg:V"], "2");
    let steps = pred["buildConfig"]["llbDefinition"].as_array().unwrap();
    assert!(
        steps.iter().any(|s| s["op"]["type"] == "exec"),
        "{steps:#?}"
    );
    // max mode carries the Dockerfile and each step's lines as BuildKit's `source` metadata
    // (missing before the side-by-side with BuildKit v0.25.2, docs/attestations.md)
    let source = &pred["metadata"]["https://mobyproject.org/buildkit@v1#metadata"]["source"];
    let info = &source["infos"][0];
    assert_eq!(info["filename"], "Dockerfile");
    assert_eq!(info["language"], "Dockerfile");
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD
        .decode(info["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, fs::read(p.path().join("Dockerfile")).unwrap());
    let locations = source["locations"].as_object().unwrap();
    for st in steps {
        let id = st["id"].as_str().unwrap();
        assert!(locations.contains_key(id), "{id} not in {locations:?}");
    }
    let run = steps.iter().find(|s| s["op"]["type"] == "exec").unwrap();
    assert_eq!(
        locations[run["id"].as_str().unwrap()]["locations"][0]["ranges"][0],
        serde_json::json!({"start": {"line": 4}, "end": {"line": 4}})
    );
    // rbuild's own reader sees the same
    let out = p
        .cmd(&["imagetools", "inspect", &name, "--format", "{{json .SBOM}}"])
        .output()
        .unwrap();
    if out.status.code() != Some(2) {
        let sbom: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert!(
            sbom.to_string().contains("pkg:pypi/requests@2.31.0"),
            "{sbom}"
        );
    }
}

fn hex_sha256(data: &[u8]) -> String {
    use std::io::Write;
    let mut c = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn default_provenance_on_push_only_and_one_attestation_per_platform() {
    require_env();
    require_tools(&["skopeo", "curl"]);
    let p = Project::new("FROM scratch\nCOPY a.txt /a.txt\n");
    p.file("a.txt", "a\n");
    // no flag: min provenance on a push (buildx's default); build args and labels are not in
    // it, the target is (as BuildKit v0.25.2: they were before the side-by-side)
    let (name, _) = push(
        &p,
        "default",
        &[
            "--build-arg",
            "TOKEN=not-for-min",
            "--label",
            "l=not-for-min",
            "--network",
            "none",
        ],
    );
    let index = skopeo_raw(&name);
    let atts = attestations("default", &index);
    assert_eq!(atts.len(), 1);
    let pred = &atts[0].1[0]["predicate"];
    assert_eq!(
        atts[0].1[0]["predicateType"],
        "https://slsa.dev/provenance/v0.2"
    );
    check_slsa02(pred);
    assert!(
        pred.get("buildConfig").is_none(),
        "min mode has no build definition"
    );
    assert_eq!(
        pred["invocation"]["parameters"]["args"],
        serde_json::json!({"force-network-mode": "none"})
    );
    assert!(!pred.to_string().contains("not-for-min"), "{pred}");
    assert!(
        pred["metadata"]["https://mobyproject.org/buildkit@v1#metadata"]
            .get("source")
            .is_none()
    );
    // --provenance=false: a plain manifest
    let (name, _) = push(&p, "plain", &["--provenance=false"]);
    let m = skopeo_raw(&name);
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    // the local store keeps the bare image
    p.build(&["-t", "local:1"]).ok();
    // two platforms: two images, two attestation manifests, each about its image
    let (name, _) = push(
        &p,
        "multi",
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "--provenance",
            "version=v1",
        ],
    );
    let index = skopeo_raw(&name);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 4, "{index}");
    let atts = attestations("multi", &index);
    assert_eq!(atts.len(), 2);
    for (i, (entry, statements)) in atts.iter().enumerate() {
        let image = &entries[i];
        assert_eq!(
            entry["annotations"]["vnd.docker.reference.digest"],
            image["digest"]
        );
        let st = &statements[0];
        check_statement(st, image["digest"].as_str().unwrap());
        assert_eq!(st["predicateType"], "https://slsa.dev/provenance/v1");
        let bd = &st["predicate"]["buildDefinition"];
        assert!(bd["externalParameters"]["request"]["frontend"].is_string());
        assert!(bd["resolvedDependencies"].is_array());
        assert!(st["predicate"]["runDetails"]["metadata"]["startedOn"].is_string());
    }
}

#[test]
fn imagetools_create_merges_pushed_platforms_without_pulling_layers() {
    require_env();
    require_tools(&["skopeo", "curl"]);
    let p = Project::new("FROM scratch\nCOPY a.txt /a.txt\n");
    p.file("a.txt", "merge me\n");
    let mut sources = Vec::new();
    for arch in ["amd64", "arm64"] {
        let (name, meta) = push(
            &p,
            &format!("part-{arch}"),
            &["--platform", &format!("linux/{arch}")],
        );
        let _ = meta;
        sources.push(name);
    }
    let target = format!("{REGISTRY}/supply/merged:v1");
    // a fresh store: nothing of the sources is in it
    let store = tempfile::tempdir().unwrap();
    let mut args = vec!["imagetools", "create", "-t", target.as_str()];
    args.extend(sources.iter().map(String::as_str));
    let out = p
        .cmd(&args)
        .env("RBUILD_ROOT", store.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index = skopeo_raw(&target);
    let entries = index["manifests"].as_array().unwrap();
    // two images, each with its provenance attestation manifest
    assert_eq!(entries.len(), 4, "{index}");
    let archs: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["platform"]["architecture"].as_str())
        .collect();
    assert_eq!(archs, ["amd64", "unknown", "arm64", "unknown"]);
    // every manifest and blob is served by the target repository
    for e in entries {
        let d = e["digest"].as_str().unwrap();
        let m: Value =
            serde_json::from_slice(&registry_get(&format!("supply/merged/manifests/{d}"))).unwrap();
        for l in m["layers"].as_array().unwrap() {
            let ld = l["digest"].as_str().unwrap();
            registry_get(&format!("supply/merged/blobs/{ld}"));
            // …and was mounted, not pulled into the local store
            assert!(
                !store
                    .path()
                    .join("blobs-v1/sha256")
                    .join(ld.trim_start_matches("sha256:"))
                    .exists()
                    || l["mediaType"] == "application/vnd.in-toto+json",
                "layer {ld} was downloaded"
            );
        }
    }
    // skopeo reads the platform images of the merged index
    for arch in ["amd64", "arm64"] {
        let out = Command::new("skopeo")
            .args([
                "inspect",
                "--tls-verify=false",
                "--override-arch",
                arch,
                "--override-os",
                "linux",
            ])
            .arg(format!("docker://{target}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["Architecture"], arch);
    }
    // unknown --format fields are usage errors
    let out = p
        .cmd(&[
            "imagetools",
            "inspect",
            &target,
            "--format",
            "{{json .Nope}}",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_hostile_git_config_in_the_context_runs_nothing() {
    require_env();
    require_tools(&["git"]);
    let root = tempfile::tempdir().unwrap();
    let repo = root.path().join("repo");
    fs::create_dir(&repo).unwrap();
    fs::write(repo.join("Dockerfile"), "FROM scratch\nCOPY a.txt /a.txt\n").unwrap();
    fs::write(repo.join("a.txt"), "a\n").unwrap();
    git(&repo, &["init", "-q"], "@1700000000 +0000");
    git(&repo, &["add", "."], "@1700000000 +0000");
    git(&repo, &["commit", "-q", "-m", "one"], "@1700000000 +0000");
    // every configurable program git could run on our behalf writes a marker
    let marker = root.path().join("pwned");
    let script = root.path().join("evil.sh");
    fs::write(&script, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
    let status = Command::new("chmod")
        .arg("755")
        .arg(&script)
        .status()
        .unwrap();
    assert!(status.success());
    for (k, v) in [
        ("core.fsmonitor", script.to_str().unwrap()),
        ("core.pager", script.to_str().unwrap()),
        ("gpg.program", script.to_str().unwrap()),
        ("log.showSignature", "true"),
        ("core.hooksPath", root.path().to_str().unwrap()),
        ("diff.external", script.to_str().unwrap()),
    ] {
        git(&repo, &["config", k, v], "@1700000000 +0000");
    }
    let store = tempfile::tempdir().unwrap();
    let m = build_in(&repo, store.path(), &[]);
    assert_eq!(m["rbuild.source-date-epoch"]["source"], "git-commit");
    assert!(
        !marker.exists(),
        "a program from the repository's git config ran"
    );
}

#[test]
fn sbom_scan_stage_adds_a_document_for_the_build_stage() {
    require_env();
    require_tools(&["skopeo", "curl", "pyspdxtools"]);
    let p = Project::new(
        "FROM busybox AS builder\nARG BUILDKIT_SBOM_SCAN_STAGE=true\n\
         COPY meta/ /usr/lib/python3/dist-packages/buildtool-1.0.dist-info/\n\
         RUN echo built > /out\n\
         FROM scratch\nCOPY --from=builder /out /out\n",
    );
    p.file("meta/METADATA", "Name: buildtool\nVersion: 1.0\n");
    let (name, _) = push(&p, "stage", &["--sbom=true", "--provenance=false"]);
    let index = skopeo_raw(&name);
    let atts = attestations("stage", &index);
    let sboms: Vec<&Value> = atts[0]
        .1
        .iter()
        .filter(|s| s["predicateType"] == "https://spdx.dev/Document")
        .collect();
    assert_eq!(sboms.len(), 2, "the image and the builder stage");
    let image = serde_json::to_string(&sboms[0]["predicate"]).unwrap();
    assert!(
        !image.contains("buildtool"),
        "the final image has no build tool"
    );
    let stage = &sboms[1]["predicate"];
    assert_eq!(stage["name"], "stage builder");
    assert!(
        serde_json::to_string(stage)
            .unwrap()
            .contains("pkg:pypi/buildtool@1.0"),
        "{stage}"
    );
    for s in sboms {
        validate_spdx(&s["predicate"], p.path());
    }
    // --build-arg BUILDKIT_SBOM_SCAN_STAGE=false turns it off
    let (name, _) = push(
        &p,
        "stage-off",
        &[
            "--sbom=true",
            "--provenance=false",
            "--build-arg",
            "BUILDKIT_SBOM_SCAN_STAGE=false",
        ],
    );
    let atts = attestations("stage-off", &skopeo_raw(&name));
    assert_eq!(atts[0].1.len(), 1);
}
