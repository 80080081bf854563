//! The target platform (`os/arch[/variant]`): one type for the build graph (ops, image configs)
//! and for image indexes (descriptors), with one parser and one notion of the host.
//!
//! It lives in its own dependency-free crate because both `graph` (pure build data) and `oci`
//! (image formats) need it and neither may depend on the other. oci-spec's `Platform` was not
//! used: its enum-typed fields and extra members (`os.version`, `os.features`) would change
//! the graph's canonical JSON, so every definition digest, and it has no `Ord`/`Hash`.

use serde::{Deserialize, Serialize};

/// An OS/architecture pair with optional variant, serialized as in OCI image indexes and
/// configs (`os`, `architecture`, `variant` omitted when absent).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    /// e.g. "linux".
    pub os: String,
    /// Go-style architecture name, e.g. "amd64", "arm64".
    pub architecture: String,
    /// e.g. "v8" for arm64, "v7" for arm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of the machine rbuild runs on (linux/amd64, linux/arm64/v8, …), with the
    /// variant containerd's `platforms.DefaultSpec()` reports for the architecture.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Parse `os/arch[/variant]` (components trimmed; an empty variant is none). `None` when
    /// the text has fewer than two or more than three components or an empty os or arch.
    pub fn parse(s: &str) -> Option<Platform> {
        let mut parts = s.split('/');
        let os = parts.next()?.trim();
        let arch = parts.next()?.trim();
        let variant = parts.next().map(str::trim);
        if os.is_empty() || arch.is_empty() || parts.next().is_some() {
            return None;
        }
        Some(Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: variant.filter(|v| !v.is_empty()).map(str::to_string),
        })
    }

    /// `os/arch[/variant]`.
    pub fn to_text(&self) -> String {
        self.to_string()
    }

    /// Whether an index entry's platform satisfies this requested platform. A requested variant
    /// must match exactly, except that a requested arm64 "v8" also accepts an entry without a
    /// variant; with no variant requested, any variant is accepted.
    pub fn matches(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        match (&self.variant, &candidate.variant) {
            (Some(want), Some(have)) => want == have,
            (Some(want), None) => self.architecture == "arm64" && want == "v8",
            (None, _) => true,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_and_rejects_malformed() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.to_text(), "linux/arm64/v8");
        assert_eq!(
            Platform::parse(" linux / amd64 ").unwrap().to_text(),
            "linux/amd64"
        );
        assert_eq!(Platform::parse("linux/arm/").unwrap().variant, None);
        for bad in ["", "linux", "/amd64", "linux/", "a/b/c/d"] {
            assert_eq!(Platform::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn host_is_matched_by_itself_and_arm64_v8_accepts_no_variant() {
        let h = Platform::host();
        assert!(h.matches(&h));
        let want = Platform::parse("linux/arm64/v8").unwrap();
        assert!(want.matches(&Platform::parse("linux/arm64").unwrap()));
        assert!(!want.matches(&Platform::parse("linux/arm64/v9").unwrap()));
        assert!(!Platform::parse("linux/arm/v7")
            .unwrap()
            .matches(&Platform::parse("linux/arm").unwrap()));
    }
}
