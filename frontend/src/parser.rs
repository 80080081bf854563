//! Dockerfile lexical layer: text → [`Ast`]. Never fails; problems become diagnostics.
//!
//! Handles parser directives at the top (`syntax`, `escape`, `check`), comments, blank lines,
//! line continuations (with comments and blank lines allowed inside), leading `--flags`,
//! JSON (exec) form detection (invalid JSON silently stays shell form), and heredoc bodies for
//! RUN/COPY/ADD (`<<EOF`, `<<-EOF`, quoted delimiters, several per instruction).

/// Severity of a parser diagnostic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning,
    Error,
}

/// A problem found while parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseDiagnostic {
    pub line: u32,
    pub message: String,
    pub severity: Severity,
}

/// A parser directive such as `# escape=`\``.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub line: u32,
    /// Lowercased key.
    pub name: String,
    pub value: String,
}

/// One heredoc attached to an instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// Delimiter word (without quotes).
    pub name: String,
    /// Body, each line ending in `\n`; leading tabs already removed when `chomp`.
    pub body: String,
    /// False when the delimiter was quoted (no variable expansion in the body).
    pub expand: bool,
    /// `<<-`: leading tabs stripped.
    pub chomp: bool,
    /// With `chomp`, the body as written (tabs kept), which a RUN passes to its shell when
    /// the heredoc is part of a longer command (the shell strips them, as in BuildKit).
    pub raw: Option<String>,
    /// File descriptor prefix such as `3<<EOF`.
    pub fd: Option<u32>,
}

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// First physical line (1-based).
    pub line_start: u32,
    /// Last physical line, including heredoc bodies.
    pub line_end: u32,
    /// Keyword, uppercased.
    pub keyword: String,
    /// The logical line as written (continuations joined), without heredoc bodies.
    pub original: String,
    /// Leading flags as written, e.g. `--from=build`.
    pub flags: Vec<String>,
    /// Text after the keyword and flags, trimmed.
    pub args: String,
    /// `Some` when `args` is a valid JSON array of strings (exec form).
    pub json: Option<Vec<String>>,
    pub heredocs: Vec<Heredoc>,
}

/// The parsed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ast {
    pub directives: Vec<Directive>,
    /// Escape character in effect (`\` or `` ` ``).
    pub escape: char,
    pub instructions: Vec<Instruction>,
    pub diagnostics: Vec<ParseDiagnostic>,
}

impl Ast {
    /// The first error-level diagnostic, if any.
    pub fn first_error(&self) -> Option<&ParseDiagnostic> {
        self.diagnostics
            .iter()
            .find(|d| d.severity == Severity::Error)
    }

    /// A stable text dump (used by the golden tests).
    pub fn dump(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("escape {:?}\n", self.escape));
        for d in &self.directives {
            out.push_str(&format!("directive {}={:?} @{}\n", d.name, d.value, d.line));
        }
        for i in &self.instructions {
            out.push_str(&format!(
                "{}-{} {} flags={:?} args={:?}",
                i.line_start, i.line_end, i.keyword, i.flags, i.args
            ));
            if let Some(j) = &i.json {
                out.push_str(&format!(" json={j:?}"));
            }
            out.push('\n');
            for h in &i.heredocs {
                out.push_str(&format!(
                    "  heredoc {} expand={} chomp={} fd={:?} body={:?}\n",
                    h.name, h.expand, h.chomp, h.fd, h.body
                ));
            }
        }
        for d in &self.diagnostics {
            out.push_str(&format!("{:?} @{}: {}\n", d.severity, d.line, d.message));
        }
        out
    }
}

const KNOWN_DIRECTIVES: [&str; 3] = ["syntax", "escape", "check"];

/// Most arguments one instruction may have (words, JSON elements or flags). Each argument
/// costs a few dozen bytes once split, so without a cap a line of `a a a …` would take ~100×
/// its size in memory.
pub const MAX_ARGS: usize = 1 << 16;

/// Most instructions one Dockerfile may have. Each costs a few hundred bytes once parsed and
/// lowered (its strings, history entry, config change), so a file of tiny lines (`USER a`)
/// would otherwise take ~50× its size; real Dockerfiles have a few thousand at most.
pub const MAX_INSTRUCTIONS: usize = 1 << 17;

/// Upper bound of the words `args` splits into (unquoted whitespace runs; quotes kept
/// together), stopping early past `MAX_ARGS`.
fn count_words(args: &str, escape: char) -> usize {
    let mut n = 0usize;
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in args.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == escape && quote != Some('\'') {
            escaped = true;
            in_word = true;
            continue;
        }
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => in_word = false,
            None => {
                if !in_word {
                    n += 1;
                    if n > MAX_ARGS {
                        return n;
                    }
                }
                in_word = true;
            }
        }
    }
    n
}

fn parse_directive(line: &str) -> Option<(String, String)> {
    let rest = line.trim().strip_prefix('#')?;
    let (k, v) = rest.split_once('=')?;
    let k = k.trim();
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    Some((k.to_ascii_lowercase(), v.to_string()))
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Strip a trailing escape character (plus trailing blanks). `None` if the line does not
/// continue.
fn continuation(line: &str, escape: char) -> Option<&str> {
    let t = line.trim_end_matches([' ', '\t']);
    t.strip_suffix(escape)
}

/// The physical lines of a text, indexed by their start offsets (8 bytes per line rather
/// than a 16-byte slice: a file of empty lines stays a small multiple of its size).
struct Lines<'t> {
    text: &'t str,
    starts: Vec<usize>,
}

impl<'t> Lines<'t> {
    fn new(text: &'t str) -> Self {
        let mut starts = Vec::with_capacity(text.bytes().filter(|b| *b == b'\n').count() + 1);
        starts.push(0);
        starts.extend(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        Lines { text, starts }
    }

    /// Line `i` without its `\n` (and a trailing `\r`).
    fn get(&self, i: usize) -> Option<&'t str> {
        let start = *self.starts.get(i)?;
        let end = self
            .starts
            .get(i + 1)
            .map_or(self.text.len(), |e| e.saturating_sub(1));
        let l = self.text.get(start..end)?;
        Some(l.strip_suffix('\r').unwrap_or(l))
    }

    fn first(&self) -> Option<&'t str> {
        self.get(0)
    }
}

/// Parse a Dockerfile. Never fails.
pub fn parse(text: &str) -> Ast {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let body = text.strip_suffix('\n').unwrap_or(text);
    let lines = Lines::new(body);
    let mut ast = Ast {
        directives: Vec::new(),
        escape: '\\',
        instructions: Vec::new(),
        diagnostics: Vec::new(),
    };
    let diag = |ast: &mut Ast, line: usize, severity: Severity, message: String| {
        ast.diagnostics.push(ParseDiagnostic {
            line: line_no(line),
            message,
            severity,
        });
    };

    // Directives: only at the very top.
    let mut i = 0;
    if lines.first().is_some_and(|l| l.starts_with("#!")) {
        i = 1;
    }
    while let Some(line) = lines.get(i) {
        let Some((k, v)) = parse_directive(line) else {
            break;
        };
        if !KNOWN_DIRECTIVES.contains(&k.as_str()) {
            break;
        }
        if ast.directives.iter().any(|d| d.name == k) {
            diag(
                &mut ast,
                i,
                Severity::Error,
                format!("only one {k} parser directive can be used"),
            );
        } else {
            if k == "escape" {
                match v.as_str() {
                    "\\" => ast.escape = '\\',
                    "`" => ast.escape = '`',
                    _ => diag(
                        &mut ast,
                        i,
                        Severity::Error,
                        format!("invalid escape token '{v}' does not match ` or \\"),
                    ),
                }
            }
            ast.directives.push(Directive {
                line: line_no(i),
                name: k,
                value: v,
            });
        }
        i += 1;
    }

    let escape = ast.escape;
    while let Some(line) = lines.get(i) {
        if line.trim().is_empty() || is_comment(line) {
            i += 1;
            continue;
        }
        let start = i;
        if ast.instructions.len() >= MAX_INSTRUCTIONS {
            diag(
                &mut ast,
                start,
                Severity::Error,
                format!("more than {MAX_INSTRUCTIONS} instructions (limit)"),
            );
            break;
        }
        let mut logical = String::new();
        let mut cur = line;
        let mut warned_empty = false;
        loop {
            match continuation(cur, escape) {
                Some(stripped) => {
                    logical.push_str(stripped);
                    i += 1;
                    // Skip comments and blank lines inside the continuation.
                    loop {
                        match lines.get(i) {
                            Some(l) if is_comment(l) => i += 1,
                            Some(l) if l.trim().is_empty() => {
                                // One warning per instruction (a flood of empty lines must
                                // not become a flood of diagnostics).
                                if !warned_empty {
                                    warned_empty = true;
                                    diag(
                                        &mut ast,
                                        i,
                                        Severity::Warning,
                                        "empty continuation line".to_string(),
                                    );
                                }
                                i += 1;
                            }
                            _ => break,
                        }
                    }
                    match lines.get(i) {
                        Some(next) => cur = next,
                        None => {
                            i = i.saturating_sub(1);
                            break;
                        }
                    }
                }
                None => {
                    logical.push_str(cur);
                    break;
                }
            }
        }
        let end = i;
        i += 1;
        let trimmed = logical.trim();
        let (kw, rest) = match trimmed.split_once(char::is_whitespace) {
            Some((k, r)) => (k, r.trim_start()),
            None => (trimmed, ""),
        };
        let keyword = kw.to_ascii_uppercase();
        let (flags, args) = split_flags(rest);
        let mut inst = Instruction {
            line_start: line_no(start),
            line_end: line_no(end),
            keyword,
            original: trimmed.to_string(),
            flags,
            args: args.to_string(),
            json: None,
            heredocs: Vec::new(),
        };
        // RUN/CMD/ENTRYPOINT/HEALTHCHECK/SHELL/ONBUILD keep their shell form as one string;
        // everything else splits into words (and every JSON form into elements).
        let splits = !matches!(
            inst.keyword.as_str(),
            "RUN" | "CMD" | "ENTRYPOINT" | "HEALTHCHECK" | "SHELL" | "ONBUILD"
        );
        let json_like = inst.args.starts_with('[');
        let too_many = inst.flags.len() > MAX_ARGS
            || (json_like && inst.args.matches('"').count() > 2 * MAX_ARGS)
            || (splits && count_words(&inst.args, escape) > MAX_ARGS);
        if too_many {
            diag(
                &mut ast,
                start,
                Severity::Error,
                format!("{}: more than {MAX_ARGS} arguments (limit)", inst.keyword),
            );
            // Drop the text: the build fails on this error anyway.
            inst.args.clear();
            inst.original.clear();
            inst.flags.clear();
        }
        if inst.args.starts_with('[') {
            inst.json = serde_json::from_str::<Vec<String>>(&inst.args).ok();
        }
        // Heredocs belong to RUN/COPY/ADD, also as an ONBUILD trigger (BuildKit's
        // heredocCompoundDirectives).
        let heredoc_args = match inst.keyword.as_str() {
            "RUN" | "COPY" | "ADD" if inst.json.is_none() => Some(inst.args.as_str()),
            "ONBUILD" => inst
                .args
                .split_once(char::is_whitespace)
                .filter(|(k, rest)| {
                    matches!(k.to_ascii_uppercase().as_str(), "RUN" | "COPY" | "ADD")
                        && serde_json::from_str::<Vec<String>>(rest.trim()).is_err()
                })
                .map(|(_, rest)| rest),
            _ => None,
        };
        if let Some(hargs) = heredoc_args {
            let mut markers = find_heredocs(hargs);
            if markers.len() > MAX_ARGS {
                diag(
                    &mut ast,
                    start,
                    Severity::Error,
                    format!("{}: more than {MAX_ARGS} heredocs (limit)", inst.keyword),
                );
                markers.clear();
            }
            for (name, expand, chomp, fd) in markers {
                let mut body = String::new();
                let mut raw = chomp.then(String::new);
                let mut closed = false;
                while let Some(l) = lines.get(i) {
                    i += 1;
                    let cmp = if chomp { l.trim_start_matches('\t') } else { l };
                    if cmp == name {
                        closed = true;
                        break;
                    }
                    body.push_str(cmp);
                    body.push('\n');
                    if let Some(r) = &mut raw {
                        r.push_str(l);
                        r.push('\n');
                    }
                }
                if !closed {
                    diag(
                        &mut ast,
                        start,
                        Severity::Error,
                        format!("unterminated heredoc <<{name}: no line \"{name}\" ends it"),
                    );
                }
                inst.line_end = line_no(i.saturating_sub(1).max(end));
                inst.heredocs.push(Heredoc {
                    name,
                    body,
                    expand,
                    chomp,
                    raw,
                    fd,
                });
            }
        }
        ast.instructions.push(inst);
    }
    ast
}

fn line_no(idx: usize) -> u32 {
    u32::try_from(idx.saturating_add(1)).unwrap_or(u32::MAX)
}

/// Split leading `--flag[=value]` words (quotes keep spaces inside a value). `--` ends flags.
fn split_flags(rest: &str) -> (Vec<String>, &str) {
    let mut flags = Vec::new();
    let mut s = rest;
    loop {
        let t = s.trim_start();
        if !t.starts_with("--") {
            return (flags, t);
        }
        let mut quote: Option<char> = None;
        let mut end = t.len();
        for (p, c) in t.char_indices() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' => quote = Some(c),
                None if c.is_whitespace() => {
                    end = p;
                    break;
                }
                None => {}
            }
        }
        let (word, after) = t.split_at_checked(end).unwrap_or((t, ""));
        s = after;
        if word == "--" {
            return (flags, s.trim_start());
        }
        flags.push(word.to_string());
        if flags.len() > MAX_ARGS {
            // Over the limit: the caller reports it; the rest is not split.
            return (flags, "");
        }
    }
}

/// Find heredoc markers (`<<EOF`, `<<-EOF`, `<<"EOF"`, `3<<EOF`) outside quotes.
fn find_heredocs(args: &str) -> Vec<(String, bool, bool, Option<u32>)> {
    let chars: Vec<char> = args.chars().collect();
    let mut out = Vec::new();
    let mut quote: Option<char> = None;
    let mut k = 0;
    while k < chars.len() {
        let c = chars.get(k).copied().unwrap_or(' ');
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            k += 1;
            continue;
        }
        if c == '\'' || c == '"' {
            quote = Some(c);
            k += 1;
            continue;
        }
        let is_marker = c == '<'
            && chars.get(k + 1) == Some(&'<')
            && chars.get(k + 2) != Some(&'<')
            && (k == 0 || chars.get(k - 1) != Some(&'<'));
        if !is_marker {
            k += 1;
            continue;
        }
        // Optional fd digits directly before the marker; the whole thing must start a word
        // (so `$((1<<2))` is not a heredoc).
        let mut ds = k;
        while ds > 0 && chars.get(ds - 1).is_some_and(|c| c.is_ascii_digit()) {
            ds -= 1;
        }
        let word_start = ds == 0 || chars.get(ds - 1).is_some_and(|c| c.is_whitespace());
        if !word_start {
            k += 2;
            continue;
        }
        let fd = chars
            .get(ds..k)
            .filter(|d| !d.is_empty())
            .and_then(|d| d.iter().collect::<String>().parse().ok());
        let mut p = k + 2;
        let chomp = chars.get(p) == Some(&'-');
        if chomp {
            p += 1;
        }
        let mut name = String::new();
        let mut quoted = false;
        let mut q: Option<char> = None;
        while let Some(&ch) = chars.get(p) {
            match q {
                Some(qq) if ch == qq => {
                    q = None;
                    p += 1;
                    continue;
                }
                Some(_) => {}
                None if ch == '\'' || ch == '"' => {
                    q = Some(ch);
                    quoted = true;
                    p += 1;
                    continue;
                }
                None if ch.is_whitespace() || ";&|<>()".contains(ch) => break,
                None => {}
            }
            name.push(ch);
            p += 1;
        }
        if !name.is_empty() && q.is_none() {
            out.push((name, !quoted, chomp, fd));
            if out.len() > MAX_ARGS {
                // Over the limit: the caller reports it.
                break;
            }
        }
        k = p.max(k + 2);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_json() {
        let ast = parse("COPY --from=a --chown=1:2 x y\nCMD [\"a\", \"b\"]\nCMD [bad\n");
        let i = &ast.instructions;
        assert_eq!(i[0].flags, vec!["--from=a", "--chown=1:2"]);
        assert_eq!(i[0].args, "x y");
        assert_eq!(i[1].json, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(i[2].json, None);
        assert_eq!(i[2].args, "[bad");
    }

    #[test]
    fn heredoc_markers() {
        let m = find_heredocs("<<A cat > a && 3<<-'B' x");
        assert_eq!(m.len(), 2);
        assert_eq!(m[0], ("A".to_string(), true, false, None));
        assert_eq!(m[1], ("B".to_string(), false, true, Some(3)));
        assert!(find_heredocs("echo '<<X' <<<y").is_empty());
        assert!(find_heredocs("echo $((1<<2)) a<<B").is_empty());
    }
}
