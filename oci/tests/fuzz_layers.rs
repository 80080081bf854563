//! Fuzzing on the stable toolchain, as a normal test with a time budget: mutated layer tars
//! (seeds in `testdata/fuzz/layers/`) through the layer applier in its modes (overlay layer,
//! `ADD` archive, diff_id-verified), and mutated image archives (`testdata/fuzz/archives/`)
//! through the `rbuild load` importer, and mutated package databases, archives and executables
//! (`testdata/sbom/rootfs/` and `testdata/fuzz/sbom/`: dpkg, apk, rpm sqlite/Berkeley DB/ndb,
//! Python, npm, nested jars, Go ≥ 1.18 and pre-1.18 build info, cargo-auditable) through the
//! SBOM scanner. No panic, no hang (a watchdog aborts after 60 s without
//! progress), bounded memory (peak RSS checked at the end), nothing written outside the
//! destination. `RBUILD_FUZZ_SECS` sets the budget per target (default 3 s); `RBUILD_FUZZ_SEED`
//! the starting seed (printed, so a failure can be replayed).
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// xorshift64* — deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn budget() -> Duration {
    let secs = std::env::var("RBUILD_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

fn seed() -> u64 {
    let s = std::env::var("RBUILD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_1A7E_u64);
    eprintln!("fuzz seed {s} (RBUILD_FUZZ_SEED to replay)");
    s.max(1)
}

fn seeds(dir: &str) -> Vec<Vec<u8>> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/fuzz")
        .join(dir);
    let mut v: Vec<PathBuf> = fs::read_dir(&d)
        .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    let out: Vec<Vec<u8>> = v.iter().map(|p| fs::read(p).unwrap()).collect();
    assert!(!out.is_empty(), "no seeds in {}", d.display());
    out
}

/// Mutate like a tar-aware fuzzer: bit flips, bytes in header fields (type, size, mode,
/// names), duplicated, dropped and truncated 512-byte blocks.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(6) {
        if v.is_empty() {
            break;
        }
        let blocks = v.len().div_ceil(512);
        let block = rng.below(blocks) * 512;
        match rng.below(8) {
            0 => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => {
                // typeflag
                const KINDS: &[u8] = b"01234567xgLKSMNVD\0Z";
                if block + 156 < v.len() {
                    v[block + 156] = KINDS[rng.below(KINDS.len())];
                }
            }
            2 => {
                // size field: octal digits or base-256
                if block + 136 <= v.len() {
                    let digits = format!("{:011o}", rng.next() % (1u64 << (rng.below(33) + 1)));
                    v[block + 124..block + 135].copy_from_slice(digits.as_bytes());
                    if rng.below(8) == 0 {
                        v[block + 124] = 0x80;
                    }
                }
            }
            3 => {
                // name: '..', '/', long runs
                const BITS: &[&[u8]] = &[b"../", b"/", b".wh.", b".wh..wh..opq", b"a/b/c"];
                let b = BITS[rng.below(BITS.len())];
                let at = block + rng.below(100);
                if at + b.len() <= v.len() {
                    v[at..at + b.len()].copy_from_slice(b);
                }
            }
            4 if blocks > 1 => {
                let from = rng.below(blocks) * 512;
                let chunk: Vec<u8> = v[from..(from + 512).min(v.len())].to_vec();
                let at = rng.below(blocks) * 512;
                v.splice(at..at, chunk);
            }
            5 if blocks > 1 => {
                let end = (block + 512).min(v.len());
                v.drain(block..end);
            }
            6 => {
                let cut = rng.below(v.len());
                v.truncate(cut);
            }
            _ => {
                let i = rng.below(v.len());
                v[i] = (rng.next() & 0xff) as u8;
            }
        }
        // Re-checksum the touched header half of the time, so mutations get past the check.
        if rng.below(2) == 0 && block + 512 <= v.len() {
            let sum: u32 = v[block..block + 512]
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        u32::from(*b)
                    }
                })
                .sum();
            let f = format!("{sum:06o}\0 ");
            v[block + 148..block + 156].copy_from_slice(f.as_bytes());
        }
    }
    v
}

fn peak_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Abort the process (a hang is a failure) when `progress` stops moving for 60 s.
fn watchdog(progress: Arc<AtomicU64>) -> Arc<AtomicU64> {
    let p = progress.clone();
    std::thread::spawn(move || {
        let mut last = u64::MAX;
        loop {
            std::thread::sleep(Duration::from_secs(60));
            let now = p.load(Ordering::Relaxed);
            if now == u64::MAX {
                return;
            }
            if now == last {
                eprintln!("fuzz: no progress for 60 s at iteration {now}: hang");
                std::process::abort();
            }
            last = now;
        }
    });
    progress
}

#[test]
fn layer_applier_survives_mutated_layers() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the layer fuzz test needs root (device nodes, chown); run it as root"
    );
    let seeds = seeds("layers");
    let mut rng = Rng(seed());
    let progress = watchdog(Arc::new(AtomicU64::new(0)));
    let base = tempfile::tempdir().unwrap();
    let canary = base.path().join("canary");
    fs::write(&canary, "host").unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    let (mut ok, mut err) = (0, 0);
    while start.elapsed() < budget() {
        let pick = rng.below(seeds.len());
        let mut input = mutate(&mut rng, &seeds[pick]);
        if rng.below(4) == 0 {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&input).unwrap();
            input = e.finish().unwrap();
        }
        let dest = base.path().join(format!("d{n}"));
        fs::create_dir(&dest).unwrap();
        let r = match n % 3 {
            0 => rbuild_oci::apply_layer(&input[..], &dest),
            1 => rbuild_oci::extract_archive(&input[..], &dest, None),
            _ => rbuild_oci::apply_layer_verified(
                &input[..],
                &dest,
                "sha256:fuzz",
                &format!("sha256:{}", "0".repeat(64)),
            ),
        };
        if r.is_ok() {
            ok += 1
        } else {
            err += 1
        }
        // Trees may hold 0555 dirs (root ignores that) or immutable-looking leftovers.
        if fs::remove_dir_all(&dest).is_err() {
            let _ = std::process::Command::new("rm")
                .arg("-rf")
                .arg(&dest)
                .status();
        }
        n += 1;
        progress.store(n, Ordering::Relaxed);
    }
    progress.store(u64::MAX, Ordering::Relaxed);
    eprintln!("layer fuzz: {n} inputs, {ok} applied, {err} refused");
    assert_eq!(fs::read_to_string(&canary).unwrap(), "host");
    let names: Vec<_> = fs::read_dir(base.path()).unwrap().collect();
    assert_eq!(
        names.len(),
        1,
        "only the canary is left beside the destinations"
    );
    assert!(n > 10, "the budget ran only {n} inputs");
    assert!(peak_kib() < 1 << 20, "peak RSS {} KiB", peak_kib());
}

#[test]
fn archive_importer_survives_mutated_archives() {
    let seeds = seeds("archives");
    let mut rng = Rng(seed() ^ 0xA5A5);
    let progress = watchdog(Arc::new(AtomicU64::new(0)));
    let dir = tempfile::tempdir().unwrap();
    let store = rbuild_cache::Store::open(dir.path()).unwrap();
    // The unmutated seeds load.
    for s in &seeds {
        rbuild_oci::import::import_archive(&store, &s[..]).unwrap();
    }
    let start = Instant::now();
    let mut n = 0u64;
    let (mut ok, mut err) = (0, 0);
    while start.elapsed() < budget() {
        let pick = rng.below(seeds.len());
        let input = mutate(&mut rng, &seeds[pick]);
        match rbuild_oci::import::import_archive(&store, &input[..]) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
        n += 1;
        progress.store(n, Ordering::Relaxed);
    }
    progress.store(u64::MAX, Ordering::Relaxed);
    eprintln!("archive fuzz: {n} inputs, {ok} loaded, {err} refused");
    assert!(n > 10, "the budget ran only {n} inputs");
    assert!(peak_kib() < 1 << 20, "peak RSS {} KiB", peak_kib());
}

/// Every regular file under `root`: `(path relative to it, bytes, executable)`.
fn tree(root: &Path) -> Vec<(String, Vec<u8>, bool)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((
                    rel,
                    fs::read(e.path()).unwrap(),
                    md.permissions().mode() & 0o111 != 0,
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn sbom_catalogers_survive_mutated_inputs() {
    use std::os::unix::fs::PermissionsExt;
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata");
    let extra = tree(&data.join("fuzz/sbom"));
    let mut seeds = tree(&data.join("sbom/rootfs"));
    seeds.extend(extra.iter().cloned());
    let limits = rbuild_oci::sbom::Limits::default();
    let dir = tempfile::tempdir().unwrap();
    let put = |rel: &str, bytes: &[u8], exec: bool| {
        let p = dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        let mode = if exec { 0o755 } else { 0o644 };
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    // the fuzz seeds alone give packages: they are real inputs
    for (rel, bytes, exec) in &extra {
        let p = put(rel, bytes, *exec);
        let s = rbuild_oci::sbom::scan_dir(dir.path(), &limits);
        assert!(
            !s.packages.is_empty(),
            "seed {rel} gives no package: {:?}",
            s.notes
        );
        fs::remove_file(p).unwrap();
    }
    let mut rng = Rng(seed() ^ 0x5B0B);
    let progress = watchdog(Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let (mut n, mut found) = (0u64, 0usize);
    while start.elapsed() < budget() {
        let (rel, bytes, exec) = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, bytes);
        let p = put(rel, &input, *exec);
        let s = rbuild_oci::sbom::scan_dir(dir.path(), &limits);
        found += s.packages.len();
        fs::remove_file(p).unwrap();
        n += 1;
        progress.store(n, Ordering::Relaxed);
    }
    progress.store(u64::MAX, Ordering::Relaxed);
    eprintln!("sbom fuzz: {n} inputs, {found} packages found in them");
    assert!(n > 10, "the budget ran only {n} inputs");
    assert!(peak_kib() < 1 << 20, "peak RSS {} KiB", peak_kib());
}
