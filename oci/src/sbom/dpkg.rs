//! dpkg's database: `/var/lib/dpkg/status` (and distroless `status.d/<name>` files): RFC 822
//! paragraphs; installed packages become
//! `pkg:deb/<distro>/<name>@<version>?arch=<arch>&upstream=<source>[@<source version>]` (the
//! `Source` field, as syft writes it).

use super::{purl_escape, with_qualifiers, Package};

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
        // `Source: name` or `Source: name (version)` when it differs from the binary's
        let upstream = field("Source")
            .map(|s| match s.split_once('(') {
                Some((n, v)) => format!("{}@{}", n.trim(), v.trim_end_matches(')').trim()),
                None => s,
            })
            .unwrap_or_default();
        let purl = with_qualifiers(
            &format!(
                "pkg:deb/debian/{}@{}",
                purl_escape(&name),
                purl_escape(&version)
            ),
            &[("arch", &arch), ("upstream", &upstream)],
        );
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
