//! Times cold and warm checksums of a generated 10k-file context:
//! `cargo run --release -p rbuild-cache --example ctxbench [files]`.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

use rbuild_cache::context::{checksum, ExcludeMatcher, Selector};
use rbuild_cache::Store;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    let ctx = dir.path().join("ctx");
    let payload = vec![b'x'; 10_000];
    for i in 0..n {
        let p = ctx.join(format!("d{:02}/s{:02}/f{i:05}", i % 50, i % 7));
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, &payload)?;
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let store = Store::open(&dir.path().join("store"))?;
    let sel = Selector {
        path: "/".into(),
        follow_symlinks: false,
        allow_wildcard: true,
    };
    let x = ExcludeMatcher::new(&["*.tmp".to_string(), "**/node_modules".to_string()])?;
    let rounds: u32 = std::env::args()
        .nth(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    for round in 0..rounds {
        let t = Instant::now();
        let c = checksum(&store, &ctx, &sel, &x)?;
        println!(
            "round {round}: {:?} files_read={} entries={}",
            t.elapsed(),
            c.files_read,
            c.files.len()
        );
    }
    Ok(())
}
