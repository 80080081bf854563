//! The result index: cache key → chain, the one place results are looked up and recorded.
//!
//! A record is JSON (`{"chain": [...], "build": "...", "time": ...}`) in the store's SQLite
//! index. A record whose snapshots or blobs were pruned is a miss, never an error. Building a
//! key is serialised by the store lock `key-<hex>` (a flock: other threads and other rbuild
//! processes on the same store), taken by the scheduler ([`crate::sched`]) before it looks the
//! key up a second time and runs the step.

use serde::{Deserialize, Serialize};

use crate::{Chain, SolveError, Solver};

/// An index record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) chain: Chain,
    /// Build that produced the result, and when (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) build: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) time: Option<i64>,
}

impl Solver {
    /// The local index's record for `key`, when all its snapshots and blobs still exist.
    pub(crate) fn lookup_local(&self, key: &str) -> Result<Option<Record>, SolveError> {
        let store = &self.cfg.store;
        let Some(entry) = store.index_get(key)? else {
            return Ok(None);
        };
        let Ok(rec) = serde_json::from_str::<Record>(&entry.value) else {
            return Ok(None);
        };
        if rec.chain.iter().all(|l| {
            store.snapshot_exists(&l.snapshot) && (l.blob.is_empty() || store.has_blob(&l.blob))
        }) {
            let _ = store.index_touch(key);
            Ok(Some(rec))
        } else {
            Ok(None)
        }
    }

    /// Record `chain` as the result of `key`, made by this build now.
    pub(crate) fn record(&self, key: &str, chain: &Chain) -> Result<(), SolveError> {
        self.record_as(
            key,
            chain,
            Some(self.cfg.cache.build_id.clone()),
            Some(crate::ops::now_secs()),
        )
    }

    /// Record `chain` as the result of `key`, made by `build` at `time` (an imported result
    /// keeps the build that made it).
    pub(crate) fn record_as(
        &self,
        key: &str,
        chain: &Chain,
        build: Option<String>,
        time: Option<i64>,
    ) -> Result<(), SolveError> {
        let json = serde_json::to_string(&Record {
            chain: chain.clone(),
            build,
            time,
        })
        .map_err(|e| SolveError::BadRecord {
            key: key.to_string(),
            message: e.to_string(),
        })?;
        self.cfg.store.index_put(key, &json)?;
        Ok(())
    }

    /// The lock that serialises building `key`.
    pub(crate) fn key_lock(&self, key: &str) -> Result<rbuild_cache::StoreLock, SolveError> {
        Ok(self.cfg.store.lock(&rbuild_cache::gc::key_lock_name(key))?)
    }
}
