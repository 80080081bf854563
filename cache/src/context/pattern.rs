//! Glob matching: Go `filepath.Match` for one path segment ([`glob_match`]) and the
//! `.dockerignore` matcher ([`ExcludeMatcher`]) with moby/patternmatcher semantics.
//!
//! moby compiles each pattern to an anchored regexp: `*` → `[^/]*`, `?` → `[^/]`, `**` followed
//! by `/` (or not at the end) → `(.*/)?`, a trailing `**` → `.*`, `\x` → literal `x`, `[…]` a
//! character class. A path is matched by a pattern if the path itself or any of its parent
//! directories matches; the last matching pattern wins, and `!pattern` re-includes.
//! We implement the same language with a small backtracking matcher (no regex dependency).

use crate::error::{CacheError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `*`: any run of non-`/` characters.
    Star,
    /// `?`: one non-`/` character.
    Quest,
    /// `[...]` / `[^...]`.
    Class {
        neg: bool,
        ranges: Vec<(char, char)>,
    },
    /// `**` not at the end: `(.*/)?`.
    DStar,
    /// `**` at the end: `.*`.
    DStarEnd,
}

/// Parse a class body after `[`; returns the token and the rest of the pattern.
fn parse_class(
    mut chars: std::iter::Peekable<std::str::Chars<'_>>,
) -> Option<(Tok, std::iter::Peekable<std::str::Chars<'_>>)> {
    let mut neg = false;
    if chars.peek() == Some(&'^') {
        chars.next();
        neg = true;
    }
    let mut ranges = Vec::new();
    loop {
        let c = chars.next()?;
        if c == ']' {
            if ranges.is_empty() {
                return None; // Go: empty character class is a bad pattern
            }
            return Some((Tok::Class { neg, ranges }, chars));
        }
        let lo = if c == '\\' {
            chars.next()?
        } else if c == '-' {
            return None;
        } else {
            c
        };
        let hi = if chars.peek() == Some(&'-') {
            chars.next();
            let h = chars.next()?;
            let h = if h == '\\' {
                chars.next()?
            } else if h == ']' || h == '-' {
                return None;
            } else {
                h
            };
            if h < lo {
                return None;
            }
            h
        } else {
            lo
        };
        ranges.push((lo, hi));
    }
}

/// Compile a pattern. `double_star` enables the moby `**` rule; without it `**` is two stars.
fn compile(pattern: &str, double_star: bool) -> Option<Vec<Tok>> {
    let mut toks = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                if double_star && chars.peek() == Some(&'*') {
                    chars.next();
                    if chars.peek() == Some(&'/') {
                        chars.next();
                    }
                    if chars.peek().is_none() {
                        toks.push(Tok::DStarEnd);
                    } else {
                        toks.push(Tok::DStar);
                    }
                } else if toks.last() != Some(&Tok::Star) {
                    toks.push(Tok::Star);
                }
            }
            '?' => toks.push(Tok::Quest),
            '\\' => match chars.next() {
                Some(n) => toks.push(Tok::Lit(n)),
                None => return None, // Go: trailing backslash is a bad pattern
            },
            '[' => {
                let (t, rest) = parse_class(chars)?;
                toks.push(t);
                chars = rest;
            }
            c => toks.push(Tok::Lit(c)),
        }
    }
    Some(toks)
}

fn class_has(neg: bool, ranges: &[(char, char)], c: char) -> bool {
    ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != neg
}

fn matches(toks: &[Tok], s: &str) -> bool {
    let Some((first, rest)) = toks.split_first() else {
        return s.is_empty();
    };
    match first {
        Tok::Lit(c) => s.starts_with(*c) && matches(rest, &s[c.len_utf8()..]),
        Tok::Quest => match s.chars().next() {
            Some(c) if c != '/' => matches(rest, &s[c.len_utf8()..]),
            _ => false,
        },
        Tok::Class { neg, ranges } => match s.chars().next() {
            Some(c) if c != '/' && class_has(*neg, ranges, c) => matches(rest, &s[c.len_utf8()..]),
            _ => false,
        },
        Tok::Star => {
            let mut i = 0;
            loop {
                if matches(rest, &s[i..]) {
                    return true;
                }
                match s[i..].chars().next() {
                    Some(c) if c != '/' => i += c.len_utf8(),
                    _ => return false,
                }
            }
        }
        Tok::DStar => {
            if matches(rest, s) {
                return true;
            }
            s.bytes()
                .enumerate()
                .any(|(j, b)| b == b'/' && matches(rest, &s[j + 1..]))
        }
        Tok::DStarEnd => true,
    }
}

/// Go `filepath.Match(pattern, name)` on Unix: `*` (no `/`), `?`, `[a-z]`, `[^a]`, `\` escapes.
/// A malformed pattern matches nothing.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    match compile(pattern, false) {
        Some(t) => matches(&t, name),
        None => false,
    }
}

/// Whether a selector segment contains glob metacharacters.
pub(crate) fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '[', '\\'])
}

/// Clean a slash path like Go's `path.Clean`, relative to the context root: no leading `/`,
/// no `.` or empty segments, `..` resolved (and clamped at the root). Returns "" for the root.
pub(crate) fn clean_rel(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    out.join("/")
}

#[derive(Debug, Clone)]
struct Pattern {
    text: String,
    exception: bool,
    toks: Vec<Tok>,
    /// Per `/`-separated segment: `None` for a segment containing `**` (matches any depth).
    segs: Vec<Option<Vec<Tok>>>,
}

impl Pattern {
    /// Could this pattern match some path strictly below `dir` (segments)?
    fn could_match_under(&self, dir: &[&str]) -> bool {
        let mut segs = self.segs.as_slice();
        for d in dir {
            match segs.split_first() {
                None => return false,
                Some((None, _)) => return true,
                Some((Some(t), rest)) => {
                    if !matches(t, d) {
                        return false;
                    }
                    segs = rest;
                }
            }
        }
        !segs.is_empty()
    }
}

/// `.dockerignore` matcher with moby/patternmatcher semantics (not gitignore): patterns are
/// anchored at the context root, `**` spans directories, a path is excluded when it or a parent
/// matches, `!` re-includes, the last matching pattern wins.
#[derive(Debug, Clone, Default)]
pub struct ExcludeMatcher {
    pats: Vec<Pattern>,
    has_exceptions: bool,
}

impl ExcludeMatcher {
    /// Build a matcher from `.dockerignore` lines (comments and blank lines already removed).
    /// Leading/trailing whitespace is trimmed, empty patterns skipped, patterns path-cleaned.
    /// A lone `!` or a malformed glob is an error.
    pub fn new(patterns: &[String]) -> Result<Self, CacheError> {
        let mut pats = Vec::with_capacity(patterns.len());
        for raw in patterns {
            let p = raw.trim();
            if p.is_empty() {
                continue;
            }
            let (exception, body) = match p.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, p),
            };
            if exception && body.is_empty() {
                return Err(CacheError::InvalidPattern {
                    pattern: raw.clone(),
                    reason: "illegal exclusion pattern \"!\"",
                });
            }
            let text = clean_rel(body);
            let text = if text.is_empty() {
                ".".to_string()
            } else {
                text
            };
            let bad = || CacheError::InvalidPattern {
                pattern: raw.clone(),
                reason: "syntax error in pattern (unclosed or empty [ ], or trailing \\)",
            };
            let toks = compile(&text, true).ok_or_else(bad)?;
            let mut segs = Vec::new();
            for s in text.split('/') {
                if s.contains("**") {
                    segs.push(None);
                } else {
                    segs.push(Some(compile(s, false).ok_or_else(bad)?));
                }
            }
            pats.push(Pattern {
                text,
                exception,
                toks,
                segs,
            });
        }
        let has_exceptions = pats.iter().any(|p| p.exception);
        Ok(ExcludeMatcher {
            pats,
            has_exceptions,
        })
    }

    /// A matcher that excludes nothing.
    pub fn empty() -> Self {
        ExcludeMatcher::default()
    }

    /// True when there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.pats.is_empty()
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.pats.len()
    }

    /// True when some pattern is a `!` exception.
    pub fn has_exceptions(&self) -> bool {
        self.has_exceptions
    }

    /// The cleaned patterns, `!`-prefixed for exceptions (stable text for cache keys).
    pub fn patterns(&self) -> Vec<String> {
        self.pats
            .iter()
            .map(|p| {
                if p.exception {
                    format!("!{}", p.text)
                } else {
                    p.text.clone()
                }
            })
            .collect()
    }

    /// Whether `rel_path` (relative to the context root, `/`-separated) is excluded.
    /// The root itself ("", ".", "/") is never excluded.
    pub fn is_excluded(&self, rel_path: &str) -> bool {
        if self.pats.is_empty() {
            return false;
        }
        let rel = clean_rel(rel_path);
        if rel.is_empty() {
            return false;
        }
        self.decide(&self.bits_for(&rel))
    }

    /// Whether a directory can be skipped entirely: it is excluded and no `!` pattern could
    /// re-include anything below it.
    pub fn can_skip_dir(&self, rel_dir: &str) -> bool {
        let rel = clean_rel(rel_dir);
        if rel.is_empty() || self.pats.is_empty() {
            return false;
        }
        let bits = self.bits_for(&rel);
        self.can_skip_with(&bits, &rel)
    }

    /// Per pattern: does it match `rel` or one of its parents?
    pub(crate) fn bits_for(&self, rel: &str) -> Vec<bool> {
        let mut bits = vec![false; self.pats.len()];
        let mut start = 0;
        loop {
            let end = rel[start..].find('/').map(|i| start + i);
            let prefix = match end {
                Some(e) => &rel[..e],
                None => rel,
            };
            for (b, p) in bits.iter_mut().zip(&self.pats) {
                if !*b && matches(&p.toks, prefix) {
                    *b = true;
                }
            }
            match end {
                Some(e) => start = e + 1,
                None => break,
            }
        }
        bits
    }

    /// Bits of `rel` given the bits of its parent directory.
    pub(crate) fn child_bits(&self, parent: &[bool], rel: &str) -> Vec<bool> {
        self.pats
            .iter()
            .zip(parent)
            .map(|(p, &b)| b || matches(&p.toks, rel))
            .collect()
    }

    /// Last-match-wins decision over precomputed bits.
    pub(crate) fn decide(&self, bits: &[bool]) -> bool {
        for (p, &b) in self.pats.iter().zip(bits).rev() {
            if b {
                return !p.exception;
            }
        }
        false
    }

    /// Decision for `rel` given its parent's bits, without allocating.
    pub(crate) fn excluded_given_parent(&self, parent: &[bool], rel: &str) -> bool {
        for (p, &b) in self.pats.iter().zip(parent).rev() {
            if b || matches(&p.toks, rel) {
                return !p.exception;
            }
        }
        false
    }

    pub(crate) fn can_skip_with(&self, bits: &[bool], rel_dir: &str) -> bool {
        if !self.decide(bits) {
            return false;
        }
        if !self.has_exceptions {
            return true;
        }
        let segs: Vec<&str> = rel_dir.split('/').collect();
        !self
            .pats
            .iter()
            .any(|p| p.exception && p.could_match_under(&segs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_filepath_match_table() {
        let rows: &[(&str, &str, bool)] = &[
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[", "a", false),
            ("[^", "a", false),
            ("[]a]", "]", false),
            ("a\\", "a", false),
            ("*x", "xxx", true),
        ];
        for (p, n, want) in rows {
            assert_eq!(glob_match(p, n), *want, "glob_match({p:?}, {n:?})");
        }
    }

    #[test]
    fn could_match_under() {
        let m = ExcludeMatcher::new(&["a".into(), "!a/b/keep".into()]).unwrap();
        assert!(!m.can_skip_dir("a"));
        assert!(!m.can_skip_dir("a/b"));
        assert!(m.can_skip_dir("a/c"));
        let m = ExcludeMatcher::new(&["a".into(), "!**/keep".into()]).unwrap();
        assert!(!m.can_skip_dir("a/c"));
        let m = ExcludeMatcher::new(&["*".into(), "!*/keep".into()]).unwrap();
        assert!(!m.can_skip_dir("x"));
        assert!(m.can_skip_dir("x/y"));
    }
}
