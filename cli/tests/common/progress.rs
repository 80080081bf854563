//! Which steps a build ran, read from rbuild's plain progress output (`#N [..] NAME` headers,
//! `#N CACHED`, `#N EXPLAIN: …` from `--explain`), shared by the cache test crates.

use std::collections::BTreeMap;
use std::process::Output;

/// One build's outcome, parsed from plain progress.
pub struct Build {
    pub out: Output,
    /// Step description → (ran, explanation).
    pub steps: BTreeMap<String, (bool, String)>,
    /// Raw progress lines in order.
    pub lines: Vec<String>,
}

impl Build {
    pub fn parse(out: Output) -> Self {
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        let mut cached: BTreeMap<String, bool> = BTreeMap::new();
        let mut why: BTreeMap<String, String> = BTreeMap::new();
        for l in &lines {
            let Some(rest) = l.strip_prefix('#') else {
                continue;
            };
            let Some((n, body)) = rest.split_once(' ') else {
                continue;
            };
            if body.starts_with('[') && !names.contains_key(n) {
                names.insert(n.to_string(), body.to_string());
            } else if body == "CACHED" {
                cached.insert(n.to_string(), true);
            } else if let Some(r) = body.strip_prefix("EXPLAIN: ") {
                why.insert(n.to_string(), r.to_string());
            }
        }
        let steps = names
            .into_iter()
            .map(|(n, name)| {
                let ran = !cached.contains_key(&n);
                (name, (ran, why.get(&n).cloned().unwrap_or_default()))
            })
            .collect();
        Build { out, steps, lines }
    }

    pub fn ok(self) -> Self {
        assert!(
            self.out.status.success(),
            "rbuild failed ({:?}):\n{}",
            self.out.status,
            self.lines.join("\n")
        );
        self
    }

    /// The step whose description contains `what` (exactly one must).
    pub fn step(&self, what: &str) -> (bool, String) {
        let m: Vec<_> = self
            .steps
            .iter()
            .filter(|(k, _)| k.contains(what))
            .collect();
        assert_eq!(
            m.len(),
            1,
            "expected one step matching {what:?}, got {m:?}\n{}",
            self.lines.join("\n")
        );
        m[0].1.clone()
    }

    pub fn ran(&self, what: &str) -> bool {
        self.step(what).0
    }

    pub fn why(&self, what: &str) -> String {
        self.step(what).1
    }

    pub fn assert_ran(&self, what: &str) -> &Self {
        assert!(
            self.ran(what),
            "{what} should have run:\n{}",
            self.lines.join("\n")
        );
        self
    }

    pub fn assert_cached(&self, what: &str) -> &Self {
        assert!(
            !self.ran(what),
            "{what} should be cached:\n{}",
            self.lines.join("\n")
        );
        self
    }
}

impl Build {
    /// The descriptions of the steps that contain `what` and ran (were not `CACHED`).
    pub fn ran_matching(&self, what: &str) -> Vec<String> {
        self.steps
            .iter()
            .filter(|(k, (ran, _))| *ran && k.contains(what))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The descriptions of the steps that contain `what` and were `CACHED`.
    pub fn cached_matching(&self, what: &str) -> Vec<String> {
        self.steps
            .iter()
            .filter(|(k, (ran, _))| !*ran && k.contains(what))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// stderr as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
}
