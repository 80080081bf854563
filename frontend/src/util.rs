//! Small helpers: slash-path cleaning, glob matching and "did you mean" suggestions.

/// Clean a slash-separated path like Go's `path.Clean` (no filesystem access).
pub(crate) fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return ".".to_string();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_string()
    } else {
        joined
    }
}

/// Resolve `p` against the absolute directory `base` and clean it (absolute result).
pub(crate) fn join_abs(base: &str, p: &str) -> String {
    if p.starts_with('/') {
        clean_path(p)
    } else {
        let b = if base.is_empty() { "/" } else { base };
        clean_path(&format!("/{b}/{p}"))
    }
}

/// One element of a glob pattern (`${v#p}` patterns use the first three; `.dockerignore`-style
/// path segments also classes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GlobTok {
    /// `*`: any run of characters.
    Any,
    /// `?`: one character.
    One,
    Lit(char),
    /// `[…]`: negated, ranges (single characters are `(c, c)`).
    Class(bool, Vec<(char, char)>),
}

impl GlobTok {
    fn matches(&self, c: char) -> bool {
        match self {
            GlobTok::Any => false,
            GlobTok::One => true,
            GlobTok::Lit(l) => *l == c,
            GlobTok::Class(neg, ranges) => ranges.iter().any(|(a, b)| *a <= c && c <= *b) != *neg,
        }
    }
}

/// Whole-text glob match: backtracking over the last `*` only, so O(|pattern|·|text|) steps,
/// never exponential. `charge` is told the steps taken (in batches) and may stop the match.
pub(crate) fn glob_match<E>(
    p: &[GlobTok],
    t: &[char],
    mut charge: impl FnMut(usize) -> Result<(), E>,
) -> Result<bool, E> {
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    let mut steps = 0usize;
    while let Some(&c) = t.get(ti) {
        steps += 1;
        if steps >= 4096 {
            charge(steps)?;
            steps = 0;
        }
        match p.get(pi) {
            Some(GlobTok::Any) => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some(tok) if tok.matches(c) => {
                pi += 1;
                ti += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => {
                charge(steps + 1)?;
                return Ok(false);
            }
        }
    }
    charge(steps + 1)?;
    Ok(p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|t| *t == GlobTok::Any)))
}

/// Optimal-string-alignment edit distance (transpositions count as one edit).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rolling rows: i-2, i-1, i.
    let mut prev2: Vec<usize> = Vec::new();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let at = |row: &[usize], k: usize| row.get(k).copied().unwrap_or(usize::MAX / 2);
            let cost = usize::from(ca != cb);
            let mut v = (at(&prev, j + 1) + 1)
                .min(at(&cur, j) + 1)
                .min(at(&prev, j) + cost);
            let transposed = i > 0 && j > 0 && a.get(i - 1) == Some(cb) && b.get(j - 1) == Some(ca);
            if transposed {
                v = v.min(at(&prev2, j - 1) + 1);
            }
            cur.push(v);
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev.last().copied().unwrap_or(0)
}

/// The closest candidate within a small edit distance, if any.
pub fn suggest<'a, I: IntoIterator<Item = &'a str>>(word: &str, candidates: I) -> Option<String> {
    let word = word.to_lowercase();
    let max = if word.chars().count() <= 3 { 1 } else { 2 };
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let dist = edit_distance(&word, &c.to_lowercase());
        if dist <= max && best.is_none_or(|(bd, _)| dist < bd) {
            best = Some((dist, c));
        }
    }
    best.map(|(_, c)| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_matches_go_semantics() {
        assert_eq!(clean_path(""), ".");
        assert_eq!(clean_path("/"), "/");
        assert_eq!(clean_path("a/./b/../c/"), "a/c");
        assert_eq!(clean_path("/../x"), "/x");
        assert_eq!(clean_path("../x"), "../x");
        assert_eq!(clean_path("//a//b"), "/a/b");
        assert_eq!(join_abs("/src", "sub/../x"), "/src/x");
        assert_eq!(join_abs("/src", "/abs"), "/abs");
        assert_eq!(join_abs("", "."), "/");
    }

    #[test]
    fn glob_steps_are_bounded_by_pattern_times_text() {
        // `*a*a…*b` over "aaa…": exponential for a recursive matcher.
        let mut p: Vec<GlobTok> = Vec::new();
        for _ in 0..12 {
            p.push(GlobTok::Any);
            p.push(GlobTok::Lit('a'));
        }
        p.push(GlobTok::Any);
        p.push(GlobTok::Lit('b'));
        let t: Vec<char> = "a".repeat(2000).chars().collect();
        let mut steps = 0usize;
        let r = glob_match(&p, &t, |n| {
            steps += n;
            Ok::<(), ()>(())
        });
        assert_eq!(r, Ok(false));
        assert!(steps <= (p.len() + 1) * (t.len() + 1), "{steps} steps");
        let class = [
            GlobTok::Class(false, vec![('a', 'c')]),
            GlobTok::Class(true, vec![('x', 'x')]),
        ];
        assert_eq!(
            glob_match(&class, &['b', 'y'], |_| Ok::<(), ()>(())),
            Ok(true)
        );
        assert_eq!(
            glob_match(&class, &['b', 'x'], |_| Ok::<(), ()>(())),
            Ok(false)
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("FORM", "FROM"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("ca", "abc"), 3);
        assert_eq!(suggest("FORM", ["FROM", "RUN"]), Some("FROM".into()));
        assert_eq!(suggest("prod", ["prd", "build"]), Some("prd".into()));
        assert_eq!(suggest("zzzzzz", ["FROM"]), None);
    }
}
