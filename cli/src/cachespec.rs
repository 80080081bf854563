//! `--cache-from` / `--cache-to` values (buildx syntax) as typed [`CacheSpec`]s, parsed once
//! when the command line is read (clap `value_parser`s), so every mistake is a usage error
//! (exit 2) naming the flag and the attribute.
//!
//! | form | flag | meaning |
//! |---|---|---|
//! | `REF` | both | `type=registry,ref=REF` |
//! | `type=registry,ref=REF[,mode=min\|max][,compression=…][,compression-level=N][,force-compression=B][,oci-mediatypes=B][,image-manifest=B][,ignore-error=B][,cache-mounts=B]` | `--cache-to` | an OCI image manifest pushed as `REF` (default tag `latest`) |
//! | `type=registry,ref=REF` | `--cache-from` | that cache, or the inline cache of the image `REF` |
//! | `type=local,dest=DIR[,tag=T][,mode=…][,compression…][,ignore-error=B][,cache-mounts=B]` | `--cache-to` | an OCI image layout directory |
//! | `type=local,src=DIR[,tag=T]` | `--cache-from` | the same, read |
//! | `type=inline[,mode=min]` | `--cache-to` | the cache metadata in the pushed image's manifest |
//! | `type=gha\|s3\|azblob` | both | refused: no such service here; `type=registry` / `type=local` do the job |
//!
//! Defaults as buildx: `mode=min`, `compression=gzip`, `oci-mediatypes=true`,
//! `ignore-error=false`; `cache-mounts=false` (rbuild only). The format is docs/cache.md.

use std::path::PathBuf;

use rbuild_oci::{Compression, Reference};

use crate::flags::{kv_spec, parse_bool};

/// Which steps a cache export holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// The steps of the exported image (buildx's default).
    Min,
    /// Every step of every stage built, intermediate stages included.
    Max,
}

/// Where a cache lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheKind {
    /// A registry tag (`ref=`; tag `latest` when none is given). For `--cache-from` it may also
    /// name an image pushed with `--cache-to type=inline`.
    Registry(Reference),
    /// An OCI image layout directory (`dest=` for `--cache-to`, `src=` for `--cache-from`);
    /// `tag` is the `org.opencontainers.image.ref.name` of its `index.json` entry.
    Local { dir: PathBuf, tag: String },
    /// `--cache-to type=inline`: the metadata rides in the pushed image's manifest.
    Inline,
}

/// How an export is written (for `--cache-from` specs: the defaults, unused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheExportSettings {
    pub mode: CacheMode,
    /// Compression of layers the store keeps uncompressed (rbuild's own layers); base-image
    /// layers keep their pulled blob unless `force_compression`.
    pub compression: Compression,
    /// `compression-level=N` (None: the algorithm's default).
    pub level: Option<i32>,
    pub force_compression: bool,
    /// OCI media types (true) or Docker's (false) for the manifest and layers.
    pub oci_media_types: bool,
    /// An export failure is a warning, not an error (exit 0).
    pub ignore_error: bool,
    /// Export the contents of `RUN --mount=type=cache` directories too (rbuild only).
    pub cache_mounts: bool,
}

impl Default for CacheExportSettings {
    fn default() -> Self {
        CacheExportSettings {
            mode: CacheMode::Min,
            compression: Compression::Gzip,
            level: None,
            force_compression: false,
            oci_media_types: true,
            ignore_error: false,
            cache_mounts: false,
        }
    }
}

/// One `--cache-from` or `--cache-to` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSpec {
    pub kind: CacheKind,
    pub export: CacheExportSettings,
    /// The value as typed (for messages).
    pub text: String,
}

impl CacheSpec {
    /// What the cache is called in messages: the registry reference, the directory, or
    /// `inline`. Used in `WARNING: cache import from {this} failed: …`.
    #[allow(dead_code)] // build.rs calls it once the remote cache is wired in (issue 13)
    pub fn name(&self) -> String {
        match &self.kind {
            CacheKind::Registry(r) => r.to_string(),
            CacheKind::Local { dir, .. } => dir.display().to_string(),
            CacheKind::Inline => "inline".to_string(),
        }
    }
}

/// The warning line of a failed import (the build goes on without it).
#[allow(dead_code)] // build.rs calls it once the remote cache is wired in (issue 13)
pub fn import_warning(spec: &CacheSpec, error: &str) -> String {
    format!(
        "WARNING: cache import from {} failed: {error}; building without it",
        spec.name()
    )
}

/// buildx's warning when `--cache-to type=inline` has no image push to ride on (no error:
/// the build still succeeds, the inline cache is just not written anywhere).
#[allow(dead_code)] // build.rs calls it once the remote cache is wired in (issue 13)
pub fn inline_without_push_warning(to: &[CacheSpec], pushes: bool) -> Option<String> {
    (!pushes && to.iter().any(|s| s.kind == CacheKind::Inline)).then(|| {
        "WARNING: --cache-to type=inline: the image is not pushed (no --push or -o type=image,push=true), so the inline cache is not exported".to_string()
    })
}

/// Which flag a spec is parsed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flag {
    From,
    To,
}

/// Attributes of `--cache-to` that change how the cache is written; on `--cache-from` they are
/// refused with a pointer to `--cache-to`.
const EXPORT_ATTRS: &[&str] = &[
    "mode",
    "compression",
    "compression-level",
    "force-compression",
    "oci-mediatypes",
    "image-manifest",
    "ignore-error",
    "cache-mounts",
];

/// `--cache-from VALUE`.
pub fn parse_cache_from(s: &str) -> Result<CacheSpec, String> {
    parse(s, Flag::From)
}

/// `--cache-to VALUE`.
pub fn parse_cache_to(s: &str) -> Result<CacheSpec, String> {
    parse(s, Flag::To)
}

fn registry_ref(r: &str) -> Result<Reference, String> {
    if r.is_empty() {
        return Err(
            "ref= is empty (expected a registry reference such as ghcr.io/org/app:cache)".into(),
        );
    }
    Reference::parse(r).map_err(|e| format!("ref={r}: {e}"))
}

fn parse(s: &str, flag: Flag) -> Result<CacheSpec, String> {
    let text = s.to_string();
    if s.trim().is_empty() {
        return Err("empty value (expected REF or type=registry|local|inline,…)".into());
    }
    if !s.contains('=') {
        // buildx: a value without `=` is a registry reference.
        if s.contains(',') {
            return Err(format!(
                "{s:?}: give one reference per flag (repeat the flag for several caches)"
            ));
        }
        return Ok(CacheSpec {
            kind: CacheKind::Registry(registry_ref(s.trim())?),
            export: CacheExportSettings::default(),
            text,
        });
    }
    let mut m = kv_spec(s)?;
    let ty = m.remove("type").ok_or_else(|| {
        format!("missing type= in {s:?} (expected type=registry, type=local or type=inline)")
    })?;
    let this = match flag {
        Flag::From => "--cache-from",
        Flag::To => "--cache-to",
    };
    let kind = match (ty.as_str(), flag) {
        ("registry", _) => {
            let r = m
                .remove("ref")
                .ok_or("type=registry needs ref=REF (e.g. type=registry,ref=ghcr.io/org/app:cache)")?;
            CacheKind::Registry(registry_ref(&r)?)
        }
        ("local", Flag::To) => {
            if m.contains_key("src") {
                return Err("attribute src= is for --cache-from; --cache-to type=local writes to dest=DIR".into());
            }
            local(&mut m, "dest")?
        }
        ("local", Flag::From) => {
            if m.contains_key("dest") {
                return Err("attribute dest= is for --cache-to; --cache-from type=local reads src=DIR".into());
            }
            local(&mut m, "src")?
        }
        ("inline", Flag::To) => {
            if let Some(mode) = m.remove("mode") {
                if mode != "min" {
                    return Err(format!(
                        "type=inline holds mode=min only, got mode={mode} (use type=registry,ref=REF,mode=max or type=local,dest=DIR,mode=max)"
                    ));
                }
            }
            if let Some(k) = m.keys().next() {
                return Err(format!(
                    "unknown attribute {k:?} for type=inline (it takes none: the cache rides in the pushed image)"
                ));
            }
            CacheKind::Inline
        }
        ("inline", Flag::From) => {
            return Err("type=inline is for --cache-to; to read an image's inline cache give its reference: --cache-from REF".into())
        }
        ("gha" | "s3" | "azblob", _) => {
            return Err(format!(
                "type={ty} is not supported: rbuild has no client for that service; use type=registry,ref=REF (any OCI registry: GHCR, ECR, ACR, Harbor, …) or type=local (a directory your CI caches between jobs; see docs/cache.md)"
            ))
        }
        (other, _) => {
            return Err(format!(
                "unknown cache type {other:?} (expected registry, local or inline)"
            ))
        }
    };
    let export = match flag {
        Flag::To => export_settings(&mut m)?,
        Flag::From => {
            if let Some(k) = m.keys().find(|k| EXPORT_ATTRS.contains(&k.as_str())) {
                return Err(format!(
                    "attribute {k}= is for --cache-to (an import reads whatever the export wrote)"
                ));
            }
            CacheExportSettings::default()
        }
    };
    if m.contains_key("registry.insecure") {
        return Err("attribute registry.insecure= is not taken: plain-HTTP registries are allowed for localhost and for the hosts in RBUILD_INSECURE_REGISTRIES or ~/.config/rbuild/config.toml (README)".into());
    }
    if let Some(k) = m.keys().next() {
        let mut allowed: Vec<&str> = match &kind {
            CacheKind::Registry(_) => vec!["type", "ref"],
            CacheKind::Local { .. } if flag == Flag::From => vec!["type", "src", "tag"],
            _ => vec!["type", "dest", "tag"],
        };
        if flag == Flag::To {
            allowed.extend_from_slice(EXPORT_ATTRS);
        }
        return Err(format!(
            "unknown attribute {k:?} for {this} type={ty} (expected {})",
            allowed.join(", ")
        ));
    }
    Ok(CacheSpec { kind, export, text })
}

/// `type=local`'s directory (`key` = `src` or `dest`) and `tag`.
fn local(
    m: &mut std::collections::BTreeMap<String, String>,
    key: &str,
) -> Result<CacheKind, String> {
    let dir = m
        .remove(key)
        .ok_or_else(|| format!("type=local needs {key}=DIR"))?;
    if dir.is_empty() {
        return Err(format!("{key}= is empty (expected a directory)"));
    }
    let tag = m.remove("tag").unwrap_or_else(|| "latest".to_string());
    // The tag grammar of image references (one implementation: the reference parser).
    let valid = Reference::parse(&format!("localhost/cache:{tag}"))
        .ok()
        .and_then(|r| r.tag)
        .is_some_and(|t| t == tag);
    if !valid {
        return Err(format!(
            "tag={tag:?} is not a valid tag ([A-Za-z0-9_][A-Za-z0-9_.-]*, at most 128 characters)"
        ));
    }
    Ok(CacheKind::Local {
        dir: PathBuf::from(dir),
        tag,
    })
}

fn bool_attr(
    m: &mut std::collections::BTreeMap<String, String>,
    k: &str,
    default: bool,
) -> Result<bool, String> {
    match m.remove(k) {
        None => Ok(default),
        Some(v) => parse_bool(&v).ok_or_else(|| format!("{k}={v:?} is not true or false")),
    }
}

/// The export attributes of `--cache-to` (removed from `m`).
fn export_settings(
    m: &mut std::collections::BTreeMap<String, String>,
) -> Result<CacheExportSettings, String> {
    let mut e = CacheExportSettings::default();
    if let Some(v) = m.remove("mode") {
        e.mode = match v.as_str() {
            "min" => CacheMode::Min,
            "max" => CacheMode::Max,
            _ => return Err(format!("mode={v:?}: expected min or max")),
        };
    }
    if let Some(v) = m.remove("compression") {
        e.compression = Compression::parse(&v).map_err(|e| format!("compression={v}: {e}"))?;
    }
    if let Some(v) = m.remove("compression-level") {
        let n: i32 = v
            .parse()
            .map_err(|_| format!("compression-level={v:?} is not a number"))?;
        let range = match e.compression {
            Compression::Gzip => 0..=9,
            Compression::Zstd => 0..=22,
            Compression::Uncompressed => i32::MIN..=i32::MAX,
        };
        if !range.contains(&n) {
            return Err(format!(
                "compression-level={n} is out of range for {} ({}..={})",
                e.compression.name(),
                range.start(),
                range.end()
            ));
        }
        e.level = Some(n);
    }
    e.force_compression = bool_attr(m, "force-compression", false)?;
    e.oci_media_types = bool_attr(m, "oci-mediatypes", true)?;
    // rbuild always writes an image manifest (BuildKit's image-manifest=true form); the value
    // is checked and accepted either way (docs/cache.md).
    bool_attr(m, "image-manifest", true)?;
    e.ignore_error = bool_attr(m, "ignore-error", false)?;
    e.cache_mounts = bool_attr(m, "cache-mounts", false)?;
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn a_bare_value_is_a_registry_reference() {
        for f in [parse_cache_from, parse_cache_to] {
            let s = f("ghcr.io/org/app:cache").unwrap();
            assert_eq!(s.kind, CacheKind::Registry(reg("ghcr.io/org/app:cache")));
            assert_eq!(s.export, CacheExportSettings::default());
            assert_eq!(s.text, "ghcr.io/org/app:cache");
        }
        // normalised as every image reference: default tag latest
        let s = parse_cache_from("127.0.0.1:5055/c").unwrap();
        assert_eq!(s.name(), "127.0.0.1:5055/c:latest");
        assert!(parse_cache_from("a,b")
            .unwrap_err()
            .contains("one reference per flag"));
        assert!(parse_cache_from("UPPER/case").is_err());
        assert!(parse_cache_from("").is_err());
    }

    #[test]
    fn registry_export_attributes() {
        let s = parse_cache_to(
            "type=registry,ref=r.example/a:c,mode=max,compression=zstd,compression-level=19,force-compression=true,oci-mediatypes=false,image-manifest=true,ignore-error=true,cache-mounts=true",
        )
        .unwrap();
        assert_eq!(s.kind, CacheKind::Registry(reg("r.example/a:c")));
        assert_eq!(
            s.export,
            CacheExportSettings {
                mode: CacheMode::Max,
                compression: Compression::Zstd,
                level: Some(19),
                force_compression: true,
                oci_media_types: false,
                ignore_error: true,
                cache_mounts: true,
            }
        );
        let d = parse_cache_to("type=registry,ref=r.example/a").unwrap();
        assert_eq!(d.export, CacheExportSettings::default());
        assert_eq!(d.export.mode, CacheMode::Min);
        assert_eq!(d.export.compression, Compression::Gzip);
        // Go's strconv.ParseBool forms, keys case-insensitive as buildx
        let s =
            parse_cache_to("Type=registry,REF=r.example/a,Ignore-Error=1,cache-mounts=T").unwrap();
        assert!(s.export.ignore_error && s.export.cache_mounts);
        // the level follows the algorithm wherever it is written
        assert!(
            parse_cache_to("type=registry,ref=r/a,compression-level=12,compression=zstd").is_ok()
        );
        let e = parse_cache_to("type=registry,ref=r/a,compression-level=12").unwrap_err();
        assert!(
            e.contains("compression-level=12") && e.contains("gzip"),
            "{e}"
        );
    }

    #[test]
    fn local_directories_and_tags() {
        let s = parse_cache_to("type=local,dest=/ci/cache,mode=max,tag=v1").unwrap();
        assert_eq!(
            s.kind,
            CacheKind::Local {
                dir: "/ci/cache".into(),
                tag: "v1".into()
            }
        );
        assert_eq!(s.export.mode, CacheMode::Max);
        let s = parse_cache_from("type=local,src=.rbuild-cache").unwrap();
        assert_eq!(
            s.kind,
            CacheKind::Local {
                dir: ".rbuild-cache".into(),
                tag: "latest".into()
            }
        );
        // CSV quoting lets a path hold a comma
        let s = parse_cache_to("type=local,\"dest=/a,b\"").unwrap();
        assert_eq!(s.name(), "/a,b");
        for (f, v, want) in [
            (parse_cache_to as fn(&str) -> _, "type=local", "dest=DIR"),
            (parse_cache_to, "type=local,dest=", "empty"),
            (
                parse_cache_to,
                "type=local,src=/c",
                "src= is for --cache-from",
            ),
            (
                parse_cache_from,
                "type=local,dest=/c",
                "dest= is for --cache-to",
            ),
            (parse_cache_from, "type=local", "src=DIR"),
            (
                parse_cache_to,
                "type=local,dest=/c,tag=../x",
                "not a valid tag",
            ),
            (parse_cache_to, "type=local,dest=/c,tag=", "not a valid tag"),
            (
                parse_cache_from,
                "type=local,src=/c,digest=sha256:00",
                "\"digest\"",
            ),
        ] {
            let e = f(v).unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
    }

    #[test]
    fn inline_is_for_cache_to_and_min_only() {
        assert_eq!(
            parse_cache_to("type=inline").unwrap().kind,
            CacheKind::Inline
        );
        assert_eq!(
            parse_cache_to("type=inline,mode=min").unwrap().kind,
            CacheKind::Inline
        );
        assert!(parse_cache_to("type=inline,mode=max")
            .unwrap_err()
            .contains("mode=min only"));
        assert!(parse_cache_to("type=inline,ref=r/a")
            .unwrap_err()
            .contains("\"ref\""));
        assert!(parse_cache_from("type=inline")
            .unwrap_err()
            .contains("--cache-from REF"));
        let to = [parse_cache_to("type=inline").unwrap()];
        assert!(inline_without_push_warning(&to, false)
            .unwrap()
            .contains("not pushed"));
        assert_eq!(inline_without_push_warning(&to, true), None);
        assert_eq!(
            inline_without_push_warning(&[parse_cache_to("r.example/a").unwrap()], false),
            None
        );
    }

    #[test]
    fn cloud_services_point_to_registry_and_local() {
        for t in ["gha", "s3", "azblob"] {
            for f in [parse_cache_from, parse_cache_to] {
                let e = f(&format!("type={t},url=x,token=y")).unwrap_err();
                assert!(
                    e.contains(&format!("type={t}"))
                        && e.contains("type=registry")
                        && e.contains("type=local"),
                    "{e}"
                );
                // the refusal never echoes other attributes (a token is a secret)
                assert!(!e.contains("token=y"), "{e}");
            }
        }
    }

    #[test]
    fn bad_attributes_are_named() {
        for (f, v, want) in [
            (
                parse_cache_to as fn(&str) -> _,
                "type=floppy",
                "unknown cache type \"floppy\"",
            ),
            (parse_cache_to, "mode=max", "missing type="),
            (parse_cache_to, "type=registry", "ref=REF"),
            (parse_cache_to, "type=registry,ref=", "empty"),
            (
                parse_cache_to,
                "type=registry,ref=r/a,mode=all",
                "mode=\"all\"",
            ),
            (
                parse_cache_to,
                "type=registry,ref=r/a,compression=lz4",
                "compression=lz4",
            ),
            (
                parse_cache_to,
                "type=registry,ref=r/a,compression-level=x",
                "compression-level",
            ),
            (
                parse_cache_to,
                "type=registry,ref=r/a,ignore-error=maybe",
                "ignore-error",
            ),
            (
                parse_cache_to,
                "type=registry,ref=r/a,oci-mediatypes=yes",
                "oci-mediatypes",
            ),
            (
                parse_cache_to,
                "type=registry,ref=r/a,image-manifest=2",
                "image-manifest",
            ),
            (
                parse_cache_to,
                "type=registry,ref=r/a,colour=blue",
                "unknown attribute \"colour\" for --cache-to type=registry",
            ),
            (
                parse_cache_to,
                "type=registry,ref=r/a,novalue",
                "expected key=value",
            ),
            (
                parse_cache_to,
                "type=registry,\"ref=r/a",
                "unterminated quote",
            ),
            (
                parse_cache_from,
                "type=registry,ref=r/a,mode=max",
                "mode= is for --cache-to",
            ),
            (
                parse_cache_from,
                "type=registry,ref=r/a,cache-mounts=true",
                "cache-mounts= is for --cache-to",
            ),
            (
                parse_cache_from,
                "type=registry,ref=r/a,colour=blue",
                "unknown attribute \"colour\" for --cache-from type=registry",
            ),
            (parse_cache_to, "type=registry,ref=r/a b", "whitespace"),
            (
                parse_cache_to,
                "type=registry,ref=r/a,registry.insecure=true",
                "RBUILD_INSECURE_REGISTRIES",
            ),
        ] {
            let e = f(v).unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
    }
}
