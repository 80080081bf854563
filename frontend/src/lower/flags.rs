//! Flag and argument parsing shared by the instructions: `--flag[=value]` lists, raw words,
//! platforms, owners, modes, durations and sizes.

use super::*;

pub(crate) fn flag_name_value(flag: &str) -> (String, Option<String>) {
    let f = flag.trim_start_matches('-');
    match f.split_once('=') {
        Some((k, v)) => (k.to_ascii_lowercase(), Some(v.to_string())),
        None => (f.to_ascii_lowercase(), None),
    }
}

/// Validate flags against `allowed`; returns (name, value) pairs in order.
pub(crate) fn parse_flags(
    inst: &Instruction,
    allowed: &[&str],
) -> Result<Vec<(String, Option<String>)>, FrontendError> {
    let mut out = Vec::new();
    for f in &inst.flags {
        let (k, v) = flag_name_value(f);
        if !allowed.contains(&k.as_str()) {
            return Err(FrontendError::UnknownFlag {
                line: inst.line_start,
                instruction: inst.keyword.clone(),
                suggestion: suggest(&k, allowed.iter().copied()),
                flag: k,
            });
        }
        out.push((k, v));
    }
    Ok(out)
}

pub(crate) fn flag<'f>(
    flags: &'f [(String, Option<String>)],
    name: &str,
) -> Option<&'f Option<String>> {
    flags.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v)
}

pub(crate) fn flag_bool(
    flags: &[(String, Option<String>)],
    name: &str,
    line: u32,
) -> Result<Option<bool>, FrontendError> {
    match flag(flags, name) {
        None => Ok(None),
        Some(None) => Ok(Some(true)),
        Some(Some(v)) => match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "" => Ok(Some(true)),
            "false" | "0" => Ok(Some(false)),
            _ => Err(FrontendError::instr(
                line,
                format!("--{name}: expected true or false, got \"{v}\""),
            )),
        },
    }
}

/// Split text into raw words on unquoted whitespace, keeping quotes and escapes.
/// The words of a COPY/ADD/VOLUME in shell form as BuildKit's parser splits them
/// (parseStringsWhitespaceDelimited): at every run of spaces and tabs, quotes and escapes not
/// considered; each word is then expanded on its own.
pub(crate) fn whitespace_words(s: &str) -> Vec<String> {
    s.split([' ', '\t', '\u{b}', '\u{c}', '\r'])
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

pub(crate) fn raw_words(s: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut braces = 0usize;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == escape && quote != Some('\'') {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
            continue;
        }
        if quote != Some('\'') {
            if c == '$' && chars.peek() == Some(&'{') {
                braces += 1;
            } else if c == '}' && braces > 0 {
                braces -= 1;
            }
        }
        if braces > 0 && quote.is_none() && c.is_whitespace() {
            cur.push(c);
            continue;
        }
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                cur.push(c);
            }
            None => {
                if c == '"' || c == '\'' {
                    quote = Some(c);
                    cur.push(c);
                } else if c.is_whitespace() {
                    if !cur.is_empty() {
                        words.push(std::mem::take(&mut cur));
                    }
                } else {
                    cur.push(c);
                }
            }
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// Go's `%q` of a string slice, as BuildKit writes CMD/ENTRYPOINT history.
pub(crate) fn go_quote_list(items: &[String]) -> String {
    let q: Vec<String> = items
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\"")))
        .collect();
    format!("[{}]", q.join(" "))
}

pub(crate) fn parse_id(s: &str) -> IdSpec {
    match s.parse::<u32>() {
        Ok(n) => IdSpec::Id(n),
        Err(_) => IdSpec::Name(s.to_string()),
    }
}

pub(crate) fn parse_owner(s: &str, line: u32) -> Result<Owner, FrontendError> {
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    if u.is_empty() || g.is_some_and(str::is_empty) {
        return Err(FrontendError::instr(
            line,
            format!("--chown: invalid user[:group] \"{s}\""),
        ));
    }
    Ok(Owner {
        user: parse_id(u),
        group: g.map(parse_id),
    })
}

pub(crate) fn valid_symbolic_mode(s: &str) -> bool {
    s.split(',').all(|clause| {
        let body = clause.trim_start_matches(['u', 'g', 'o', 'a']);
        if body.is_empty() {
            return false;
        }
        // one or more op+perms groups
        let mut chars = body.chars().peekable();
        let mut groups = 0;
        while let Some(op) = chars.next() {
            if !matches!(op, '+' | '-' | '=') {
                return false;
            }
            groups += 1;
            let mut perms = String::new();
            while let Some(&c) = chars.peek() {
                if matches!(c, '+' | '-' | '=') {
                    break;
                }
                perms.push(c);
                chars.next();
            }
            let ok = perms.chars().all(|c| "rwxXst".contains(c))
                || matches!(perms.as_str(), "u" | "g" | "o");
            if !ok {
                return false;
            }
        }
        groups > 0
    })
}

pub(crate) fn parse_chmod(s: &str, line: u32) -> Result<Chmod, FrontendError> {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
        return match u32::from_str_radix(s, 8) {
            Ok(n) if n <= 0o7777 => Ok(Chmod::Octal(n)),
            _ => Err(FrontendError::instr(
                line,
                format!("--chmod: invalid octal mode \"{s}\""),
            )),
        };
    }
    if valid_symbolic_mode(s) {
        Ok(Chmod::Symbolic(s.to_string()))
    } else {
        Err(FrontendError::instr(
            line,
            format!("--chmod: invalid mode \"{s}\""),
        ))
    }
}

/// Go's `time.Duration.String` of `ns` nanoseconds ("0s", "1.5ms", "1m30s", "1h0m0s").
pub(crate) fn go_duration(ns: u64) -> String {
    // The fraction of `v / 10^prec`, trailing zeros and a bare point dropped.
    let frac = |v: u64, prec: u32| -> (String, u64) {
        let p = 10u64.pow(prec);
        let f = v % p;
        if f == 0 {
            return (String::new(), v / p);
        }
        let digits = format!("{f:0width$}", width = prec as usize);
        (format!(".{}", digits.trim_end_matches('0')), v / p)
    };
    if ns == 0 {
        return "0s".to_string();
    }
    if ns < 1_000_000_000 {
        let (unit, prec) = match ns {
            n if n < 1_000 => ("ns", 0),
            n if n < 1_000_000 => ("\u{b5}s", 3),
            _ => ("ms", 6),
        };
        let (f, int) = frac(ns, prec);
        return format!("{int}{f}{unit}");
    }
    let (f, secs) = frac(ns, 9);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}{f}s"),
        (0, _) => format!("{m}m{s}{f}s"),
        _ => format!("{h}h{m}m{s}{f}s"),
    }
}

/// Go's `%q` of an integer: `strconv.QuoteRune` of it as a character ('\x03', '\n', 'A').
pub(crate) fn go_quote_rune(n: u64) -> String {
    let c = u32::try_from(n)
        .ok()
        .and_then(char::from_u32)
        .unwrap_or('\u{fffd}');
    let body = match c {
        '\u{7}' => "\\a".to_string(),
        '\u{8}' => "\\b".to_string(),
        '\u{c}' => "\\f".to_string(),
        '\n' => "\\n".to_string(),
        '\r' => "\\r".to_string(),
        '\t' => "\\t".to_string(),
        '\u{b}' => "\\v".to_string(),
        '\'' => "\\'".to_string(),
        '\\' => "\\\\".to_string(),
        c if (c as u32) < 0x20 || c as u32 == 0x7f => format!("\\x{:02x}", c as u32),
        c if c.is_control() => format!("\\u{:04x}", c as u32),
        c => c.to_string(),
    };
    format!("'{body}'")
}

/// Go-style duration ("30s", "1m30s", "500ms") to nanoseconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    if s == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at_checked(num_len)?;
        let n: f64 = num.parse().ok()?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at_checked(unit_len)?;
        let mult = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * mult;
        rest = next;
    }
    if total.is_finite() && (0.0..1.8e19).contains(&total) {
        // Truncation toward zero is the intended rounding for durations.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(total as u64)
    } else {
        None
    }
}

/// A size as docker reads one (go-units' `RAMInBytes`: `--memory`, `--shm-size`, tmpfs
/// `size=`, `--keep-storage`): a non-negative number, an optional space, an optional
/// `k`/`m`/`g`/`t`/`p` unit, an optional `i` and an optional `b`, case-insensitive, all units
/// powers of 1024 (`64m`, `1.5GiB`, `500MB`, `1kb`). `None` for anything else or a size past
/// `u64`.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let num_len = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at_checked(num_len)?;
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return None;
    }
    let unit = unit.strip_prefix(' ').unwrap_or(unit);
    let unit = unit.strip_suffix('b').unwrap_or(unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    let total = n * (1u64 << shift) as f64;
    // `as` saturates: a size past u64 must be refused, never read as u64::MAX.
    if !total.is_finite() || total >= u64::MAX as f64 {
        return None;
    }
    // Truncation toward zero, as go-units.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some(total as u64)
}

#[cfg(test)]
mod size_tests {
    use super::{go_duration, go_quote_rune, parse_size};

    #[test]
    fn sizes_read_as_go_units_ram_in_bytes() {
        for (text, want) in [
            ("1024", 1024),
            ("64m", 64 << 20),
            ("1.5k", 1536),
            ("1kb", 1024),
            ("500MB", 500 << 20),
            ("2g", 2 << 30),
            ("1.5GiB", 3 << 29),
            ("1 t", 1 << 40),
            ("7B", 7),
        ] {
            assert_eq!(parse_size(text), Some(want), "{text}");
        }
        for bad in [
            "",
            "x",
            "lots",
            "-1k",
            "1.k",
            ".5m",
            "1q",
            "1mm",
            "b",
            "99999999999p",
            "1e3",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn go_formats_durations_and_runes_as_buildkit_history_shows_them() {
        for (ns, want) in [
            (0, "0s"),
            (999, "999ns"),
            (1_500, "1.5\u{b5}s"),
            (1_500_000, "1.5ms"),
            (100_000_000, "100ms"),
            (1_500_000_000, "1.5s"),
            (30_000_000_000, "30s"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
            (3_723_000_000_000, "1h2m3s"),
        ] {
            assert_eq!(go_duration(ns), want, "{ns}");
        }
        for (n, want) in [
            (0, "'\\x00'"),
            (3, "'\\x03'"),
            (9, "'\\t'"),
            (39, "'\\''"),
            (65, "'A'"),
            (127, "'\\x7f'"),
        ] {
            assert_eq!(go_quote_rune(n), want, "{n}");
        }
    }
}
