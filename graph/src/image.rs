//! Image configuration data (OCI image config with Docker's extensions).
//!
//! Field names follow the JSON the Docker/OCI image spec uses. Maps are `BTreeMap`s so the
//! canonical encoding is deterministic. Docker extensions (`Healthcheck`, `OnBuild`, `Shell`,
//! `ArgsEscaped`) are kept.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::op::Platform;
use crate::GraphError;

/// Default PATH added when a Linux image has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The whole image config blob.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: ContainerConfig,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            kind: "layers".to_string(),
            diff_ids: Vec::new(),
        }
    }
}

/// One history entry. `empty_layer` marks metadata-only steps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// Empty JSON object, as used for `ExposedPorts` and `Volumes` values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// The `config` section: how to run a container from the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub user: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub exposed_ports: BTreeMap<String, Empty>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub volumes: BTreeMap<String, Empty>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub working_dir: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub stop_signal: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub args_escaped: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub on_build: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub shell: Vec<String>,
}

/// Docker's HEALTHCHECK config. Durations in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u64,
}

/// Docker writes `null` for empty lists and maps (`"Env": null`): read it as empty.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl ContainerConfig {
    /// Value of an env var in `Env`, if set.
    pub fn env_get(&self, key: &str) -> Option<&str> {
        self.env.iter().rev().find_map(|kv| {
            kv.split_once('=')
                .and_then(|(k, v)| (k == key).then_some(v))
        })
    }

    /// Set (replace or append) an env var, keeping the position of an existing one.
    pub fn env_set(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        if let Some(slot) = self
            .env
            .iter_mut()
            .find(|kv| kv.split_once('=').map(|(k, _)| k) == Some(key))
        {
            *slot = entry;
        } else {
            self.env.push(entry);
        }
    }
}

impl ImageConfig {
    /// An empty Linux config for `platform` (what `FROM scratch` starts from).
    pub fn scratch(platform: &Platform) -> Self {
        ImageConfig {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
            ..Default::default()
        }
    }

    /// Canonical JSON (sorted keys) — the bytes whose digest is the image's config digest.
    pub fn to_canonical_json(&self) -> Result<Vec<u8>, GraphError> {
        crate::digest::canonical_json(self, "image config")
    }

    /// Parse a config blob as pulled from a registry. Unknown fields are ignored.
    pub fn from_json(bytes: &[u8]) -> Result<Self, GraphError> {
        serde_json::from_slice(bytes).map_err(|source| GraphError::Encode {
            what: "image config",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_extensions_survive_a_round_trip() {
        let raw = br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"Healthcheck":{"Test":["CMD","true"],"Interval":1000},"OnBuild":["RUN x"],"Shell":["/bin/bash","-c"],"ArgsEscaped":true},"rootfs":{"type":"layers","diff_ids":["sha256:aa"]},"history":[{"created_by":"x","empty_layer":true}]}"#;
        let cfg = ImageConfig::from_json(raw).unwrap();
        let back = ImageConfig::from_json(&cfg.to_canonical_json().unwrap()).unwrap();
        assert_eq!(cfg, back);
        assert_eq!(back.config.on_build, vec!["RUN x"]);
        assert_eq!(back.config.shell, vec!["/bin/bash", "-c"]);
        assert_eq!(back.config.healthcheck.unwrap().interval, 1000);
        assert!(back.history[0].empty_layer);
    }

    #[test]
    fn env_set_replaces_in_place() {
        let mut c = ContainerConfig {
            env: vec!["A=1".into(), "B=2".into()],
            ..Default::default()
        };
        c.env_set("A", "3");
        c.env_set("C", "4");
        assert_eq!(c.env, vec!["A=3", "B=2", "C=4"]);
        assert_eq!(c.env_get("B"), Some("2"));
        assert_eq!(c.env_get("Z"), None);
    }
}

#[cfg(test)]
mod null_tests {
    use super::*;

    #[test]
    fn docker_nulls_read_as_empty() {
        let c = ImageConfig::from_json(
            br#"{"architecture":"amd64","os":"linux","config":{"Env":null,"Cmd":null,"Volumes":null,"Entrypoint":null,"OnBuild":null,"Labels":null,"WorkingDir":""},"rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        assert!(c.config.env.is_empty() && c.config.labels.is_empty());
        assert_eq!(c.config.cmd, None);
    }
}
