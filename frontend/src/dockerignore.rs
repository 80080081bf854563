//! `.dockerignore` parsing (pattern cleaning only; matching is done by the context walker).
//!
//! Follows moby's `ignorefile` reader: UTF-8 BOM stripped, `#` at column 0 is a comment,
//! surrounding whitespace trimmed, blank lines skipped, each pattern cleaned like `path.Clean`
//! with a leading `/` removed; a leading `!` (exception) is kept. A lone `!` is an error.

use crate::util::clean_path;
use crate::FrontendError;

/// Parse `.dockerignore` text into cleaned patterns, in file order.
pub fn parse(text: &str) -> Result<Vec<String>, FrontendError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = u32::try_from(idx + 1).unwrap_or(u32::MAX);
        if raw.starts_with('#') {
            continue;
        }
        let mut p = raw.trim();
        if p.is_empty() {
            continue;
        }
        let mut invert = false;
        if let Some(rest) = p.strip_prefix('!') {
            invert = true;
            p = rest.trim();
            if p.is_empty() {
                return Err(FrontendError::Dockerignore {
                    line,
                    message: "illegal exclusion pattern: \"!\"".to_string(),
                });
            }
        }
        let mut cleaned = clean_path(p);
        if cleaned.len() > 1 {
            cleaned = cleaned.trim_start_matches('/').to_string();
        }
        if cleaned == "/" {
            cleaned = ".".to_string();
        }
        if invert {
            cleaned.insert(0, '!');
        }
        out.push(cleaned);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_patterns_like_moby() {
        let text =
            "\u{feff}# comment\n\n  /a/b/../c  \n!keep/./me\n*.md\n  # not a comment\ndir/\n/\n";
        assert_eq!(
            parse(text).unwrap(),
            vec!["a/c", "!keep/me", "*.md", "# not a comment", "dir", "."]
        );
    }

    #[test]
    fn lone_bang_is_an_error() {
        let e = parse("a\n!\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            ".dockerignore:2: illegal exclusion pattern: \"!\""
        );
    }
}
