//! Word expansion, following BuildKit's Dockerfile shell lexer.
//!
//! Supports `$v`, `${v}`, `${v:-w}`, `${v-w}`, `${v:+w}`, `${v+w}`, `${v:?m}`, `${v?m}`,
//! `${v#p}`, `${v##p}`, `${v%p}`, `${v%%p}`, `${v/p/r}`, `${v//p/r}`, single and double quotes
//! (removed), and the escape character (`\` or `` ` ``). Patterns support `*`, `?` and escaped
//! literals. Special parameters (`$1`, `$@`, …) expand to the empty string unless the lookup
//! defines them. [`expand_words`] additionally splits unquoted text (and unquoted expansions)
//! on whitespace, as COPY/ADD/EXPOSE/VOLUME need.

use std::cell::Cell;

use crate::util::{glob_match, GlobTok};
use crate::FrontendError;

/// A variable lookup: `Some(value)` when the variable is set (possibly to "").
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

const MAX_DEPTH: usize = 64;

/// Fixed part of the expansion byte budget: 16 MiB.
const BUDGET_BYTES_FLOOR: u64 = 16 << 20;
/// Per input byte, this many more bytes of expanded values may be produced.
const BUDGET_BYTES_PER_INPUT: u64 = 8;
/// Fixed part of the pattern-matching step budget.
const BUDGET_STEPS_FLOOR: u64 = 1 << 26;
/// Per input byte, this many more matching steps.
const BUDGET_STEPS_PER_INPUT: u64 = 64;

/// What expanding (hostile) words may cost in total: bytes of values produced (variable
/// values, `${v/p/r}` replacements, copies of stage state) and pattern-matching steps
/// (`${v#p}`, `${v%p}`, `${v/p/r}`). One budget is shared by a whole build, so memory and
/// time stay linear in the Dockerfile's size however the expansions nest or chain; running out
/// is an error ("… limit …") that the caller attaches to the Dockerfile line.
#[derive(Debug)]
pub struct Budget {
    bytes: Cell<u64>,
    steps: Cell<u64>,
    bytes_limit: u64,
}

impl Budget {
    /// A budget of `bytes` value bytes and `steps` matching steps.
    pub fn new(bytes: u64, steps: u64) -> Self {
        Budget {
            bytes: Cell::new(bytes),
            steps: Cell::new(steps),
            bytes_limit: bytes,
        }
    }

    /// The budget for an input of `len` bytes: 16 MiB + 8 bytes per input byte, and
    /// 2^26 + 64 steps per input byte.
    pub fn for_input(len: usize) -> Self {
        let len = u64::try_from(len).unwrap_or(u64::MAX);
        Budget::new(
            BUDGET_BYTES_FLOOR.saturating_add(len.saturating_mul(BUDGET_BYTES_PER_INPUT)),
            BUDGET_STEPS_FLOOR.saturating_add(len.saturating_mul(BUDGET_STEPS_PER_INPUT)),
        )
    }

    /// Charge `n` bytes of produced value.
    pub fn spend_bytes(&self, n: usize) -> Result<(), FrontendError> {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        match self.bytes.get().checked_sub(n) {
            Some(left) => {
                self.bytes.set(left);
                Ok(())
            }
            None => {
                self.bytes.set(0);
                Err(err(format!(
                    "expansion limit exceeded: variable expansion would produce more than {} MiB \
                     in total (limit: 16 MiB + 8 bytes per Dockerfile byte)",
                    self.bytes_limit >> 20
                )))
            }
        }
    }

    /// Charge `n` pattern-matching steps.
    fn spend_steps(&self, n: usize) -> Result<(), FrontendError> {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        match self.steps.get().checked_sub(n) {
            Some(left) => {
                self.steps.set(left);
                Ok(())
            }
            None => {
                self.steps.set(0);
                Err(err(
                    "expansion limit exceeded: pattern matching in ${…} substitutions takes too \
                     many steps (limit: 2^26 + 64 per Dockerfile byte)",
                ))
            }
        }
    }
}

/// Expand one word with the default escape character `\`.
pub fn expand(word: &str, env: Lookup<'_>) -> Result<String, FrontendError> {
    expand_with(word, env, '\\')
}

/// Expand one word using `escape` as the escape character (budget: [`Budget::for_input`]
/// of the word).
pub fn expand_with(word: &str, env: Lookup<'_>, escape: char) -> Result<String, FrontendError> {
    expand_in(word, env, escape, &Budget::for_input(word.len()))
}

/// Expand one word, charging `budget`.
pub fn expand_in(
    word: &str,
    env: Lookup<'_>,
    escape: char,
    budget: &Budget,
) -> Result<String, FrontendError> {
    let mut sc = Scanner::new(word, env, escape, budget);
    let pieces = sc.run(&[], Mode::Word)?;
    Ok(pieces.into_iter().map(|p| p.text).collect())
}

/// Expand and split into words with the default escape character `\`.
pub fn expand_words(word: &str, env: Lookup<'_>) -> Result<Vec<String>, FrontendError> {
    expand_words_with(word, env, '\\')
}

/// Expand and split into words: unquoted whitespace (literal or from an unquoted expansion)
/// separates words; quoted text never splits; `""` yields an empty word.
pub fn expand_words_with(
    word: &str,
    env: Lookup<'_>,
    escape: char,
) -> Result<Vec<String>, FrontendError> {
    expand_words_in(word, env, escape, &Budget::for_input(word.len()))
}

/// [`expand_words_with`], charging `budget`.
pub fn expand_words_in(
    word: &str,
    env: Lookup<'_>,
    escape: char,
    budget: &Budget,
) -> Result<Vec<String>, FrontendError> {
    let mut sc = Scanner::new(word, env, escape, budget);
    let pieces = sc.run(&[], Mode::Word)?;
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut started = false;
    for p in pieces {
        if !p.split {
            cur.push_str(&p.text);
            started = true;
            continue;
        }
        for c in p.text.chars() {
            if c.is_whitespace() {
                if started {
                    words.push(std::mem::take(&mut cur));
                    started = false;
                }
            } else {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(cur);
    }
    Ok(words)
}

/// Expand a heredoc body (COPY/ADD `<<EOF`): `$` expansions happen, quotes stay literal, and
/// the escape character escapes the next character, as BuildKit's `ExpandRaw` (whose lexer
/// always uses a backslash, whatever the escape directive).
pub fn expand_heredoc(body: &str, env: Lookup<'_>, escape: char) -> Result<String, FrontendError> {
    expand_heredoc_in(body, env, escape, &Budget::for_input(body.len()))
}

/// [`expand_heredoc`], charging `budget`.
pub fn expand_heredoc_in(
    body: &str,
    env: Lookup<'_>,
    escape: char,
    budget: &Budget,
) -> Result<String, FrontendError> {
    let mut sc = Scanner::new(body, env, escape, budget);
    let pieces = sc.run(&[], Mode::Heredoc)?;
    Ok(pieces.into_iter().map(|p| p.text).collect())
}

fn err(message: impl Into<String>) -> FrontendError {
    FrontendError::Expand {
        line: None,
        message: message.into(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Normal word: quotes and escapes are processed and removed.
    Word,
    /// Like `Word`, but literal (quoted/escaped) glob characters are escaped in the output.
    Pattern,
    /// Heredoc body: quotes literal.
    Heredoc,
}

struct Piece {
    text: String,
    /// Unquoted: whitespace in it separates words.
    split: bool,
}

struct Scanner<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    env: Lookup<'a>,
    depth: usize,
    budget: &'a Budget,
}

/// Append text to the output, extending the last piece when it has the same kind (one piece
/// per run of characters, not one per character: the output stays a small multiple of the
/// input).
fn push_text(out: &mut Vec<Piece>, text: &str, split: bool) {
    match out.last_mut() {
        Some(last) if last.split == split => last.text.push_str(text),
        _ => out.push(Piece {
            text: text.to_string(),
            split,
        }),
    }
}

fn push_char(out: &mut Vec<Piece>, c: char, split: bool) {
    match out.last_mut() {
        Some(last) if last.split == split => last.text.push(c),
        _ => out.push(Piece {
            text: c.to_string(),
            split,
        }),
    }
}

fn lit(out: &mut Vec<Piece>, c: char, mode: Mode) {
    if mode == Mode::Pattern && matches!(c, '*' | '?' | '\\' | '[') {
        push_char(out, '\\', false);
    }
    push_char(out, c, false);
}

impl<'a> Scanner<'a> {
    fn new(s: &str, env: Lookup<'a>, escape: char, budget: &'a Budget) -> Self {
        Scanner {
            chars: s.chars().collect(),
            pos: 0,
            escape,
            env,
            depth: 0,
            budget,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    /// A variable's value, charged to the budget.
    fn lookup(&self, name: &str) -> Result<Option<String>, FrontendError> {
        let v = (self.env)(name);
        if let Some(v) = &v {
            self.budget.spend_bytes(v.len())?;
        }
        Ok(v)
    }

    /// Scan until one of `stops` (not consumed) or the end.
    fn run(&mut self, stops: &[char], mode: Mode) -> Result<Vec<Piece>, FrontendError> {
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            if stops.contains(&c) {
                break;
            }
            self.pos += 1;
            if mode == Mode::Heredoc {
                if c == self.escape {
                    // As BuildKit's lexer with quotes skipped: the escape character escapes
                    // whatever follows (`\$` → `$`, `\\` → `\`, backslash-newline → newline)
                    // and is dropped at the end.
                    if let Some(n) = self.peek() {
                        self.pos += 1;
                        lit(&mut out, n, mode);
                    }
                } else if c == '$' {
                    let text = self.dollar()?;
                    push_text(&mut out, &text, false);
                } else {
                    lit(&mut out, c, mode);
                }
                continue;
            }
            if c == self.escape {
                if let Some(n) = self.peek() {
                    self.pos += 1;
                    lit(&mut out, n, mode);
                }
                continue;
            }
            match c {
                '\'' => {
                    let mut closed = false;
                    while let Some(n) = self.peek() {
                        self.pos += 1;
                        if n == '\'' {
                            closed = true;
                            break;
                        }
                        lit(&mut out, n, mode);
                    }
                    if !closed {
                        return Err(err(
                            "unexpected end of statement while looking for matching single-quote",
                        ));
                    }
                    // `''` still marks a (possibly empty) quoted word.
                    push_text(&mut out, "", false);
                }
                '"' => self.double_quote(&mut out, mode)?,
                '$' => {
                    let text = self.dollar()?;
                    push_text(&mut out, &text, true);
                }
                _ => push_char(&mut out, c, true),
            }
        }
        Ok(out)
    }

    fn double_quote(&mut self, out: &mut Vec<Piece>, mode: Mode) -> Result<(), FrontendError> {
        push_text(out, "", false);
        while let Some(c) = self.peek() {
            self.pos += 1;
            if c == '"' {
                return Ok(());
            }
            if c == self.escape {
                match self.peek() {
                    Some(n) if n == '"' || n == '$' || n == self.escape => {
                        self.pos += 1;
                        lit(out, n, mode);
                    }
                    _ => lit(out, c, mode),
                }
            } else if c == '$' {
                let text = self.dollar()?;
                push_text(out, &text, false);
            } else {
                lit(out, c, mode);
            }
        }
        Err(err(
            "unexpected end of statement while looking for matching double-quote",
        ))
    }

    fn read_name(&mut self) -> String {
        let mut name = String::new();
        match self.peek() {
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                while let Some(c) = self.peek() {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        name.push(c);
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
            }
            Some(c) if c.is_ascii_digit() || "*#?@!$-".contains(c) => {
                name.push(c);
                self.pos += 1;
            }
            _ => {}
        }
        name
    }

    /// After a `$`: expand and return the value.
    fn dollar(&mut self) -> Result<String, FrontendError> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(err("bad substitution: expansions nested too deeply"));
                }
                let r = self.braced();
                self.depth = self.depth.saturating_sub(1);
                r
            }
            _ => {
                let name = self.read_name();
                if name.is_empty() {
                    return Ok("$".to_string());
                }
                Ok(self.lookup(&name)?.unwrap_or_default())
            }
        }
    }

    fn word_until(&mut self, stops: &[char], mode: Mode) -> Result<String, FrontendError> {
        let pieces = self.run(stops, mode)?;
        Ok(pieces.into_iter().map(|p| p.text).collect())
    }

    fn close_brace(&mut self) -> Result<(), FrontendError> {
        if self.peek() == Some('}') {
            self.pos += 1;
            Ok(())
        } else {
            Err(err("syntax error: missing '}'"))
        }
    }

    fn braced(&mut self) -> Result<String, FrontendError> {
        let name = self.read_name();
        if name.is_empty() {
            return Err(err("bad substitution"));
        }
        let value = self.lookup(&name)?;
        let Some(c) = self.peek() else {
            return Err(err("syntax error: missing '}'"));
        };
        self.pos += 1;
        match c {
            '}' => Ok(value.unwrap_or_default()),
            ':' | '-' | '+' | '?' => {
                let (colon, m) = if c == ':' {
                    let m = self.peek();
                    self.pos += 1;
                    (true, m)
                } else {
                    (false, Some(c))
                };
                let m = match m {
                    Some(m @ ('-' | '+' | '?')) => m,
                    Some(other) => {
                        return Err(err(format!(
                            "unsupported modifier (:{other}) in substitution"
                        )))
                    }
                    None => return Err(err("syntax error: missing '}'")),
                };
                let word = self.word_until(&['}'], Mode::Word)?;
                self.close_brace()?;
                let set = value.is_some();
                let nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
                let usable = if colon { nonempty } else { set };
                match m {
                    '-' => Ok(if usable {
                        value.unwrap_or_default()
                    } else {
                        word
                    }),
                    '+' => Ok(if usable { word } else { String::new() }),
                    _ => {
                        if usable {
                            Ok(value.unwrap_or_default())
                        } else if !word.is_empty() {
                            Err(err(format!("{name}: {word}")))
                        } else if set {
                            Err(err(format!("{name}: is not allowed to be empty")))
                        } else {
                            Err(err(format!("{name}: is not allowed to be unset")))
                        }
                    }
                }
            }
            '#' | '%' => {
                let longest = self.peek() == Some(c);
                if longest {
                    self.pos += 1;
                }
                let pat = self.word_until(&['}'], Mode::Pattern)?;
                self.close_brace()?;
                let v = value.unwrap_or_default();
                let toks = glob_tokens(&pat);
                if c == '#' {
                    trim_prefix(&v, &toks, longest, self.budget)
                } else {
                    trim_suffix(&v, &toks, longest, self.budget)
                }
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.pos += 1;
                }
                let pat = self.word_until(&['/', '}'], Mode::Pattern)?;
                let repl = if self.peek() == Some('/') {
                    self.pos += 1;
                    self.word_until(&['}'], Mode::Word)?
                } else {
                    String::new()
                };
                self.close_brace()?;
                let v = value.unwrap_or_default();
                replace(&v, &glob_tokens(&pat), &repl, all, self.budget)
            }
            other => Err(err(format!(
                "unsupported modifier ({other}) in substitution"
            ))),
        }
    }
}

/// `${v#p}`-style pattern: `*`, `?`, backslash-escaped literals (no classes: BuildKit's
/// convertShellPatternToRegex escapes `[`).
fn glob_tokens(p: &str) -> Vec<GlobTok> {
    let mut out = Vec::new();
    let mut it = p.chars();
    while let Some(c) = it.next() {
        match c {
            '\\' => match it.next() {
                Some(n) => out.push(GlobTok::Lit(n)),
                None => out.push(GlobTok::Lit('\\')),
            },
            '*' => out.push(GlobTok::Any),
            '?' => out.push(GlobTok::One),
            c => out.push(GlobTok::Lit(c)),
        }
    }
    out
}

/// [`glob_match`] with its steps charged to the expansion budget.
fn glob_match_in(p: &[GlobTok], t: &[char], budget: &Budget) -> Result<bool, FrontendError> {
    glob_match(p, t, |n| budget.spend_steps(n))
}

fn collect(c: &[char]) -> String {
    c.iter().collect()
}

fn trim_prefix(
    v: &str,
    p: &[GlobTok],
    longest: bool,
    budget: &Budget,
) -> Result<String, FrontendError> {
    let t: Vec<char> = v.chars().collect();
    let n = t.len();
    for k in 0..=n {
        let i = if longest { n - k } else { k };
        if glob_match_in(p, t.get(..i).unwrap_or(&[]), budget)? {
            return Ok(collect(t.get(i..).unwrap_or(&[])));
        }
    }
    Ok(v.to_string())
}

fn trim_suffix(
    v: &str,
    p: &[GlobTok],
    longest: bool,
    budget: &Budget,
) -> Result<String, FrontendError> {
    let t: Vec<char> = v.chars().collect();
    let n = t.len();
    for k in 0..=n {
        let i = if longest { k } else { n - k };
        if glob_match_in(p, t.get(i..).unwrap_or(&[]), budget)? {
            return Ok(collect(t.get(..i).unwrap_or(&[])));
        }
    }
    Ok(v.to_string())
}

fn replace(
    v: &str,
    p: &[GlobTok],
    repl: &str,
    all: bool,
    budget: &Budget,
) -> Result<String, FrontendError> {
    if p.is_empty() {
        return Ok(v.to_string());
    }
    let t: Vec<char> = v.chars().collect();
    let n = t.len();
    let mut out = String::new();
    let mut i = 0;
    let mut done = false;
    while i < n {
        if !done {
            let mut found = None;
            for j in ((i + 1)..=n).rev() {
                if glob_match_in(p, t.get(i..j).unwrap_or(&[]), budget)? {
                    found = Some(j);
                    break;
                }
            }
            if let Some(j) = found {
                budget.spend_bytes(repl.len())?;
                out.push_str(repl);
                i = j;
                done = !all;
                continue;
            }
        }
        if let Some(c) = t.get(i) {
            out.push(*c);
        }
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_basics() {
        let b = Budget::for_input(0);
        let m = |p: &str, t: &str| {
            glob_match_in(&glob_tokens(p), &t.chars().collect::<Vec<_>>(), &b).unwrap_or(false)
        };
        assert!(m("a*c", "abbc"));
        assert!(m("*", ""));
        assert!(!m("a?c", "ac"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "x"));
    }
}
