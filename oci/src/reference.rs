//! Image references with Docker normalisation: `busybox` → `docker.io/library/busybox:latest`,
//! `host:port/repo[:tag][@sha256:…]`, `localhost/x`. Validation follows the distribution
//! reference grammar (lowercase path components, tag ≤ 128 chars, sha256 digests).

use std::fmt;

use crate::OciError;

/// Default registry for names without a domain.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// Registry host (with port), e.g. "docker.io", "127.0.0.1:5055".
    pub registry: String,
    /// Repository path, e.g. "library/busybox".
    pub repository: String,
    /// Tag; "latest" when neither tag nor digest was given.
    pub tag: Option<String>,
    /// Digest `sha256:<hex>` when given.
    pub digest: Option<String>,
}

fn bad(input: &str, reason: impl Into<String>) -> OciError {
    OciError::InvalidReference {
        input: input.to_string(),
        reason: reason.into(),
    }
}

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum_lower(b[0]) || !is_alnum_lower(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum_lower(b[i]) {
            i += 1;
            continue;
        }
        // a separator run
        let start = i;
        while i < b.len() && !is_alnum_lower(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        // IPv6 literal
        let Some(end) = rest.find(']') else {
            return false;
        };
        let inner = &rest[..end];
        if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        let after = &rest[end + 1..];
        match after.strip_prefix(':') {
            Some(p) => return !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()),
            None => return after.is_empty(),
        }
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        })
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|x| x.is_ascii_alphanumeric() || *x == b'_' || *x == b'.' || *x == b'-')
}

impl Reference {
    /// Parse and normalise an image reference.
    pub fn parse(s: &str) -> Result<Reference, OciError> {
        if s.is_empty() {
            return Err(bad(s, "empty reference"));
        }
        if s.trim() != s || s.chars().any(|c| c.is_whitespace()) {
            return Err(bad(s, "contains whitespace"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                crate::digest::digest_hex(d).map_err(|_| {
                    bad(
                        s,
                        format!("invalid digest {d:?} (want sha256:<64 hex digits>)"),
                    )
                })?;
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        // The tag is after the last ':' that follows the last '/'.
        let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                let t = &name_tag[at + 1..];
                if !valid_tag(t) {
                    return Err(bad(
                        s,
                        format!("invalid tag {t:?} (want [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})"),
                    ));
                }
                (&name_tag[..at], Some(t.to_string()))
            }
            None => (name_tag, None),
        };
        if name.is_empty() {
            return Err(bad(s, "empty repository name"));
        }
        let (registry, remainder) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.starts_with('[') =>
            {
                if !valid_domain(first) {
                    return Err(bad(s, format!("invalid registry host {first:?}")));
                }
                (first.to_string(), rest.to_string())
            }
            Some((first, _)) if first.bytes().any(|b| b.is_ascii_uppercase()) => {
                return Err(bad(s, "repository name must be lowercase"));
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !remainder.contains('/') {
            format!("library/{remainder}")
        } else {
            remainder
        };
        for comp in repository.split('/') {
            if comp.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(bad(s, "repository name must be lowercase"));
            }
            if !valid_path_component(comp) {
                return Err(bad(
                    s,
                    format!("invalid repository path component {comp:?} (want lowercase letters, digits and single separators . _ __ -)"),
                ));
            }
        }
        if registry.len() + 1 + repository.len() > 255 {
            return Err(bad(s, "repository name longer than 255 characters"));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The tag or digest used to fetch the manifest (digest preferred).
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// Short form as Docker prints it: `busybox:latest`, `me/app:v1`, `127.0.0.1:5055/x:latest`.
    pub fn familiar(&self) -> String {
        let mut name = if self.registry == DOCKER_HUB {
            match self.repository.strip_prefix("library/") {
                Some(rest) if !rest.contains('/') => rest.to_string(),
                _ => self.repository.clone(),
            }
        } else {
            self.name()
        };
        if let Some(t) = &self.tag {
            name.push(':');
            name.push_str(t);
        }
        if let Some(d) = &self.digest {
            name.push('@');
            name.push_str(d);
        }
        name
    }

    /// The same reference with a different tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = OciError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}
