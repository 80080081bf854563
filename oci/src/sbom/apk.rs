//! apk's database `/lib/apk/db/installed`: paragraphs of `X:value` lines (`P` name, `V`
//! version, `A` arch, `L` license); packages become `pkg:apk/alpine/<name>@<version>?arch=…`.

use super::{purl_escape, Package};

/// The packages of an installed database.
pub(super) fn parse(text: &str, location: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let field = |k: &str| {
            para.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix(':')))
                .map(|v| v.trim().to_string())
        };
        let (Some(name), Some(version)) = (field("P"), field("V")) else {
            continue;
        };
        let mut purl = format!(
            "pkg:apk/alpine/{}@{}",
            purl_escape(&name),
            purl_escape(&version)
        );
        if let Some(a) = field("A") {
            purl.push_str(&format!("?arch={}", purl_escape(&a)));
        }
        out.push(Package {
            ecosystem: "apk",
            name,
            version,
            purl,
            license: field("L"),
            location: location.to_string(),
            source_info: "acquired package info from APK DB".into(),
        });
    }
    out
}
