//! Independent readers of what rbuild wrote: skopeo for manifests and configs, umoci for root
//! filesystems, tar for layer listings. A failing reader fails the test with its stderr.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tempfile::TempDir;

/// `skopeo inspect WHAT oci:LAYOUT` (`WHAT` = `--raw` for the manifest, `--config`) as JSON.
pub fn skopeo_inspect(what: &str, layout: &str) -> Value {
    let out = Command::new("skopeo")
        .args(["inspect", what, &format!("oci:{layout}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `tar -tvf BLOB`.
pub fn tar_listing(blob: &Path) -> String {
    let out = Command::new("tar").arg("-tvf").arg(blob).output().unwrap();
    assert!(
        out.status.success(),
        "tar -tvf failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An image's root filesystem, unpacked by umoci.
pub struct Unpacked {
    _t: TempDir,
    pub rootfs: PathBuf,
}

/// `umoci unpack --image LAYOUT` into a temporary bundle.
pub fn umoci_unpack(layout: &str) -> Unpacked {
    let t = tempfile::tempdir().unwrap();
    let bundle = t.path().join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image", layout])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci unpack failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Unpacked {
        _t: t,
        rootfs: bundle.join("rootfs"),
    }
}

impl Unpacked {
    pub fn path(&self, p: &str) -> PathBuf {
        self.rootfs.join(p.trim_start_matches('/'))
    }
    pub fn read(&self, p: &str) -> String {
        fs::read_to_string(self.path(p))
            .unwrap_or_else(|e| panic!("reading {p} from the image: {e}"))
    }
    pub fn exists(&self, p: &str) -> bool {
        fs::symlink_metadata(self.path(p)).is_ok()
    }
    pub fn meta(&self, p: &str) -> fs::Metadata {
        fs::symlink_metadata(self.path(p)).unwrap()
    }
    pub fn names(&self, p: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.path(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}
