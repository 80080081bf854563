//! Per-step cgroups for the [`Resources`] limits (`--memory`, `--cpu-quota`, `--cpu-period`).
//!
//! The helper process creates a cgroup `rbuild-<pid>-<n>` below its own cgroup, writes the
//! limits, moves itself into it *before* it forks the step's init (or starts runc), so every
//! process of the step is inside; afterwards it moves back and removes the cgroup (with any
//! sub-cgroup runc made in it).
//!
//! Which hierarchy: cgroup v2 when the unified hierarchy can delegate the needed controllers
//! (`memory`, `cpu`) to a child of the helper's cgroup; otherwise the v1 `memory` and `cpu`
//! hierarchies (hybrid layouts such as systemd's, where v2 has no controllers). When neither
//! works, [`StepCgroup::create`] fails with the reason, and [`check`] lets a caller say so
//! before a build starts.
//!
//! Files written: v2 `memory.max`, `memory.swap.max` (0: no swap beyond the limit), `cpu.max`;
//! v1 `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` (when swap accounting exists),
//! `cpu.cfs_period_us`, `cpu.cfs_quota_us`. An OOM kill is read back from v2 `memory.events`
//! or v1 `memory.oom_control` (`oom_kill N`, else a SIGKILL with `memory.max_usage_in_bytes` at the limit).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::ExecutorError;
use crate::Resources;

/// Default CFS period (µs), as Docker.
const DEFAULT_PERIOD: u64 = 100_000;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A cgroup (one dir in v2, one per controller hierarchy in v1) created for one step.
#[derive(Debug)]
pub struct StepCgroup {
    /// (created dir, the dir the process was in before joining).
    dirs: Vec<(PathBuf, PathBuf)>,
    /// Where each dir is shown inside the step (read-only): `/sys/fs/cgroup` (v2) or
    /// `/sys/fs/cgroup/<controller>` (v1).
    views: Vec<String>,
    /// Where the OOM kill counter is (`memory.events` or `memory.oom_control`).
    oom_file: Option<PathBuf>,
    /// The memory limit.
    memory: Option<u64>,
    joined: bool,
}

/// The cgroup paths of this process: the v2 path and v1 paths by controller.
struct Own {
    unified: Option<String>,
    v1: Vec<(Vec<String>, String)>,
}

fn own() -> Result<Own, ExecutorError> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| ExecutorError::sys("read", "/proc/self/cgroup", e))?;
    let mut own = Own {
        unified: None,
        v1: Vec::new(),
    };
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if ctrls.is_empty() {
            own.unified = Some(path.to_string());
        } else {
            own.v1.push((
                ctrls.split(',').map(String::from).collect(),
                path.to_string(),
            ));
        }
    }
    Ok(own)
}

/// A cgroup filesystem mount: its type (`cgroup`/`cgroup2`), super options, root and mount point.
struct CgMount {
    v2: bool,
    opts: Vec<String>,
    root: String,
    point: PathBuf,
}

fn mounts() -> Result<Vec<CgMount>, ExecutorError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| ExecutorError::sys("read", "/proc/self/mountinfo", e))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        let (Some(root), Some(point), Some(fstype)) = (pre.get(3), pre.get(4), post.first()) else {
            continue;
        };
        if *fstype != "cgroup" && *fstype != "cgroup2" {
            continue;
        }
        out.push(CgMount {
            v2: *fstype == "cgroup2",
            opts: post
                .get(2)
                .map(|o| o.split(',').map(String::from).collect())
                .unwrap_or_default(),
            root: root.to_string(),
            point: PathBuf::from(point.replace("\\040", " ")),
        });
    }
    Ok(out)
}

/// Host directory of cgroup `path` in mount `m`.
fn dir_in(m: &CgMount, path: &str) -> Option<PathBuf> {
    let rel = if m.root == "/" {
        path
    } else {
        path.strip_prefix(m.root.as_str())?
    };
    Some(m.point.join(rel.trim_start_matches('/')))
}

fn write(path: &Path, value: &str) -> Result<(), ExecutorError> {
    std::fs::write(path, value).map_err(|e| ExecutorError::sys("write cgroup file", path, e))
}

fn read_counter(path: &Path, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

fn what(r: &Resources) -> &'static str {
    match (
        r.memory.is_some(),
        r.cpu_quota.is_some() || r.cpu_period.is_some(),
    ) {
        (true, true) => "memory and CPU limits",
        (true, false) => "a memory limit",
        _ => "a CPU limit",
    }
}

impl StepCgroup {
    /// Create the cgroup for `res` (nothing to do, `None`, when no limit is set).
    pub fn create(res: &Resources) -> Result<Option<StepCgroup>, ExecutorError> {
        if res.is_empty() {
            return Ok(None);
        }
        let name = format!(
            "rbuild-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let own = own()?;
        let mounts = mounts()?;
        let v2_err = match Self::create_v2(res, &name, &own, &mounts) {
            Ok(cg) => return Ok(Some(cg)),
            Err(e) => e,
        };
        match Self::create_v1(res, &name, &own, &mounts) {
            Ok(cg) => Ok(Some(cg)),
            Err(v1_err) => Err(ExecutorError::Setup(format!(
                "cannot apply {} with cgroups on this host (cgroup v2: {v2_err}; cgroup v1: {v1_err})",
                what(res)
            ))),
        }
    }

    fn needed(res: &Resources) -> Vec<&'static str> {
        let mut v = Vec::new();
        if res.memory.is_some() {
            v.push("memory");
        }
        if res.cpu_quota.is_some() || res.cpu_period.is_some() {
            v.push("cpu");
        }
        v
    }

    fn create_v2(
        res: &Resources,
        name: &str,
        own: &Own,
        mounts: &[CgMount],
    ) -> Result<StepCgroup, String> {
        let path = own.unified.as_deref().ok_or("no unified hierarchy")?;
        let m = mounts
            .iter()
            .find(|m| m.v2)
            .ok_or("cgroup2 is not mounted")?;
        let parent = dir_in(m, path).ok_or("own cgroup outside the mount")?;
        let available = std::fs::read_to_string(parent.join("cgroup.controllers"))
            .map_err(|e| format!("{}: {e}", parent.join("cgroup.controllers").display()))?;
        let needed = Self::needed(res);
        for c in &needed {
            if !available.split_whitespace().any(|a| a == *c) {
                return Err(format!("controller {c} is not available"));
            }
        }
        let subtree = parent.join("cgroup.subtree_control");
        let enabled = std::fs::read_to_string(&subtree).unwrap_or_default();
        let missing: Vec<String> = needed
            .iter()
            .filter(|c| !enabled.split_whitespace().any(|a| a == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if !missing.is_empty() {
            std::fs::write(&subtree, missing.join(" ")).map_err(|e| {
                format!("enable {} in {}: {e}", missing.join(" "), subtree.display())
            })?;
        }
        let dir = parent.join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cg = StepCgroup {
            dirs: vec![(dir.clone(), parent)],
            views: vec!["/sys/fs/cgroup".into()],
            oom_file: res.memory.map(|_| dir.join("memory.events")),
            memory: res.memory,
            joined: false,
        };
        let set = |file: &str, v: String| write(&dir.join(file), &v).map_err(|e| e.to_string());
        if let Some(mem) = res.memory {
            set("memory.max", mem.to_string())?;
            if dir.join("memory.swap.max").exists() {
                set("memory.swap.max", "0".into())?;
            }
        }
        if res.cpu_quota.is_some() || res.cpu_period.is_some() {
            let period = res.cpu_period.unwrap_or(DEFAULT_PERIOD);
            let quota = res
                .cpu_quota
                .map(|q| q.to_string())
                .unwrap_or_else(|| "max".into());
            set("cpu.max", format!("{quota} {period}"))?;
        }
        Ok(cg)
    }

    fn create_v1(
        res: &Resources,
        name: &str,
        own: &Own,
        mounts: &[CgMount],
    ) -> Result<StepCgroup, String> {
        let mut cg = StepCgroup {
            dirs: Vec::new(),
            views: Vec::new(),
            oom_file: None,
            memory: res.memory,
            joined: false,
        };
        for c in Self::needed(res) {
            let m = mounts
                .iter()
                .find(|m| !m.v2 && m.opts.iter().any(|o| o == c))
                .ok_or_else(|| format!("no {c} hierarchy is mounted"))?;
            let path = own
                .v1
                .iter()
                .find(|(ctrls, _)| ctrls.iter().any(|x| x == c))
                .map(|(_, p)| p.as_str())
                .ok_or_else(|| format!("this process is in no {c} cgroup"))?;
            let parent = dir_in(m, path).ok_or("own cgroup outside the mount")?;
            let dir = parent.join(name);
            std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
            cg.dirs.push((dir.clone(), parent));
            cg.views.push(format!("/sys/fs/cgroup/{c}"));
            let set = |file: &str, v: String| write(&dir.join(file), &v).map_err(|e| e.to_string());
            if c == "memory" {
                if let Some(mem) = res.memory {
                    set("memory.limit_in_bytes", mem.to_string())?;
                    if dir.join("memory.memsw.limit_in_bytes").exists() {
                        set("memory.memsw.limit_in_bytes", mem.to_string())?;
                    }
                    cg.oom_file = Some(dir.join("memory.oom_control"));
                }
            } else {
                set(
                    "cpu.cfs_period_us",
                    res.cpu_period.unwrap_or(DEFAULT_PERIOD).to_string(),
                )?;
                if let Some(q) = res.cpu_quota {
                    set("cpu.cfs_quota_us", q.to_string())?;
                }
            }
        }
        Ok(cg)
    }

    /// Move the calling process into the cgroup (its children will be born inside).
    pub fn join(&mut self) -> Result<(), ExecutorError> {
        let pid = std::process::id().to_string();
        for (dir, _) in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid)?;
        }
        self.joined = true;
        Ok(())
    }

    /// Move the calling process back out of the cgroup (the processes it started stay inside).
    /// Best effort: a process that cannot move stays, as before.
    pub fn leave(&mut self) {
        if !self.joined {
            return;
        }
        let pid = std::process::id().to_string();
        for (_, parent) in &self.dirs {
            let _ = std::fs::write(parent.join("cgroup.procs"), &pid);
        }
        self.joined = false;
    }

    /// Whether the OOM killer killed a process of the step. `killed`: the step ended by
    /// SIGKILL. In v1 the kill is counted in the victim's own cgroup (with runc, a sub-cgroup
    /// already gone), so a SIGKILL after the usage peaked at the limit counts too.
    pub fn oom_killed(&self, killed: bool) -> bool {
        let Some(f) = self.oom_file.as_deref() else {
            return false;
        };
        if read_counter(f, "oom_kill") > 0 {
            return true;
        }
        // v1: the peak reached the limit (within 1 MiB) and the step was SIGKILLed.
        let peak = std::fs::read_to_string(f.with_file_name("memory.max_usage_in_bytes"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        killed
            && f.file_name().is_some_and(|n| n == "memory.oom_control")
            && self
                .memory
                .is_some_and(|m| peak >= m.saturating_sub(1 << 20))
    }

    /// Host directories of the cgroup (one per hierarchy).
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|(d, _)| d.as_path())
    }

    /// (path inside the step, host directory) of each hierarchy, for read-only views that let
    /// the step read its own limits.
    pub(crate) fn views(&self) -> Vec<(String, PathBuf)> {
        self.views
            .iter()
            .cloned()
            .zip(self.dirs.iter().map(|(d, _)| d.clone()))
            .collect()
    }
}

/// Remove a cgroup directory and the sub-cgroups inside it (deepest first).
fn remove_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        self.leave();
        for (dir, _) in &self.dirs {
            remove_tree(dir);
        }
    }
}

/// Check that `res` can be applied on this host, by creating (and removing) a cgroup with these
/// limits. The error says why not.
pub fn check(res: &Resources) -> Result<(), ExecutorError> {
    StepCgroup::create(res).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_paths() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("memory.oom_control");
        std::fs::write(&f, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        assert_eq!(read_counter(&f, "oom_kill"), 2);
        assert_eq!(read_counter(&f, "missing"), 0);
        let m = CgMount {
            v2: false,
            opts: vec!["rw".into(), "memory".into()],
            root: "/".into(),
            point: "/sys/fs/cgroup/memory".into(),
        };
        assert_eq!(
            dir_in(&m, "/a/b").unwrap(),
            Path::new("/sys/fs/cgroup/memory/a/b")
        );
        let nested = CgMount {
            root: "/a".into(),
            ..m
        };
        assert_eq!(
            dir_in(&nested, "/a/b").unwrap(),
            Path::new("/sys/fs/cgroup/memory/b")
        );
        assert!(dir_in(&nested, "/c").is_none());
        assert!(StepCgroup::create(&Resources::default()).unwrap().is_none());
    }
}
