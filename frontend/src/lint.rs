//! Helpers for the build checks (BuildKit's lint rules) that need more than one instruction's
//! state: which variables a word references, `.dockerignore` matching for `CopyIgnoredFile`,
//! and the description-comment form for `InvalidDefinitionDescription`.
//!
//! The rules raised while lowering (they need its scopes) are the `lint_*` methods of the
//! lowering state below; the lowering calls them per instruction and stage.

use std::collections::{BTreeSet, HashMap};

use crate::lower::flags::{flag, parse_flags, raw_words};
use crate::lower::{platform_args, Lowerer};
use crate::parser::Instruction;
use crate::shell;
use crate::util::{glob_match, GlobTok};
use crate::Diagnostic;
use crate::FrontendError;

/// A variable reference found in a word: its name and whether it carries a default or
/// alternative (`${v:-w}`, `${v-w}`, `${v:+w}`, `${v+w}`, `${v:?m}`, `${v?m}`), which BuildKit
/// does not report as undefined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VarRef {
    pub name: String,
    pub has_default: bool,
}

/// Variables referenced by `word` outside single quotes (and not escaped with `escape`).
pub(crate) fn referenced_vars(word: &str, escape: char) -> Vec<VarRef> {
    let chars: Vec<char> = word.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut in_single = false;
    let mut in_double = false;
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        if c == escape && !in_single {
            i += 2;
            continue;
        }
        if c == '\'' && !in_double {
            in_single = !in_single;
            i += 1;
            continue;
        }
        if c == '"' && !in_single {
            in_double = !in_double;
            i += 1;
            continue;
        }
        if c != '$' || in_single {
            i += 1;
            continue;
        }
        i += 1;
        if i < chars.len() && chars[i] == '{' {
            let start = i + 1;
            let mut j = start;
            while j < chars.len() && is_name(chars[j]) {
                j += 1;
            }
            if j > start {
                let name: String = chars[start..j].iter().collect();
                let next = chars.get(j).copied();
                let next2 = chars.get(j + 1).copied();
                let has_default = matches!(next, Some('-' | '+' | '?'))
                    || (next == Some(':') && matches!(next2, Some('-' | '+' | '?')));
                out.push(VarRef { name, has_default });
            }
            i = j;
        } else {
            let start = i;
            let mut j = start;
            while j < chars.len() && is_name(chars[j]) {
                j += 1;
            }
            if j > start && !chars[start].is_ascii_digit() {
                out.push(VarRef {
                    name: chars[start..j].iter().collect(),
                    has_default: false,
                });
            }
            i = j.max(start);
        }
    }
    out
}

/// Whether `rel` (a context-relative path without leading `/`) is excluded by cleaned
/// `.dockerignore` patterns (last match wins, `!` re-includes, a pattern matching a parent
/// directory excludes everything below it).
pub(crate) fn ignored(patterns: &[String], rel: &str) -> bool {
    let rel = rel.trim_start_matches("./").trim_start_matches('/');
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let mut excluded = false;
    for p in patterns {
        let (neg, pat) = match p.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, p.as_str()),
        };
        let pat = pat.trim_start_matches('/');
        let segs: Vec<&str> = pat.split('/').filter(|s| !s.is_empty()).collect();
        // The path or one of its parents matches.
        let hit = (1..=parts.len()).any(|n| match_segs(&segs, &parts[..n]));
        if hit {
            excluded = !neg;
        }
    }
    excluded
}

/// Whether the segments `pat` (with `**` for any number of segments) match all of `path`:
/// dynamic programming over (pattern, path) positions, O(|pat|·|path|) segment matches (a
/// recursive search is exponential in the number of `**`).
fn match_segs(pat: &[&str], path: &[&str]) -> bool {
    // ok[j] = pat[i..] matches path[j..], computed for i from the end.
    let n = path.len();
    let mut ok = vec![false; n + 1];
    if let Some(last) = ok.get_mut(n) {
        *last = true;
    }
    for seg in pat.iter().rev() {
        let mut next = vec![false; n + 1];
        if *seg == "**" {
            // Any number of segments: next[j] = ok[j] || next[j+1].
            let mut any = false;
            for j in (0..=n).rev() {
                any = any || ok.get(j).copied().unwrap_or(false);
                if let Some(slot) = next.get_mut(j) {
                    *slot = any;
                }
            }
        } else {
            for (j, p) in path.iter().enumerate() {
                if ok.get(j + 1).copied().unwrap_or(false) && glob(seg, p) {
                    if let Some(slot) = next.get_mut(j) {
                        *slot = true;
                    }
                }
            }
        }
        ok = next;
    }
    ok.first().copied().unwrap_or(false)
}

/// A `.dockerignore`-style segment pattern: `*`, `?`, `[…]` classes, backslash escapes.
fn glob_tokens(pat: &str) -> Vec<GlobTok> {
    let p: Vec<char> = pat.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&c) = p.get(i) {
        i += 1;
        match c {
            '*' => out.push(GlobTok::Any),
            '?' => out.push(GlobTok::One),
            '\\' if i < p.len() => {
                out.push(GlobTok::Lit(p.get(i).copied().unwrap_or('\\')));
                i += 1;
            }
            '[' => {
                let Some(len) = p.get(i..).and_then(|r| r.iter().position(|c| *c == ']')) else {
                    out.push(GlobTok::Lit('['));
                    continue;
                };
                let class = p.get(i..i + len).unwrap_or(&[]);
                i += len + 1;
                let (neg, class) = match class.split_first() {
                    Some(('^' | '!', rest)) => (true, rest),
                    _ => (false, class),
                };
                let mut ranges = Vec::new();
                let mut k = 0;
                while let Some(&a) = class.get(k) {
                    match (class.get(k + 1), class.get(k + 2)) {
                        (Some('-'), Some(&b)) => {
                            ranges.push((a, b));
                            k += 3;
                        }
                        _ => {
                            ranges.push((a, a));
                            k += 1;
                        }
                    }
                }
                out.push(GlobTok::Class(neg, ranges));
            }
            c => out.push(GlobTok::Lit(c)),
        }
    }
    out
}

/// `*`, `?` and `[…]` matching within one path segment.
fn glob(pat: &str, s: &str) -> bool {
    let t: Vec<char> = s.chars().collect();
    glob_match(&glob_tokens(pat), &t, |_| {
        Ok::<(), std::convert::Infallible>(())
    })
    .unwrap_or(false)
}

/// For `InvalidDefinitionDescription`: the comment directly above a definition (`above`, the
/// line before it), if any, must start with `# <name> `. Returns true when there is such a
/// comment and it does not.
pub(crate) fn bad_description(above: Option<&str>, name: &str) -> bool {
    let Some(above) = above else {
        return false;
    };
    let Some(comment) = above.trim_start().strip_prefix('#') else {
        return false;
    };
    // Parser directives at the top of the file are not descriptions.
    let is_directive = comment.trim_start().split_once('=').is_some_and(|(k, _)| {
        matches!(
            k.trim().to_ascii_lowercase().as_str(),
            "syntax" | "escape" | "check"
        )
    });
    if is_directive {
        return false;
    }
    let first = comment.split_whitespace().next().unwrap_or("");
    first != name
}

impl Lowerer<'_> {
    /// Record a build-check warning unless the rule is skipped by `# check=skip=`.
    pub(crate) fn lint(&mut self, line: u32, rule: &str, message: String) {
        let lower = rule.to_ascii_lowercase();
        if self.check_skip.contains("all") || self.check_skip.contains(&lower) {
            return;
        }
        let message = format!("{rule}: {message}");
        if self.check_error && self.lint_failure.is_none() {
            self.lint_failure = Some((line, message.clone()));
        }
        self.warnings.push(Diagnostic {
            line,
            end_line: line,
            message,
        });
    }

    /// A rule BuildKit marks experimental: reported only when enabled by
    /// `# check=experimental=<rule>` (or `all`).
    pub(crate) fn lint_experimental(&mut self, line: u32, rule: &str, message: String) {
        let lower = rule.to_ascii_lowercase();
        if self.check_experimental.contains("all") || self.check_experimental.contains(&lower) {
            self.lint(line, rule, message);
        }
    }

    /// FROM checks: UndefinedArgInFrom, InvalidDefaultArgInFrom, RedundantTargetPlatform,
    /// FromPlatformFlagConstDisallowed, InvalidDefinitionDescription.
    pub(crate) fn lint_from(
        &mut self,
        from: &Instruction,
        above: Option<&str>,
        declared: &BTreeSet<String>,
        defaults_only: &HashMap<String, String>,
    ) -> Result<(), FrontendError> {
        let line = from.line_start;
        let flags = parse_flags(from, &["platform"])?;
        let words = raw_words(&from.args, self.escape);
        let Some(base) = words.first() else {
            return Ok(());
        };
        let stage_name = match words.as_slice() {
            [_, as_kw, n] if as_kw.eq_ignore_ascii_case("as") => Some(n.to_lowercase()),
            _ => None,
        };
        let platform = flag(&flags, "platform").and_then(|v| v.as_ref());
        let predefined: BTreeSet<String> = platform_args(&self.opts.platform)
            .into_iter()
            .map(|(k, _)| k)
            .chain(["TARGETSTAGE".to_string()])
            .collect();
        let mut texts = vec![base.as_str()];
        if let Some(p) = platform {
            texts.push(p.as_str());
        }
        for t in texts {
            for r in referenced_vars(t, self.escape) {
                if !declared.contains(&r.name) && !predefined.contains(&r.name) {
                    let hint = self
                        .hint(&r.name, declared.iter().map(String::as_str))
                        .map(|s| format!(" (did you mean {s}?)"))
                        .unwrap_or_default();
                    self.lint(
                        line,
                        "UndefinedArgInFrom",
                        format!("FROM argument '{}' is not declared{hint}", r.name),
                    );
                }
            }
        }
        if base.contains('$') {
            let lookup = |k: &str| defaults_only.get(k).cloned();
            let v = shell::expand_in(base, &lookup, self.escape, &self.budget).unwrap_or_default();
            let bad = v.is_empty()
                || v.ends_with(':')
                || v.ends_with('@')
                || v.starts_with(':')
                || v.contains("::")
                || v.contains(char::is_whitespace);
            if bad {
                self.lint(
                    line,
                    "InvalidDefaultArgInFrom",
                    format!(
                        "Default value for ARG {base} results in empty or invalid base image name"
                    ),
                );
            }
        }
        if let Some(p) = platform {
            let p = p.trim();
            if p == "$TARGETPLATFORM" || p == "${TARGETPLATFORM}" {
                self.lint(
                    line,
                    "RedundantTargetPlatform",
                    format!("Setting platform to predefined {p} in FROM is redundant as this is the default behavior"),
                );
            } else if !p.contains('$') {
                // A constant is fine when the stage is named after it (e.g. `AS build-amd64`).
                let named_for_it = stage_name.as_deref().is_some_and(|n| {
                    p.split('/')
                        .filter(|part| !part.is_empty() && *part != "linux")
                        .any(|part| n.contains(&part.to_ascii_lowercase()))
                });
                if !named_for_it {
                    self.lint(
                        line,
                        "FromPlatformFlagConstDisallowed",
                        format!("FROM --platform flag should not use constant value \"{p}\""),
                    );
                }
            }
        }
        if let Some(n) = &stage_name {
            if bad_description(above, n) {
                self.lint_experimental(
                    line,
                    "InvalidDefinitionDescription",
                    format!(
                        "Comment for build stage should follow the format: `# {n} <description>`"
                    ),
                );
            }
        }
        Ok(())
    }

    /// MultipleInstructionsDisallowed: only the last CMD, ENTRYPOINT or HEALTHCHECK of a
    /// stage takes effect.
    pub(crate) fn lint_multiple(&mut self, insts: &[&Instruction]) {
        for kw in ["CMD", "ENTRYPOINT", "HEALTHCHECK"] {
            let lines: Vec<u32> = insts
                .iter()
                .filter(|i| i.keyword == kw)
                .map(|i| i.line_start)
                .collect();
            if let Some((_, earlier)) = lines.split_last() {
                for l in earlier {
                    self.lint(
                        *l,
                        "MultipleInstructionsDisallowed",
                        format!("Multiple {kw} instructions should not be used in the same stage because only the last one will be used"),
                    );
                }
            }
        }
    }

    pub(crate) fn lint_secret(&mut self, line: u32, what: &str, name: &str) {
        const WORDS: [&str; 10] = [
            "apikey",
            "auth",
            "credential",
            "credentials",
            "key",
            "password",
            "pass",
            "pwd",
            "secret",
            "token",
        ];
        let lower = name.to_ascii_lowercase();
        if lower.split('_').any(|t| WORDS.contains(&t)) {
            self.lint(
                line,
                "SecretsUsedInArgOrEnv",
                format!(
                    "Do not use ARG or ENV instructions for sensitive data ({what} \"{name}\")"
                ),
            );
        }
    }

    /// File-wide casing checks.
    pub(crate) fn lint_file(&mut self, insts: &[Instruction]) {
        let first_word = |i: &Instruction| -> String {
            i.original
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string()
        };
        let upper = insts
            .iter()
            .filter(|i| {
                let w = first_word(i);
                w == w.to_ascii_uppercase()
            })
            .count();
        let majority_upper = upper * 2 >= insts.len();
        for i in insts {
            let w = first_word(i);
            let is_upper = w == w.to_ascii_uppercase();
            let is_lower = w == w.to_ascii_lowercase();
            if (majority_upper && !is_upper) || (!majority_upper && !is_lower) {
                let case = if majority_upper {
                    "uppercase"
                } else {
                    "lowercase"
                };
                self.lint(
                    i.line_start,
                    "ConsistentInstructionCasing",
                    format!("Command '{w}' should match the case of the command majority ({case})"),
                );
            }
            if i.keyword != "FROM" {
                continue;
            }
            let words: Vec<&str> = i.args.split_whitespace().collect();
            if let [_, as_kw, name] = words.as_slice() {
                if as_kw.eq_ignore_ascii_case("as") {
                    let from_upper = w == w.to_ascii_uppercase();
                    let as_upper = *as_kw == as_kw.to_ascii_uppercase();
                    if from_upper != as_upper {
                        self.lint(
                            i.line_start,
                            "FromAsCasing",
                            format!("'{as_kw}' and '{w}' keywords' casing do not match"),
                        );
                    }
                    if *name != name.to_ascii_lowercase() {
                        self.lint(
                            i.line_start,
                            "StageNameCasing",
                            format!("Stage name '{name}' should be lowercase"),
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(w: &str) -> Vec<(String, bool)> {
        referenced_vars(w, '\\')
            .into_iter()
            .map(|v| (v.name, v.has_default))
            .collect()
    }

    #[test]
    fn var_references() {
        assert_eq!(
            names("$A ${B} ${C:-x} ${D-y} '$E' \"$F\" \\$G $1"),
            vec![
                ("A".into(), false),
                ("B".into(), false),
                ("C".into(), true),
                ("D".into(), true),
                ("F".into(), false),
            ]
        );
        assert_eq!(
            names("${H:+z}${I#p}"),
            vec![("H".into(), true), ("I".into(), false)]
        );
    }

    #[test]
    fn dockerignore_matching() {
        let p: Vec<String> = ["*.log", "!keep.log", "build", "**/tmp", "docs/*.md"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(ignored(&p, "a.log"));
        assert!(!ignored(&p, "keep.log"));
        assert!(!ignored(&p, "sub/a.log"));
        assert!(ignored(&p, "build/x/y"));
        assert!(ignored(&p, "a/b/tmp/c"));
        assert!(ignored(&p, "docs/x.md"));
        assert!(!ignored(&p, "docs/sub/x.md"));
        assert!(!ignored(&p, "src/main.rs"));
    }

    #[test]
    fn description_comments() {
        assert!(!bad_description(
            Some("# syntax=docker/dockerfile:1"),
            "base"
        ));
        assert!(bad_description(Some("# base the base stage"), "base2"));
        assert!(!bad_description(Some("# base2 the base stage"), "base2"));
        assert!(bad_description(Some("# wrong words"), "X"));
        assert!(!bad_description(Some(""), "Y"));
        assert!(!bad_description(None, "Y"));
    }
}
