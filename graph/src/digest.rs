//! Canonical encoding and digests.
//!
//! Canonical JSON = serde_json with object keys sorted (serde_json's `Map` is a `BTreeMap`
//! because the workspace never enables `preserve_order`), no insignificant whitespace.
//! Digests are `sha256:<hex>` over those bytes.

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::GraphError;

/// Canonical JSON bytes of a value (sorted keys, compact).
pub fn canonical_json<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, GraphError> {
    let v = serde_json::to_value(value).map_err(|source| GraphError::Encode { what, source })?;
    serde_json::to_vec(&v).map_err(|source| GraphError::Encode { what, source })
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn canonical_json_sorts_keys_whatever_the_insertion_order() {
        let mut a = HashMap::new();
        let mut b = HashMap::new();
        for k in ["zeta", "alpha", "mid", "beta"] {
            a.insert(k.to_string(), 1);
        }
        for k in ["beta", "mid", "alpha", "zeta"] {
            b.insert(k.to_string(), 1);
        }
        let ja = canonical_json(&a, "t").unwrap();
        assert_eq!(ja, canonical_json(&b, "t").unwrap());
        assert_eq!(
            String::from_utf8(ja).unwrap(),
            r#"{"alpha":1,"beta":1,"mid":1,"zeta":1}"#
        );
    }

    #[test]
    fn sha256_digest_matches_known_vector() {
        assert_eq!(
            sha256_digest(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
