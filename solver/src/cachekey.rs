//! Cache keys.
//!
//! Every node's definition digest (graph crate) covers the op and, transitively, the
//! *definitions* of its inputs. A cache key instead covers the op and the *results* its inputs
//! stand for, so that a local context that changes between runs only matters through the
//! paths an op actually reads. Keys are `sha256:` digests of a small text record:
//!
//! | op | what goes into the key | what never does |
//! |---|---|---|
//! | image source | manifest digest, platform | the tag text (two tags of one manifest share a key) |
//! | scratch | the constant `scratch` | — |
//! | local source | not keyed: read only through selectors of the ops that use it | session, mtimes |
//! | exec | canonical op JSON (args, env incl. ARG values, cwd, user, network, security, mounts, platform), each input's key; a second key (below) for inputs read only through bind/cache mounts | proxy env (`HTTP_PROXY` …), descriptions, Dockerfile lines |
//! | file | canonical op JSON (actions with full source paths, dest, owner, mode, flags), the dest input's key; for a local input, the content checksum of each selected path (bytes, mode, type, symlink target, xattrs, names matched by wildcards; never mtime, never owner); for another stage or image input, its key, and a second key (below) by the copied content | mtimes, unrelated context files, `.dockerignore`d files, files `COPY --exclude` leaves out (`ops::inputs::without_excluded`) |
//! | merge | each input's key, in order | — |
//! | http (`ADD <url>`) | pinned `--checksum` + file name, else the body's sha256 + file name + `Last-Modified` (see [`crate::ops::http`]) | the URL text |
//! | git (`ADD <git url>`) | the commit the ref resolves to + `keep_git_dir` | the remote URL, the ref name |
//!
//! **Second keys** (BuildKit's content-based "slow" cache keys, `ExecOp.CacheMap`'s
//! `ComputeDigestFunc`): a step that reads another step's result only as a copy source
//! (`COPY --from=stage P`) or through bind or cache mounts (`RUN --mount=type=bind,from=stage,
//! source=P`, `rw` too: a mount is never an output) is also keyed by the content of the
//! selections it reads, and every input key by its alias (that step's own second key)
//! ([`InputPart::Selected`]: [`rbuild_cache::context::checksum_tree`], owners included), so
//! a stage rebuilt with the same files under `P` keeps the step, and those after it, cached. Planning runs and
//! downloads nothing, so that key cannot be known then: the step is planned by its first key
//! (the inputs' keys); on a miss, once its inputs are built, the second key is computed and
//! looked up before the step runs, and a run records both ([`crate::ops::inputs`]).
//!
//! A record (`rbuild-key-v2`, op kind, canonical JSON, then one `input N: …` line per input)
//! is hashed, so any change to the record format must bump the version prefix. Every text in
//! a record is encoded explicitly (strings as JSON strings, [`quote`]), never with Rust's
//! `{:?}`, whose output is not a stable format across toolchains.

use rbuild_graph::{canonical_json, sha256_digest, Op};

use crate::SolveError;

/// One input's contribution to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputPart {
    /// The input's own cache key.
    Key(String),
    /// Content checksums of what the op reads from a local directory, one per selector.
    Content(Vec<(String, String)>),
    /// Content checksums (owners included) of what the op reads from another step's result,
    /// one per selector: the second key of a step whose input changed
    /// ([`crate::ops::inputs`]'s content-keyed inputs).
    Selected(Vec<(String, String)>),
}

/// Compute a node key from its op and its inputs' parts.
pub fn node_key(op: &Op, inputs: &[InputPart]) -> Result<String, SolveError> {
    let json = canonical_json(op, "op")?;
    let mut rec = Vec::with_capacity(json.len() + 100 * (inputs.len() + 1));
    rec.extend_from_slice(b"rbuild-key-v2\n");
    rec.extend_from_slice(&json);
    for (i, part) in inputs.iter().enumerate() {
        match part {
            InputPart::Key(k) => rec.extend_from_slice(format!("\ninput {i}: key {k}").as_bytes()),
            InputPart::Content(sels) | InputPart::Selected(sels) => {
                let kind = match part {
                    InputPart::Selected(_) => "selected",
                    _ => "content",
                };
                rec.extend_from_slice(format!("\ninput {i}: {kind}").as_bytes());
                for (sel, digest) in sels {
                    rec.extend_from_slice(format!("\n  {} {digest}", quote(sel)).as_bytes());
                }
            }
        }
    }
    Ok(sha256_digest(&rec))
}

/// A string as it goes into a key record: a JSON string (RFC 8259 escaping, stable).
pub fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Key of an image source: the manifest digest and platform, not the tag.
pub fn image_key(manifest_digest: &str, platform: &rbuild_graph::Platform) -> String {
    sha256_digest(
        format!(
            "rbuild-key-v1\nimage {manifest_digest} {}",
            platform.to_text()
        )
        .as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbuild_graph::{ExecOp, Mount, MountKind, NetworkMode, SecurityMode};

    fn exec(env: &[&str], proxy: &[&str]) -> Op {
        exec_on(env, proxy, None)
    }

    fn exec_on(env: &[&str], proxy: &[&str], platform: Option<rbuild_graph::Platform>) -> Op {
        Op::Exec(ExecOp {
            args: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: env.iter().map(|s| s.to_string()).collect(),
            cwd: "/".into(),
            user: String::new(),
            network: NetworkMode::Default,
            security: SecurityMode::Sandbox,
            mounts: vec![Mount {
                target: "/".into(),
                input: Some(0),
                kind: MountKind::Bind {
                    source: "/".into(),
                    readonly: false,
                },
            }],
            proxy_env: proxy.iter().map(|s| s.to_string()).collect(),
            run_options: Default::default(),
            platform,
            hostname: String::new(),
        })
    }

    #[test]
    fn the_record_encoding_is_pinned() {
        // A golden digest: a change here changes every cache key (bump the record version).
        let op = exec(&["A=1"], &[]);
        let parts = [
            InputPart::Key("sha256:k".into()),
            InputPart::Content(vec![("/a \"b\"\n\u{e9}".into(), "sha256:d".into())]),
        ];
        assert_eq!(quote("/a \"b\"\n\u{e9}"), "\"/a \\\"b\\\"\\n\u{e9}\"");
        assert_eq!(
            node_key(&op, &parts).unwrap(),
            "sha256:8ea0d18b1f9a3ce42e603605b2deab2c33e3fd4a8ac4dd80f6b4ae93aa63e25a"
        );
    }

    #[test]
    fn proxy_env_never_changes_the_key_but_env_does() {
        let base = [InputPart::Key("k".into())];
        let a = node_key(&exec(&["A=1"], &["HTTP_PROXY=x"]), &base).unwrap();
        let b = node_key(&exec(&["A=1"], &["HTTP_PROXY=y"]), &base).unwrap();
        let c = node_key(&exec(&["A=2"], &["HTTP_PROXY=x"]), &base).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_platform_of_an_exec_changes_its_key() {
        // A RUN on scratch has the same input (scratch) for every platform: only the op's
        // platform keeps linux/amd64 and linux/arm64 apart (BuildKit keys Op.platform).
        let amd = rbuild_graph::Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        let mut arm = amd.clone();
        arm.architecture = "arm64".into();
        let scratch = [InputPart::Key("scratch".into())];
        let a = node_key(&exec_on(&[], &[], Some(amd.clone())), &scratch).unwrap();
        let b = node_key(&exec_on(&[], &[], Some(arm)), &scratch).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            a,
            node_key(&exec_on(&[], &[], Some(amd)), &scratch).unwrap()
        );
    }

    #[test]
    fn input_key_and_content_change_the_key() {
        let op = exec(&[], &[]);
        let a = node_key(&op, &[InputPart::Key("k1".into())]).unwrap();
        let b = node_key(&op, &[InputPart::Key("k2".into())]).unwrap();
        assert_ne!(a, b);
        let c1 = node_key(&op, &[InputPart::Content(vec![("/a".into(), "d1".into())])]).unwrap();
        let c2 = node_key(&op, &[InputPart::Content(vec![("/a".into(), "d2".into())])]).unwrap();
        assert_ne!(c1, c2);
    }

    #[test]
    fn a_selection_of_a_stage_never_keys_like_one_of_the_context() {
        let op = exec(&[], &[]);
        let sels = vec![("/p".to_string(), "sha256:d".to_string())];
        let c = node_key(&op, &[InputPart::Content(sels.clone())]).unwrap();
        let s = node_key(&op, &[InputPart::Selected(sels)]).unwrap();
        assert_ne!(c, s);
    }

    #[test]
    fn image_key_ignores_tag_text_but_not_platform() {
        let p = rbuild_graph::Platform::host();
        let mut q = p.clone();
        q.architecture = "riscv64".into();
        assert_eq!(image_key("sha256:aa", &p), image_key("sha256:aa", &p));
        assert_ne!(image_key("sha256:aa", &p), image_key("sha256:aa", &q));
        assert_ne!(image_key("sha256:aa", &p), image_key("sha256:bb", &p));
    }
}
