//! Helpers for the build checks (BuildKit's lint rules) that need more than one instruction's
//! state: which variables a word references, `.dockerignore` matching for `CopyIgnoredFile`,
//! and the description-comment form for `InvalidDefinitionDescription`.
//!
//! The checks themselves are raised by the lowering (`lower.rs`), which knows the scopes.

/// A variable reference found in a word: its name and whether it carries a default or
/// alternative (`${v:-w}`, `${v-w}`, `${v:+w}`, `${v+w}`, `${v:?m}`, `${v?m}`), which BuildKit
/// does not report as undefined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarRef {
    pub name: String,
    pub has_default: bool,
}

/// Variables referenced by `word` outside single quotes (and not escaped with `escape`).
pub fn referenced_vars(word: &str, escape: char) -> Vec<VarRef> {
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
pub fn ignored(patterns: &[String], rel: &str) -> bool {
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

fn match_segs(pat: &[&str], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|k| match_segs(rest, &path[k..])),
        Some((first, rest)) => match path.split_first() {
            Some((p, prest)) => glob(first, p) && match_segs(rest, prest),
            None => false,
        },
    }
}

/// `*`, `?` and `[…]` matching within one path segment.
fn glob(pat: &str, s: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let t: Vec<char> = s.chars().collect();
    fn go(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => (0..=t.len()).any(|k| go(&p[1..], &t[k..])),
            Some('?') => !t.is_empty() && go(&p[1..], &t[1..]),
            Some('[') => {
                let Some(end) = p.iter().position(|c| *c == ']') else {
                    return !t.is_empty() && t[0] == '[' && go(&p[1..], &t[1..]);
                };
                let Some(&c) = t.first() else { return false };
                let class = &p[1..end];
                let (neg, class) = match class.first() {
                    Some('^') | Some('!') => (true, &class[1..]),
                    _ => (false, class),
                };
                let mut hit = false;
                let mut k = 0;
                while k < class.len() {
                    if k + 2 < class.len() && class[k + 1] == '-' {
                        if class[k] <= c && c <= class[k + 2] {
                            hit = true;
                        }
                        k += 3;
                    } else {
                        if class[k] == c {
                            hit = true;
                        }
                        k += 1;
                    }
                }
                hit != neg && go(&p[end + 1..], &t[1..])
            }
            Some('\\') if p.len() > 1 => !t.is_empty() && t[0] == p[1] && go(&p[2..], &t[1..]),
            Some(c) => !t.is_empty() && t[0] == *c && go(&p[1..], &t[1..]),
        }
    }
    go(&p, &t)
}

/// For `InvalidDefinitionDescription`: the comment block directly above line `line` (1-based)
/// of `text`, if any, must start with `# <name> `. Returns true when there is such a comment
/// and it does not.
pub fn bad_description(text: &str, line: u32, name: &str) -> bool {
    let lines: Vec<&str> = text.lines().collect();
    let Some(idx) = (line as usize).checked_sub(2) else {
        return false;
    };
    let Some(above) = lines.get(idx) else {
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
        let t = "# syntax=docker/dockerfile:1\nFROM a AS base\n# base the base stage\nFROM b AS base2\n# wrong words\nARG X\n\nARG Y\n";
        assert!(!bad_description(t, 2, "base"));
        assert!(bad_description(t, 4, "base2"));
        assert!(bad_description(t, 6, "X"));
        assert!(!bad_description(t, 8, "Y"));
    }
}
