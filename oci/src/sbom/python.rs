//! Python distributions: `*.dist-info/METADATA` and `*.egg-info/PKG-INFO` (email-header style
//! `Name:`, `Version:`, `License:`); `pkg:pypi/<normalized name>@<version>`.

use super::{purl_escape, Package};

/// The distribution a metadata file describes (at most one).
pub(super) fn parse(text: &str, location: &str) -> Vec<Package> {
    // headers end at the first blank line (the description follows)
    let headers = text.split("\n\n").next().unwrap_or("");
    let field = |k: &str| {
        headers
            .lines()
            .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix(':')))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let (Some(name), Some(version)) = (field("Name"), field("Version")) else {
        return Vec::new();
    };
    // PEP 503 normalisation, as purls for PyPI want it
    let norm: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c == '_' || c == '.' { '-' } else { c })
        .collect();
    let license = field("License-Expression")
        .or_else(|| field("License"))
        .filter(|l| l != "UNKNOWN");
    vec![Package {
        ecosystem: "pypi",
        purl: format!("pkg:pypi/{}@{}", purl_escape(&norm), purl_escape(&version)),
        name,
        version,
        license,
        location: location.to_string(),
        source_info: "acquired package info from installed python package manifest file".into(),
    }]
}
