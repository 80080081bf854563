//! Small filesystem and process helpers shared by the store modules.

use crate::error::{CacheError, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Read from `r` until `buf` is full or EOF (retrying interrupted reads); returns the number
/// of bytes read, less than `buf.len()` only at EOF.
pub fn read_full(r: &mut (impl Read + ?Sized), buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// fsync a directory so that renames/creates inside it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    let f = fs::File::open(dir).map_err(|e| CacheError::io("open directory", dir, e))?;
    f.sync_all()
        .map_err(|e| CacheError::io("fsync directory", dir, e))
}

/// Whether a process with this pid exists (in our pid namespace).
pub(crate) fn pid_alive(pid: i32) -> bool {
    match rustix::process::Pid::from_raw(pid) {
        None => false,
        Some(p) => match rustix::process::test_kill_process(p) {
            Ok(()) => true,
            Err(e) => e != rustix::io::Errno::SRCH,
        },
    }
}

/// Current time in unix seconds (0 before 1970): rbuild's one clock reading for records,
/// history and `created` times (also `rbuild_oci::time::now_secs`).
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Current time in unix nanoseconds.
pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A value that differs between calls, threads and processes (not cryptographic).
pub(crate) fn unique_u64() -> u64 {
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = Sha256::new();
    h.update(std::process::id().to_le_bytes());
    h.update(now_ns().to_le_bytes());
    h.update(c.to_le_bytes());
    h.update(format!("{:?}", std::thread::current().id()).as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

/// Lowercase base32 (RFC 4648 alphabet, lowercased) of the low `5*n` bits of `v`.
pub(crate) fn base32(mut v: u64, n: usize) -> String {
    const ALPHA: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut s = String::with_capacity(n);
    for _ in 0..n {
        s.push(ALPHA[(v & 31) as usize] as char);
        v >>= 5;
    }
    s
}

/// Remove a file or directory tree. Missing paths are fine. Directories without write or
/// search permission (a build may leave `chmod 0555` dirs behind) are made writable first.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    let md = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CacheError::io("stat", path, e)),
    };
    if !md.is_dir() {
        return match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CacheError::io("remove", path, e)),
        };
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_dirs_writable(path);
            match fs::remove_dir_all(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(CacheError::io("remove directory tree", path, e)),
            }
        }
    }
}

fn make_dirs_writable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(rd) = fs::read_dir(dir) {
        for ent in rd.flatten() {
            if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                make_dirs_writable(&ent.path());
            }
        }
    }
}

/// `sha256:<hex>` of a finished hasher.
pub(crate) fn digest_string(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Validate `sha256:<64 lowercase hex>` and return the hex part.
pub(crate) fn parse_digest(digest: &str) -> Result<&str> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| CacheError::InvalidDigest {
            digest: digest.to_string(),
        })?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(CacheError::InvalidDigest {
            digest: digest.to_string(),
        });
    }
    Ok(hex)
}
