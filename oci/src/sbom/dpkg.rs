//! dpkg's database: `/var/lib/dpkg/status` (and distroless `status.d/<name>` files): RFC 822
//! paragraphs; installed packages become `pkg:deb/<distro>/<name>@<version>?arch=<arch>`.

use super::{purl_escape, Package};

/// The installed packages of a status file.
pub(super) fn parse(text: &str, location: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let field = |k: &str| {
            para.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix(':')))
                .map(|v| v.trim().to_string())
        };
        let (Some(name), Some(version)) = (field("Package"), field("Version")) else {
            continue;
        };
        // status.d files have no Status; in the status file only installed packages count
        if field("Status").is_some_and(|s| !s.ends_with(" installed")) {
            continue;
        }
        let arch = field("Architecture").unwrap_or_default();
        let mut purl = format!(
            "pkg:deb/debian/{}@{}",
            purl_escape(&name),
            purl_escape(&version)
        );
        if !arch.is_empty() {
            purl.push_str(&format!("?arch={}", purl_escape(&arch)));
        }
        out.push(Package {
            ecosystem: "deb",
            name,
            version,
            purl,
            license: None,
            location: location.to_string(),
            source_info: "acquired package info from DPKG DB".into(),
        });
    }
    out
}
