//! Content store, snapshots, index/meta and locks against a real store on disk, with real
//! threads and real child processes sharing one root.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

use rbuild_cache::{CacheError, Store};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn tmp_entries(store: &Store) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store.tmp_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

#[test]
fn write_read_and_layout() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for sub in ["blobs-v1/sha256", "snapshots-v1", "tmp", "index-v1.db"] {
        assert!(dir.path().join(sub).exists(), "{sub} missing");
    }
    let info = store.write_blob(b"hello").unwrap();
    assert_eq!(
        info.digest,
        "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert_eq!(info.size, 5);
    assert!(store.has_blob(&info.digest));
    assert_eq!(store.read_blob(&info.digest).unwrap(), b"hello");
    let p = store.blob_path(&info.digest).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"hello");
    assert!(p.starts_with(store.root().join("blobs-v1/sha256")));
    // idempotent
    assert_eq!(store.write_blob(b"hello").unwrap(), info);
    assert!(tmp_entries(&store).is_empty());
    // invalid digests
    for bad in [
        "sha256:xyz",
        "md5:abc",
        &info.digest.to_uppercase(),
        "sha256:../../etc/passwd",
    ] {
        assert!(
            matches!(store.blob_path(bad), Err(CacheError::InvalidDigest { .. })),
            "{bad}"
        );
        assert!(!store.has_blob(bad));
    }
    let missing = format!("sha256:{}", "0".repeat(64));
    assert!(matches!(
        store.read_blob(&missing),
        Err(CacheError::BlobNotFound { .. })
    ));
    assert!(matches!(
        store.open_blob(&missing),
        Err(CacheError::BlobNotFound { .. })
    ));
    // listing and removal (GC)
    let other = store.write_blob(b"other").unwrap();
    let mut want = vec![info.clone(), other.clone()];
    want.sort_by(|a, b| a.digest.cmp(&b.digest));
    assert_eq!(store.list_blobs().unwrap(), want);
    store.remove_blob(&other.digest).unwrap();
    store.remove_blob(&other.digest).unwrap();
    assert!(!store.has_blob(&other.digest));
    assert_eq!(store.list_blobs().unwrap(), vec![info.clone()]);
    // corruption detected on read
    std::fs::write(&p, b"hellO").unwrap();
    assert!(matches!(
        store.read_blob(&info.digest),
        Err(CacheError::CorruptBlob { .. })
    ));
}

#[test]
fn streaming_writer_commit_and_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let expected = rbuild_cache::sha256_reader(&data[..]).unwrap();

    let mut w = store.blob_writer().unwrap();
    for chunk in data.chunks(7777) {
        w.write_all(chunk).unwrap();
    }
    let got = w.commit_expecting(&expected).unwrap();
    assert_eq!(got, expected);
    let mut f = store.open_blob(&got.digest).unwrap();
    assert_eq!(rbuild_cache::sha256_reader(&mut f).unwrap(), expected);

    // Wrong digest: error, nothing stored, temp removed.
    let mut w = store.blob_writer().unwrap();
    w.write_all(b"other content").unwrap();
    let wrong = format!("sha256:{}", "a".repeat(64));
    let err = w.commit(Some((&wrong, None))).unwrap_err();
    assert!(matches!(err, CacheError::DigestMismatch { .. }), "{err}");
    assert!(!store.has_blob(&wrong));
    let actual = rbuild_cache::sha256_reader(&b"other content"[..]).unwrap();
    assert!(!store.has_blob(&actual.digest));
    assert!(tmp_entries(&store).is_empty());

    // Right digest, wrong size: error, nothing stored.
    let mut w = store.blob_writer().unwrap();
    w.write_all(b"other content").unwrap();
    let err = w.commit(Some((&actual.digest, Some(3)))).unwrap_err();
    assert!(
        matches!(
            err,
            CacheError::SizeMismatch {
                expected: 3,
                actual: 13,
                ..
            }
        ),
        "{err}"
    );
    assert!(!store.has_blob(&actual.digest));
    assert!(tmp_entries(&store).is_empty());

    // Dropped without commit: temp removed.
    let mut w = store.blob_writer().unwrap();
    w.write_all(b"abandoned").unwrap();
    assert_eq!(tmp_entries(&store).len(), 1);
    drop(w);
    assert!(tmp_entries(&store).is_empty());
}

#[test]
fn concurrent_writers_of_same_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data: Arc<Vec<u8>> = Arc::new((0..1_000_000u32).map(|i| (i * 7 % 256) as u8).collect());
    let want = rbuild_cache::sha256_reader(&data[..]).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            // half share the handle, half open their own
            let s = if i % 2 == 0 {
                store.clone()
            } else {
                Store::open(dir.path()).unwrap()
            };
            let data = data.clone();
            std::thread::spawn(move || {
                if i % 3 == 0 {
                    s.write_blob(&data).unwrap()
                } else {
                    let mut w = s.blob_writer().unwrap();
                    for c in data.chunks(65536) {
                        w.write_all(c).unwrap();
                    }
                    w.commit(None).unwrap()
                }
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), want);
    }
    assert_eq!(store.read_blob(&want.digest).unwrap(), *data);
    assert!(tmp_entries(&store).is_empty());
}

#[test]
fn crash_leftovers_in_tmp_are_cleaned_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let tmp = store.tmp_dir();
    let dead = dead_pid();
    std::fs::write(tmp.join(format!("{dead}-blob-aaaa")), b"partial").unwrap();
    std::fs::create_dir_all(tmp.join(format!("{dead}-work-bbbb/sub"))).unwrap();
    // chmod 0555 dir inside a leftover: still removed
    let ro = tmp.join(format!("{dead}-work-bbbb/sub"));
    std::fs::write(ro.join("f"), b"x").unwrap();
    std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    // live pid (ours) must survive
    let live = store.new_tmp_path("ingest");
    std::fs::write(&live, b"in progress").unwrap();
    // old entry without a pid: removed; fresh one: kept
    let old = tmp.join("old-thing");
    std::fs::write(&old, b"old").unwrap();
    let f = std::fs::File::options().write(true).open(&old).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600))
        .unwrap();
    drop(f);
    std::fs::write(tmp.join("fresh-thing"), b"new").unwrap();

    let _store2 = Store::open(dir.path()).unwrap();
    let mut left = tmp_entries(&store);
    left.sort();
    let mut want = vec![
        "fresh-thing".to_string(),
        live.file_name().unwrap().to_string_lossy().into_owned(),
    ];
    want.sort();
    assert_eq!(left, want);
}

#[test]
fn snapshots_lifecycle_and_crash_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let s = store.new_snapshot().unwrap();
    assert!(s.id.len() <= 12 && !s.id.is_empty());
    assert!(s.fs.is_dir() && s.work.is_dir());
    assert_eq!(s.fs.parent(), s.work.parent());
    std::fs::write(s.fs.join("file"), b"layer").unwrap();
    assert!(!store.snapshot_exists(&s.id));
    assert!(matches!(
        store.snapshot_fs(&s.id),
        Err(CacheError::SnapshotNotCommitted { .. })
    ));
    store.commit_snapshot(&s.id).unwrap();
    assert!(store.snapshot_exists(&s.id));
    assert_eq!(store.snapshot_fs(&s.id).unwrap(), s.fs);
    assert_eq!(store.list_snapshots().unwrap(), vec![s.id.clone()]);

    // ids are unique
    let mut ids = std::collections::HashSet::new();
    for _ in 0..200 {
        let t = store.new_snapshot().unwrap();
        assert!(ids.insert(t.id.clone()));
        store.remove_snapshot(&t.id).unwrap();
    }

    // Uncommitted snapshot of a live process survives another open; of a dead one is removed.
    let live = store.new_snapshot().unwrap();
    let crashed = store.new_snapshot().unwrap();
    std::fs::create_dir_all(crashed.fs.join("usr/bin")).unwrap();
    let owner = crashed.fs.parent().unwrap().join("owner");
    std::fs::write(&owner, format!("{}-", dead_pid())).unwrap();
    let _again = Store::open(dir.path()).unwrap();
    assert!(live.fs.is_dir(), "live uncommitted snapshot must survive");
    assert!(
        !crashed.fs.parent().unwrap().exists(),
        "crashed snapshot must be removed"
    );
    assert!(store.snapshot_exists(&s.id));

    store.remove_snapshot(&s.id).unwrap();
    assert!(!store.snapshot_exists(&s.id));
    assert!(matches!(
        store.snapshot_fs(&s.id),
        Err(CacheError::SnapshotNotFound { .. })
    ));
    store.remove_snapshot(&s.id).unwrap();
    assert!(matches!(
        store.snapshot_fs("../x"),
        Err(CacheError::InvalidSnapshotId { .. })
    ));
}

#[test]
fn index_and_meta_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.index_get("k").unwrap(), None);
    store.index_put("k", r#"{"snapshot":"abc"}"#).unwrap();
    let e = store.index_get("k").unwrap().unwrap();
    assert_eq!(e.value, r#"{"snapshot":"abc"}"#);
    assert!(e.created_at > 1_600_000_000 && e.last_used >= e.created_at);
    store.index_touch("k").unwrap();
    store.index_touch("missing").unwrap();
    store.index_put("k", "v2").unwrap();
    assert_eq!(store.index_get("k").unwrap().unwrap().value, "v2");
    assert_eq!(store.index_list().unwrap().len(), 1);
    assert!(store.index_delete("k").unwrap());
    assert!(!store.index_delete("k").unwrap());

    store.meta_put("images", "app:v1", "sha256:1").unwrap();
    store.meta_put("images", "app:v0", "sha256:0").unwrap();
    store.meta_put("other", "app:v1", "x").unwrap();
    store.meta_put("images", "app:v1", "sha256:2").unwrap();
    assert_eq!(
        store.meta_get("images", "app:v1").unwrap().as_deref(),
        Some("sha256:2")
    );
    assert_eq!(
        store.meta_list("images").unwrap(),
        vec![
            ("app:v0".to_string(), "sha256:0".to_string()),
            ("app:v1".to_string(), "sha256:2".to_string())
        ]
    );
    store.meta_delete("images", "app:v0").unwrap();
    store.meta_delete("images", "nope").unwrap();
    assert_eq!(store.meta_list("images").unwrap().len(), 1);
    assert_eq!(
        store.meta_get("other", "app:v1").unwrap().as_deref(),
        Some("x")
    );

    // persisted across handles
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.meta_get("images", "app:v1").unwrap().as_deref(),
        Some("sha256:2")
    );
    let mode: String = rusqlite_journal_mode(&dir.path().join("index-v1.db"));
    assert_eq!(mode, "wal");
}

fn rusqlite_journal_mode(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap()
}

const CHILD_ENV: &str = "RBUILD_CACHE_TEST_CHILD_ROOT";
const PER_WRITER: usize = 150;

/// The child processes' part of `index_shared_by_threads_and_processes`: that test re-runs
/// itself in each child with `CHILD_ENV` set, and this is all the child does.
fn child_writer(root: &str) {
    let tag = std::env::var("RBUILD_CACHE_TEST_CHILD_TAG").unwrap();
    let store = Store::open(Path::new(&root)).unwrap();
    for i in 0..PER_WRITER {
        store
            .index_put(&format!("{tag}-{i}"), &format!("v{i}"))
            .unwrap();
        store.meta_put("ns", &format!("{tag}-{i}"), "m").unwrap();
        if i % 10 == 0 {
            let _l = store.lock("gc").unwrap();
            let n: u64 = store
                .meta_get("ctr", "n")
                .unwrap()
                .map(|s| s.parse().unwrap())
                .unwrap_or(0);
            store.meta_put("ctr", "n", &(n + 1).to_string()).unwrap();
        }
    }
}

#[test]
fn index_shared_by_threads_and_processes() {
    if let Ok(root) = std::env::var(CHILD_ENV) {
        child_writer(&root);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(dir.path()).unwrap();
    let b = Store::open(dir.path()).unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|i| {
            Command::new(&exe)
                .args([
                    "index_shared_by_threads_and_processes",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, dir.path())
                .env("RBUILD_CACHE_TEST_CHILD_TAG", format!("proc{i}"))
                .spawn()
                .unwrap()
        })
        .collect();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = if t % 2 == 0 { a.clone() } else { b.clone() };
            std::thread::spawn(move || {
                for i in 0..PER_WRITER {
                    s.index_put(&format!("thread{t}-{i}"), &format!("v{i}"))
                        .unwrap();
                    s.meta_put("ns", &format!("thread{t}-{i}"), "m").unwrap();
                    assert!(s.index_get(&format!("thread{t}-{i}")).unwrap().is_some());
                    if i % 10 == 0 {
                        let _l = s.lock("gc").unwrap();
                        let n: u64 = s
                            .meta_get("ctr", "n")
                            .unwrap()
                            .map(|x| x.parse().unwrap())
                            .unwrap_or(0);
                        s.meta_put("ctr", "n", &(n + 1).to_string()).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let entries = a.index_list().unwrap();
    assert_eq!(entries.len(), 12 * PER_WRITER);
    for w in (0..8)
        .map(|t| format!("thread{t}"))
        .chain((0..4).map(|p| format!("proc{p}")))
    {
        for i in 0..PER_WRITER {
            let e = b.index_get(&format!("{w}-{i}")).unwrap().unwrap();
            assert_eq!(e.value, format!("v{i}"));
        }
    }
    assert_eq!(b.meta_list("ns").unwrap().len(), 12 * PER_WRITER);
    // The flock-protected read-modify-write counter lost no increments.
    let n: usize = a.meta_get("ctr", "n").unwrap().unwrap().parse().unwrap();
    assert_eq!(n, 12 * PER_WRITER.div_ceil(10));
}

#[test]
fn lock_is_exclusive_and_released_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(dir.path()).unwrap();
    let b = Store::open(dir.path()).unwrap();
    let l = a.lock("build").unwrap();
    assert!(l.path().ends_with("locks/build.lock"));
    assert!(b.try_lock("build").unwrap().is_none());
    assert!(b.try_lock("other").unwrap().is_some());
    drop(l);
    assert!(b.try_lock("build").unwrap().is_some());
    assert!(matches!(
        a.lock("../x"),
        Err(CacheError::InvalidLockName { .. })
    ));
    assert!(matches!(
        a.lock(""),
        Err(CacheError::InvalidLockName { .. })
    ));
}

#[test]
fn many_openers_of_one_new_store_all_succeed() {
    // Switching a new database to WAL takes an exclusive lock that SQLite does not wait for:
    // concurrent first opens must still all succeed.
    for _round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let root = Arc::new(dir.path().to_path_buf());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let root = root.clone();
                std::thread::spawn(move || Store::open(root.as_path()).map(|_| ()))
            })
            .collect();
        for t in threads {
            if let Err(e) = t.join().unwrap() {
                panic!("concurrent open failed: {e}");
            }
        }
    }
}

#[test]
fn unsynced_snapshots_count_during_their_boot_only_and_settle() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let marker = |id: &str| dir.path().join("snapshots-v1").join(id).join("committed");

    let s = store.new_snapshot().unwrap();
    std::fs::write(s.fs.join("file"), b"layer").unwrap();
    store.commit_snapshot_unsynced(&s.id).unwrap();
    assert!(store.snapshot_exists(&s.id));
    assert_eq!(store.list_snapshots().unwrap(), vec![s.id.clone()]);
    let text = std::fs::read_to_string(marker(&s.id)).unwrap();
    assert!(text.starts_with("boot "), "{text:?}");
    // Young: another open leaves it unsynced and committed.
    drop(Store::open(dir.path()).unwrap());
    assert!(store.snapshot_exists(&s.id));
    assert!(!std::fs::read(marker(&s.id)).unwrap().is_empty());
    // Settled: the marker says "on disk" (empty), whatever the boot.
    assert_eq!(
        store.settle_snapshots(std::time::Duration::ZERO).unwrap(),
        1
    );
    assert!(std::fs::read(marker(&s.id)).unwrap().is_empty());
    assert!(store.snapshot_exists(&s.id));

    // Committed unsynced during an earlier boot (a crash or reboot since): not trusted, and
    // the next open removes it.
    let old = store.new_snapshot().unwrap();
    std::fs::write(old.fs.join("file"), b"maybe lost").unwrap();
    store.commit_snapshot_unsynced(&old.id).unwrap();
    std::fs::write(
        marker(&old.id),
        "boot 00000000-0000-0000-0000-000000000000\n",
    )
    .unwrap();
    assert!(!store.snapshot_exists(&old.id));
    assert!(matches!(
        store.snapshot_fs(&old.id),
        Err(CacheError::SnapshotNotCommitted { .. })
    ));
    assert_eq!(store.list_snapshots().unwrap(), vec![s.id.clone()]);
    drop(Store::open(dir.path()).unwrap());
    assert!(!dir.path().join("snapshots-v1").join(&old.id).exists());
    assert!(store.snapshot_exists(&s.id));
}
