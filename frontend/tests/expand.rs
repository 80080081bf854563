//! Table test for BuildKit-compatible word expansion.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

use rbuild_frontend::shell::{expand, expand_heredoc, expand_with, expand_words};

fn env(k: &str) -> Option<String> {
    match k {
        "A" => Some("apple".into()),
        "EMPTY" => Some(String::new()),
        "PATHV" => Some("/usr/local/bin/tool.tar.gz".into()),
        "V" => Some("v1.2.3".into()),
        "SP" => Some("a b  c".into()),
        "STAR" => Some("x*y".into()),
        "AA" => Some("aaa".into()),
        _ => None,
    }
}

#[test]
fn expansion_table() {
    // (input, expected Ok output or Err substring prefixed with "ERR:")
    let rows: &[(&str, &str)] = &[
        ("plain", "plain"),
        ("$A", "apple"),
        ("${A}", "apple"),
        ("x${A}y", "xappley"),
        ("$A$A", "appleapple"),
        ("$UNSET", ""),
        ("pre-$UNSET-post", "pre--post"),
        ("$", "$"),
        ("a$", "a$"),
        ("$/x", "$/x"),
        ("$1", ""),
        ("$@x", "x"),
        ("\\$A", "$A"),
        ("\\\\$A", "\\apple"),
        ("'$A'", "$A"),
        ("\"$A\"", "apple"),
        ("\"'$A'\"", "'apple'"),
        ("'\"$A\"'", "\"$A\""),
        ("he'll'o", "hello"),
        ("\"a\\\"b\"", "a\"b"),
        ("\"a\\nb\"", "a\\nb"),
        ("a\\ b", "a b"),
        ("${A:-w}", "apple"),
        ("${UNSET:-w}", "w"),
        ("${EMPTY:-w}", "w"),
        ("${EMPTY-w}", ""),
        ("${UNSET-w}", "w"),
        ("${A:+w}", "w"),
        ("${EMPTY:+w}", ""),
        ("${EMPTY+w}", "w"),
        ("${UNSET+w}", ""),
        ("${A:?msg}", "apple"),
        ("${UNSET:?is required}", "ERR:UNSET: is required"),
        ("${EMPTY:?}", "ERR:EMPTY: is not allowed to be empty"),
        ("${EMPTY?msg}", ""),
        ("${UNSET?}", "ERR:UNSET: is not allowed to be unset"),
        ("${UNSET:-${A:-x}}", "apple"),
        ("${UNSET:-${NOPE:-deep}}", "deep"),
        ("${UNSET:-'lit $A'}", "lit $A"),
        ("${UNSET:-\"q $A\"}", "q apple"),
        ("${V#v}", "1.2.3"),
        ("${V#*.}", "2.3"),
        ("${V##*.}", "3"),
        ("${V%.*}", "v1.2"),
        ("${V%%.*}", "v1"),
        ("${PATHV##*/}", "tool.tar.gz"),
        ("${PATHV%/*}", "/usr/local/bin"),
        ("${PATHV%%.*}", "/usr/local/bin/tool"),
        ("${V#nomatch}", "v1.2.3"),
        ("${V/./-}", "v1-2.3"),
        ("${V//./-}", "v1-2-3"),
        ("${V//[0-9]/}", "v1.2.3"),
        ("${AA/a/b}", "baa"),
        ("${AA//a/b}", "bbb"),
        ("${AA/a}", "aa"),
        ("${AA//a*/X}", "X"),
        ("${STAR/\\*/+}", "x+y"),
        ("${STAR#x\\*}", "y"),
        ("${STAR#'x*'}", "y"),
        ("${V/?/#}", "#1.2.3"),
        ("${UNSET#x}", ""),
        ("${A:=x}", "ERR:unsupported modifier"),
        ("${A=x}", "ERR:unsupported modifier"),
        ("${}", "ERR:bad substitution"),
        ("${.}", "ERR:bad substitution"),
        ("${A", "ERR:missing '}'"),
        ("${A:-x", "ERR:missing '}'"),
        ("'open", "ERR:single-quote"),
        ("\"open", "ERR:double-quote"),
        ("${A}${EMPTY}${UNSET}", "apple"),
        ("${SP}", "a b  c"),
        ("trailing\\", "trailing"),
    ];
    let lookup = |k: &str| env(k);
    let mut failures = Vec::new();
    for (input, want) in rows {
        let got = expand(input, &lookup);
        let ok = match (want.strip_prefix("ERR:"), &got) {
            (Some(sub), Err(e)) => e.to_string().contains(sub),
            (None, Ok(s)) => s == want,
            _ => false,
        };
        if !ok {
            failures.push(format!("{input:?}: want {want:?}, got {got:?}"));
        }
    }
    assert!(rows.len() >= 40);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn word_splitting() {
    let lookup = |k: &str| env(k);
    let cases: &[(&str, &[&str])] = &[
        ("a b", &["a", "b"]),
        ("  a   b  ", &["a", "b"]),
        ("$SP", &["a", "b", "c"]),
        ("\"$SP\"", &["a b  c"]),
        ("x$SP", &["xa", "b", "c"]),
        ("'a b' c", &["a b", "c"]),
        ("a\\ b c", &["a b", "c"]),
        ("\"\" x", &["", "x"]),
        ("$UNSET", &[]),
        ("${UNSET:-one two}", &["one", "two"]),
    ];
    for (input, want) in cases {
        let got = expand_words(input, &lookup).unwrap();
        assert_eq!(&got, want, "input {input:?}");
    }
}

#[test]
fn backtick_escape_and_heredoc_mode() {
    let lookup = |k: &str| env(k);
    assert_eq!(expand_with("`$A", &lookup, '`').unwrap(), "$A");
    assert_eq!(
        expand_with("C:\\path\\$A", &lookup, '`').unwrap(),
        "C:\\path\\apple"
    );
    // BuildKit (ExpandRaw, quotes skipped): the escape character escapes whatever follows.
    assert_eq!(
        expand_heredoc("say \"$A\" 'x' \\$A \\n\n", &lookup, '\\').unwrap(),
        "say \"apple\" 'x' $A n\n"
    );
    // testCopyHeredocSpecialSymbols: `\` + newline, `\\`, `\$`.
    assert_eq!(expand_heredoc("\\\n", &lookup, '\\').unwrap(), "\n");
    assert_eq!(expand_heredoc("\\\\\n", &lookup, '\\').unwrap(), "\\\n");
    assert_eq!(expand_heredoc("\\$\n", &lookup, '\\').unwrap(), "$\n");
    assert_eq!(expand_heredoc("a\\", &lookup, '\\').unwrap(), "a");
}
