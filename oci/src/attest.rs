//! Attestations in BuildKit's storage format, so existing readers (`docker buildx imagetools
//! inspect`, Docker Scout, policy engines) work unchanged:
//!
//! - each attestation is an in-toto statement (`https://in-toto.io/Statement/v0.1`) whose
//!   subjects are the image manifest (digest) under its names as purls
//!   (`pkg:docker/NAME@TAG?platform=linux%2Famd64`);
//! - the statements of one platform are the layers (`application/vnd.in-toto+json`, annotation
//!   `in-toto.io/predicate-type`) of one *attestation manifest* (an OCI image manifest whose
//!   config is a placeholder image config);
//! - the image becomes an OCI index: the image manifests first, then one attestation manifest
//!   per image, with platform `unknown/unknown` and the annotations
//!   `vnd.docker.reference.type=attestation-manifest` and
//!   `vnd.docker.reference.digest=<image manifest digest>`.
//!
//! When an output converts the image (compression, media types), [`retarget`] points the
//! attestation manifests and their statements' subjects at the converted manifests; the
//! statements themselves are never compressed.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::digest::digest_hex;
use crate::store::ContentStore;
use crate::types::{canonical_json, media_types as mt, parse_json, Descriptor, Manifest, Platform};
use crate::OciError;

/// Media type of an in-toto statement blob.
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
/// Layer annotation naming the statement's predicate type.
pub const PREDICATE_TYPE_ANNOTATION: &str = "in-toto.io/predicate-type";
/// Index-entry annotation: what the entry is (`attestation-manifest`).
pub const REFERENCE_TYPE: &str = "vnd.docker.reference.type";
/// Index-entry annotation: the digest of the image manifest the attestations are about.
pub const REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";
/// The value of [`REFERENCE_TYPE`] for attestation manifests.
pub const ATTESTATION_MANIFEST: &str = "attestation-manifest";
/// The in-toto statement type BuildKit writes.
pub const STATEMENT_V01: &str = "https://in-toto.io/Statement/v0.1";
/// SPDX predicate type.
pub const PREDICATE_SPDX: &str = "https://spdx.dev/Document";
/// SLSA provenance v0.2 predicate type.
pub const PREDICATE_SLSA02: &str = "https://slsa.dev/provenance/v0.2";
/// SLSA provenance v1 predicate type.
pub const PREDICATE_SLSA1: &str = "https://slsa.dev/provenance/v1";

/// One attestation about an image: its predicate type and predicate.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub predicate_type: String,
    pub predicate: Value,
}

/// One platform's image with the attestations about it.
#[derive(Debug, Clone)]
pub struct Attested {
    /// The image manifest (with its `platform`).
    pub manifest: Descriptor,
    /// Subject names (purls); `_` is used when there is none (BuildKit's placeholder).
    pub names: Vec<String>,
    pub statements: Vec<Statement>,
}

/// Whether an index entry is an attestation manifest.
pub fn is_attestation(d: &Descriptor) -> bool {
    d.annotations.get(REFERENCE_TYPE).map(String::as_str) == Some(ATTESTATION_MANIFEST)
}

/// The purl BuildKit uses as a statement subject name: `pkg:docker/NAME@TAG?platform=…`
/// (`name` familiar, without tag; `/` in the platform percent-encoded).
pub fn docker_purl(name: &str, tag: &str, platform: Option<&Platform>) -> String {
    let mut s = format!("pkg:docker/{name}@{tag}");
    if let Some(p) = platform {
        let mut text = format!("{}/{}", p.os, p.architecture);
        if let Some(v) = &p.variant {
            text.push('/');
            text.push_str(v);
        }
        s.push_str("?platform=");
        s.push_str(&text.replace('/', "%2F"));
    }
    s
}

/// The statement bytes about `manifest` (canonical JSON).
pub fn statement_json(
    names: &[String],
    manifest_digest: &str,
    st: &Statement,
) -> Result<Vec<u8>, OciError> {
    let hex = digest_hex(manifest_digest)?;
    let names: Vec<String> = if names.is_empty() {
        vec!["_".to_string()]
    } else {
        names.to_vec()
    };
    let subject: Vec<Value> = names
        .iter()
        .map(|n| json!({"name": n, "digest": {"sha256": hex}}))
        .collect();
    let v = json!({
        "_type": STATEMENT_V01,
        "predicateType": st.predicate_type,
        "subject": subject,
        "predicate": st.predicate,
    });
    canonical_json("in-toto statement", &v)
}

/// Store the attestation manifest over statement blobs `layers` about `image_digest`; returns
/// its index entry (platform `unknown/unknown`, the two reference annotations).
fn put_attestation_manifest(
    store: &dyn ContentStore,
    image_digest: &str,
    layers: Vec<Descriptor>,
) -> Result<Descriptor, OciError> {
    // A valid image config for compatibility; readers ignore it (BuildKit's shape).
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    let config = json!({
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = canonical_json("attestation config", &config)?;
    let (cd, cs) = store.put_blob(&config)?;
    let m = Manifest {
        schema_version: 2,
        media_type: Some(mt::OCI_MANIFEST.into()),
        config: Descriptor::new(mt::OCI_CONFIG, cd, cs),
        layers,
        annotations: BTreeMap::new(),
    };
    let bytes = canonical_json("attestation manifest", &m)?;
    let (md, ms) = store.put_blob(&bytes)?;
    let mut d = Descriptor::new(mt::OCI_MANIFEST, md, ms);
    d.platform = Some(Platform {
        os: "unknown".into(),
        architecture: "unknown".into(),
        variant: None,
    });
    d.annotations
        .insert(REFERENCE_TYPE.into(), ATTESTATION_MANIFEST.into());
    d.annotations
        .insert(REFERENCE_DIGEST.into(), image_digest.to_string());
    Ok(d)
}

/// Store the statements of `a` and its attestation manifest; returns the index entry.
pub fn attestation_entry(store: &dyn ContentStore, a: &Attested) -> Result<Descriptor, OciError> {
    let mut layers = Vec::with_capacity(a.statements.len());
    for st in &a.statements {
        let bytes = statement_json(&a.names, &a.manifest.digest, st)?;
        let (d, s) = store.put_blob(&bytes)?;
        let mut l = Descriptor::new(IN_TOTO, d, s);
        l.annotations
            .insert(PREDICATE_TYPE_ANNOTATION.into(), st.predicate_type.clone());
        layers.push(l);
    }
    put_attestation_manifest(store, &a.manifest.digest, layers)
}

/// An OCI index over the images of `attested` (in order) followed by their attestation
/// manifests (images without statements get none).
pub fn attach(
    store: &dyn ContentStore,
    attested: &[Attested],
    annotations: &BTreeMap<String, String>,
) -> Result<Descriptor, OciError> {
    let mut entries: Vec<Descriptor> = attested.iter().map(|a| a.manifest.clone()).collect();
    for a in attested.iter().filter(|a| !a.statements.is_empty()) {
        entries.push(attestation_entry(store, a)?);
    }
    crate::index::put_index(store, &entries, annotations)
}

/// Point the attestation manifest `att` at converted image manifests (`moved`: old digest →
/// new digest): the `vnd.docker.reference.digest` annotation and every statement's subject
/// digests. Statements are rewritten (never compressed); the result is a new entry, or `att`
/// itself when its image did not move.
pub fn retarget(
    store: &dyn ContentStore,
    att: &Descriptor,
    moved: &BTreeMap<String, String>,
) -> Result<Descriptor, OciError> {
    let Some(new) = att
        .annotations
        .get(REFERENCE_DIGEST)
        .and_then(|old| moved.get(old))
    else {
        return Ok(att.clone());
    };
    let new_hex = digest_hex(new)?.to_string();
    let m: Manifest = parse_json(
        &format!("attestation manifest {}", att.digest),
        &store.read_blob(&att.digest)?,
    )?;
    let mut layers = Vec::with_capacity(m.layers.len());
    for l in &m.layers {
        if l.media_type != IN_TOTO {
            layers.push(l.clone());
            continue;
        }
        let data = store.read_blob(&l.digest)?;
        crate::digest::verify(&format!("statement {}", l.digest), &data, &l.digest, None)?;
        let mut v: Value = parse_json(&format!("statement {}", l.digest), &data)?;
        if let Some(subjects) = v.get_mut("subject").and_then(Value::as_array_mut) {
            for s in subjects {
                s["digest"] = json!({"sha256": new_hex});
            }
        }
        let bytes = canonical_json("in-toto statement", &v)?;
        let (d, size) = store.put_blob(&bytes)?;
        let mut nl = Descriptor::new(IN_TOTO, d, size);
        nl.annotations = l.annotations.clone();
        layers.push(nl);
    }
    let mut d = put_attestation_manifest(store, new, layers)?;
    d.annotations.extend(
        att.annotations
            .iter()
            .filter(|(k, _)| k.as_str() != REFERENCE_DIGEST)
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    Ok(d)
}

/// The statements of an attestation manifest entry: `(predicate type, statement JSON)`.
pub fn read_statements(
    store: &dyn ContentStore,
    att: &Descriptor,
) -> Result<Vec<(String, Value)>, OciError> {
    let m: Manifest = parse_json(
        &format!("attestation manifest {}", att.digest),
        &store.read_blob(&att.digest)?,
    )?;
    let mut out = Vec::new();
    for l in m.layers.iter().filter(|l| l.media_type == IN_TOTO) {
        let data = store.read_blob(&l.digest)?;
        crate::digest::verify(&format!("statement {}", l.digest), &data, &l.digest, None)?;
        let v: Value = parse_json(&format!("statement {}", l.digest), &data)?;
        let pt = l
            .annotations
            .get(PREDICATE_TYPE_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        out.push((pt, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: Some("v7".into()),
        }
    }

    #[test]
    fn purls_are_buildkits() {
        assert_eq!(
            docker_purl("app", "v1", Some(&platform())),
            "pkg:docker/app@v1?platform=linux%2Farm%2Fv7"
        );
        assert_eq!(docker_purl("a/b", "latest", None), "pkg:docker/a/b@latest");
    }

    #[test]
    fn attach_then_retarget() {
        let t = tempfile::tempdir().unwrap();
        let store = rbuild_cache::Store::open(t.path()).unwrap();
        let (md, ms) = store.put_blob(b"{\"manifest\":1}").unwrap();
        let mut image = Descriptor::new(mt::OCI_MANIFEST, md.clone(), ms);
        image.platform = Some(platform());
        let a = Attested {
            manifest: image.clone(),
            names: vec![],
            statements: vec![Statement {
                predicate_type: PREDICATE_SLSA02.into(),
                predicate: json!({"builder": {"id": ""}}),
            }],
        };
        let idx = attach(&store, &[a], &BTreeMap::new()).unwrap();
        let index = crate::index::read_index(&store, &idx).unwrap();
        assert_eq!(index.manifests.len(), 2);
        assert_eq!(index.manifests[0], image);
        let att = &index.manifests[1];
        assert!(is_attestation(att));
        assert_eq!(att.annotations[REFERENCE_DIGEST], md);
        assert_eq!(att.platform.as_ref().unwrap().os, "unknown");
        let sts = read_statements(&store, att).unwrap();
        assert_eq!(sts[0].0, PREDICATE_SLSA02);
        assert_eq!(sts[0].1["subject"][0]["name"], "_");
        assert_eq!(sts[0].1["_type"], STATEMENT_V01);
        // the image converted to another digest: the attestation follows it
        let (nd, _) = store.put_blob(b"{\"manifest\":2}").unwrap();
        let moved = BTreeMap::from([(md.clone(), nd.clone())]);
        let r = retarget(&store, att, &moved).unwrap();
        assert_eq!(r.annotations[REFERENCE_DIGEST], nd);
        assert!(is_attestation(&r));
        let sts = read_statements(&store, &r).unwrap();
        assert_eq!(
            sts[0].1["subject"][0]["digest"]["sha256"],
            nd.trim_start_matches("sha256:")
        );
        // not moved: unchanged
        assert_eq!(retarget(&store, att, &BTreeMap::new()).unwrap(), *att);
    }
}
