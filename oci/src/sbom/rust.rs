//! Rust executables built with cargo-auditable: the `.dep-v0` ELF section holds zlib-compressed
//! JSON (`{"packages":[{"name","version","source","kind",…}]}`); every package becomes
//! `pkg:cargo/<name>@<version>`. Decompression is bounded (zip bombs stop at the limit).

use std::io::Read;

use serde_json::Value;

use super::{purl_escape, Package};

/// The crates recorded in an executable (empty without a `.dep-v0` section).
pub(super) fn parse(d: &[u8], location: &str, limit: u64) -> Vec<Package> {
    let Some(section) = super::elf::section(d, ".dep-v0") else {
        return Vec::new();
    };
    let mut json = Vec::new();
    let mut z = flate2::read::ZlibDecoder::new(section).take(limit);
    if z.read_to_end(&mut json).is_err() {
        return Vec::new();
    }
    let Ok(v) = serde_json::from_slice::<Value>(&json) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in v
        .get("packages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(name), Some(version)) = (
            p.get("name").and_then(Value::as_str),
            p.get("version").and_then(Value::as_str),
        ) else {
            continue;
        };
        out.push(Package {
            ecosystem: "cargo",
            name: name.to_string(),
            version: version.to_string(),
            purl: format!("pkg:cargo/{}@{}", purl_escape(name), purl_escape(version)),
            license: None,
            location: location.to_string(),
            source_info: "acquired package info from cargo-auditable dependency data".into(),
        });
    }
    out
}
