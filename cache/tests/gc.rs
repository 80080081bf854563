//! Garbage collection (`rbuild_cache::gc`) on a real store with fake index records: the
//! records' meaning, the pins and the snapshot-owned metadata come from a [`GcRoots`] written
//! here, as the solver supplies its own.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

use std::collections::HashSet;
use std::time::Duration;

use rbuild_cache::gc::{self, GcRoots, LayerRef, PruneOptions, SnapshotMeta};
use rbuild_cache::{CacheError, Store};

/// Metadata namespace of the fake roots whose records belong to snapshots:
/// `<snapshot>|<anything>` → blob digest (or `-` for none).
const OWNED: &str = "owned";

/// Records are `layers:<snapshot>=<blob>,<snapshot>=<blob>…` (blob may be empty); anything
/// else is unreadable.
struct Fake {
    pinned: HashSet<String>,
    fail_pins: bool,
}

impl Fake {
    fn new(pinned: &[&str]) -> Self {
        Fake {
            pinned: pinned.iter().map(|s| s.to_string()).collect(),
            fail_pins: false,
        }
    }
}

impl GcRoots for Fake {
    type Error = CacheError;

    fn pinned_blobs(&self, _store: &Store) -> Result<HashSet<String>, CacheError> {
        if self.fail_pins {
            return Err(CacheError::NotFound {
                path: "pins".into(),
            });
        }
        Ok(self.pinned.clone())
    }

    fn record_layers(&self, value: &str) -> Option<Vec<LayerRef>> {
        let list = value.strip_prefix("layers:")?;
        Some(
            list.split(',')
                .filter(|s| !s.is_empty())
                .map(|l| {
                    let (snapshot, blob) = l.split_once('=').unwrap_or((l, ""));
                    LayerRef {
                        snapshot: snapshot.to_string(),
                        blob: blob.to_string(),
                    }
                })
                .collect(),
        )
    }

    fn snapshot_namespaces(&self) -> Vec<&'static str> {
        vec![OWNED]
    }

    fn snapshot_meta(&self, namespace: &str, key: &str, value: &str) -> SnapshotMeta {
        assert_eq!(namespace, OWNED);
        SnapshotMeta {
            snapshot: key.split('|').next().unwrap().to_string(),
            blob: (value != "-").then(|| value.to_string()),
        }
    }
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    (dir, store)
}

/// A committed snapshot holding `kib` KiB of bytes derived from `seed`.
fn snapshot(store: &Store, seed: u8, kib: usize) -> String {
    let s = store.new_snapshot().unwrap();
    std::fs::write(s.fs.join("data"), data(seed, kib)).unwrap();
    store.commit_snapshot(&s.id).unwrap();
    s.id
}

fn blob(store: &Store, seed: u8, kib: usize) -> String {
    store.write_blob(&data(seed, kib)).unwrap().digest
}

fn data(seed: u8, kib: usize) -> Vec<u8> {
    (0..kib * 1024)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn record(layers: &[(&str, &str)]) -> String {
    let parts: Vec<String> = layers.iter().map(|(s, b)| format!("{s}={b}")).collect();
    format!("layers:{}", parts.join(","))
}

/// Make `key` look last used `secs_ago` seconds ago (the index has no API for the past).
fn age(store: &Store, key: &str, secs_ago: i64) {
    let db = rusqlite::Connection::open(store.root().join("index-v1.db")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let n = db
        .execute(
            "UPDATE cache_index SET last_used = ?1 WHERE key = ?2",
            rusqlite::params![now - secs_ago, key],
        )
        .unwrap();
    assert_eq!(n, 1);
}

fn keys(store: &Store) -> Vec<String> {
    let mut k: Vec<String> = store
        .index_list()
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    k.sort();
    k
}

fn lock_files(store: &Store) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store.root().join("locks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(gc::KEY_LOCK_PREFIX))
        .collect();
    v.sort();
    v
}

#[test]
fn the_sweep_keeps_what_records_pins_and_live_snapshots_reference() {
    let (_d, store) = open();
    let (a, b) = (snapshot(&store, 1, 4), snapshot(&store, 2, 4));
    let (blob_a, blob_b) = (blob(&store, 1, 4), blob(&store, 2, 4));
    let pin_blob = blob(&store, 3, 4);
    let (tar_a, tar_b) = (blob(&store, 4, 4), blob(&store, 5, 4));
    store
        .index_put("sha256:aaaa", &record(&[(&a, &blob_a)]))
        .unwrap();
    store.index_put("sha256:bbbb", "{not a record").unwrap();
    store.meta_put(OWNED, &format!("{a}|1"), &tar_a).unwrap();
    store.meta_put(OWNED, &format!("{a}|2"), "-").unwrap();
    store.meta_put(OWNED, &format!("{b}|1"), &tar_b).unwrap();
    for name in ["key-aaaa", "key-bbbb", "key-cccc"] {
        drop(store.lock(name).unwrap());
    }

    let _gc = gc::gc_lock(&store, true).unwrap().unwrap();
    let r = gc::prune(&store, &PruneOptions::default(), &Fake::new(&[&pin_blob])).unwrap();

    assert_eq!(keys(&store), ["sha256:aaaa"], "the unreadable record goes");
    assert_eq!(r.entries_removed, 1);
    assert_eq!(store.list_snapshots().unwrap(), std::slice::from_ref(&a));
    assert_eq!(r.snapshots_removed, 1);
    let mut left: Vec<String> = store
        .list_blobs()
        .unwrap()
        .into_iter()
        .map(|b| b.digest)
        .collect();
    left.sort();
    let mut want = vec![blob_a, pin_blob, tar_a.clone()];
    want.sort();
    assert_eq!(
        left, want,
        "unreferenced blobs and the dead snapshot's tar go"
    );
    assert!(!store.has_blob(&blob_b));
    assert_eq!(r.blobs_removed, 2);
    let mut owned: Vec<(String, String)> = store.meta_list(OWNED).unwrap();
    owned.sort();
    assert_eq!(
        owned,
        [(format!("{a}|1"), tar_a), (format!("{a}|2"), "-".into())],
        "metadata of the removed snapshot goes with it"
    );
    assert_eq!(lock_files(&store), ["key-aaaa.lock"]);
    assert!(r.bytes_after < r.bytes_before);
}

#[test]
fn a_record_naming_a_path_as_snapshot_is_dropped_and_nothing_outside_is_touched() {
    let (d, store) = open();
    let outside = d.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("f"), b"keep me").unwrap();
    let s = snapshot(&store, 1, 4);
    for (key, bad) in [
        ("sha256:b1", "../../outside"),
        ("sha256:b2", outside.to_str().unwrap()),
        ("sha256:b3", ""),
    ] {
        store
            .index_put(key, &record(&[(&s, ""), (bad, "")]))
            .unwrap();
    }
    store.index_put("sha256:ok", &record(&[(&s, "")])).unwrap();
    assert!(matches!(
        store.snapshot_usage("../../outside"),
        Err(CacheError::InvalidSnapshotId { .. })
    ));
    let opts = PruneOptions {
        keep_storage: Some(1 << 40),
        ..PruneOptions::default()
    };
    let r = gc::prune(&store, &opts, &Fake::new(&[])).unwrap();
    assert_eq!(keys(&store), ["sha256:ok"]);
    assert_eq!(r.entries_removed, 3);
    assert_eq!(store.list_snapshots().unwrap(), [s]);
    assert_eq!(std::fs::read(outside.join("f")).unwrap(), b"keep me");
}

#[test]
fn until_removes_entries_unused_for_longer() {
    let (_d, store) = open();
    let (old, new) = (snapshot(&store, 1, 4), snapshot(&store, 2, 4));
    store
        .index_put("sha256:01d", &record(&[(&old, "")]))
        .unwrap();
    store
        .index_put("sha256:4e3", &record(&[(&new, "")]))
        .unwrap();
    age(&store, "sha256:01d", 7200);
    age(&store, "sha256:4e3", 60);
    let opts = PruneOptions {
        until: Some(Duration::from_secs(3600)),
        ..PruneOptions::default()
    };
    let r = gc::prune(&store, &opts, &Fake::new(&[])).unwrap();
    assert_eq!(keys(&store), ["sha256:4e3"]);
    assert_eq!(store.list_snapshots().unwrap(), [new]);
    assert_eq!((r.entries_removed, r.snapshots_removed), (1, 1));
}

#[test]
fn keep_storage_removes_least_recently_used_first_and_counts_shared_layers_once() {
    let (_d, store) = open();
    let shared = snapshot(&store, 9, 256);
    let (s1, s2, s3) = (
        snapshot(&store, 1, 256),
        snapshot(&store, 2, 256),
        snapshot(&store, 3, 256),
    );
    let (b1, b2) = (blob(&store, 1, 256), blob(&store, 2, 256));
    // e1 and e3 share a snapshot; e2's blob is pinned; e3's tar is named by metadata.
    let tar3 = blob(&store, 3, 256);
    store
        .index_put("sha256:e1", &record(&[(&shared, ""), (&s1, &b1)]))
        .unwrap();
    store
        .index_put("sha256:e2", &record(&[(&s2, &b2)]))
        .unwrap();
    store
        .index_put("sha256:e3", &record(&[(&shared, ""), (&s3, "")]))
        .unwrap();
    store.meta_put(OWNED, &format!("{s3}|-"), &tar3).unwrap();
    age(&store, "sha256:e1", 300);
    age(&store, "sha256:e2", 200);
    age(&store, "sha256:e3", 100);
    let fake = Fake::new(&[&b2]);

    // Below the ceiling: nothing goes.
    let total = store.usage().unwrap().total();
    let opts = |limit| PruneOptions {
        keep_storage: Some(limit),
        ..PruneOptions::default()
    };
    let r = gc::prune(&store, &opts(total + 1), &fake).unwrap();
    assert_eq!(
        (r.entries_removed, r.snapshots_removed, r.blobs_removed),
        (0, 0, 0)
    );

    // A little over: only the least recently used entry goes, and with it only what no
    // other entry shares (the shared snapshot stays).
    let r = gc::prune(&store, &opts(total - 100 * 1024), &fake).unwrap();
    assert_eq!(keys(&store), ["sha256:e2", "sha256:e3"]);
    let snaps: HashSet<String> = store.list_snapshots().unwrap().into_iter().collect();
    assert_eq!(
        snaps,
        HashSet::from([shared.clone(), s2.clone(), s3.clone()])
    );
    assert!(!store.has_blob(&b1) && store.has_blob(&b2) && store.has_blob(&tar3));
    assert_eq!((r.entries_removed, r.snapshots_removed), (1, 1));

    // e2's pinned blob frees nothing, so reaching a limit that needs more than e2's
    // snapshot also takes e3; the pinned blob survives everything.
    let now = store.usage().unwrap().total();
    let r = gc::prune(&store, &opts(now - 300 * 1024), &fake).unwrap();
    assert_eq!(keys(&store), Vec::<String>::new());
    assert_eq!(r.entries_removed, 2);
    assert!(store.list_snapshots().unwrap().is_empty());
    assert!(store.has_blob(&b2) && !store.has_blob(&tar3));
    assert!(store.meta_list(OWNED).unwrap().is_empty());
}

#[test]
fn all_removes_every_entry_and_cache_mount_but_keeps_pins() {
    let (_d, store) = open();
    let s = snapshot(&store, 1, 4);
    let (b, pin) = (blob(&store, 1, 4), blob(&store, 2, 4));
    store.index_put("sha256:aa", &record(&[(&s, &b)])).unwrap();
    let mounts = store.root().join(rbuild_cache::usage::CACHE_MOUNTS_DIR);
    std::fs::create_dir_all(mounts.join("m1")).unwrap();
    std::fs::write(mounts.join("m1/f"), b"x").unwrap();
    let opts = PruneOptions {
        all: true,
        ..PruneOptions::default()
    };
    let r = gc::prune(&store, &opts, &Fake::new(&[&pin])).unwrap();
    assert_eq!(
        (r.entries_removed, r.snapshots_removed, r.blobs_removed),
        (1, 1, 1)
    );
    assert!(keys(&store).is_empty());
    assert!(store.has_blob(&pin) && !store.has_blob(&b));
    assert!(!mounts.join("m1").exists());
}

#[test]
fn a_failing_pin_computation_removes_nothing() {
    let (_d, store) = open();
    let s = snapshot(&store, 1, 4);
    let b = blob(&store, 1, 4);
    store.index_put("sha256:aa", "unreadable").unwrap();
    let mut fake = Fake::new(&[]);
    fake.fail_pins = true;
    let opts = PruneOptions {
        all: true,
        ..PruneOptions::default()
    };
    assert!(gc::prune(&store, &opts, &fake).is_err());
    assert_eq!(keys(&store), ["sha256:aa"]);
    assert_eq!(store.list_snapshots().unwrap(), [s]);
    assert!(store.has_blob(&b));
}

#[test]
fn auto_gc_runs_only_above_the_ceiling_and_never_during_a_lease() {
    let (_d, store) = open();
    let s = snapshot(&store, 1, 64);
    store.index_put("sha256:aa", &record(&[(&s, "")])).unwrap();
    let fake = Fake::new(&[]);
    let total = store.usage().unwrap().total();

    assert_eq!(gc::auto_gc(&store, total + 1, &fake).unwrap(), None);
    assert_eq!(keys(&store), ["sha256:aa"]);

    let lease = gc::lease(&store).unwrap();
    assert!(gc::gc_lock(&store, false).unwrap().is_none());
    assert_eq!(
        gc::auto_gc(&store, 1, &fake).unwrap(),
        None,
        "a build holds a lease"
    );
    assert_eq!(keys(&store), ["sha256:aa"]);
    drop(lease);

    let r = gc::auto_gc(&store, 1, &fake).unwrap().unwrap();
    assert_eq!((r.entries_removed, r.snapshots_removed), (1, 1));
    assert!(store.list_snapshots().unwrap().is_empty());
    // The GC lock is released afterwards: a build can take its lease again.
    drop(gc::lease(&store).unwrap());
}
