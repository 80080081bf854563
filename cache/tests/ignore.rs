//! .dockerignore semantics (moby/patternmatcher, not gitignore) as a data table.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

use rbuild_cache::context::ExcludeMatcher;
use rbuild_cache::CacheError;

fn m(p: &[&str]) -> ExcludeMatcher {
    ExcludeMatcher::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

#[test]
fn dockerignore_table() {
    #[rustfmt::skip]
    let rows: &[(&[&str], &str, bool)] = &[
        // anchoring: patterns are relative to the context root
        (&["*.md"], "README.md", true),
        (&["*.md"], "docs/README.md", false),
        (&["**/*.md"], "docs/README.md", true),
        (&["**/*.md"], "README.md", true),
        (&["**/*.md"], "a/b/c/x.md", true),
        (&["foo"], "foo", true),
        (&["foo"], "a/foo", false),
        (&["/foo"], "foo", true),
        (&["./foo"], "foo", true),
        (&["foo/../bar"], "bar", true),
        (&["foo/../bar"], "foo", false),
        // a matched directory excludes its subtree
        (&["foo"], "foo/bar/baz", true),
        (&["foo/"], "foo/x", true),
        (&["node_modules"], "node_modules/x/y.js", true),
        (&["a/b"], "a", false),
        (&["a/b"], "a/b/c", true),
        (&["dir/*"], "dir/a", true),
        (&["dir/*"], "dir", false),
        (&["dir/*"], "dir/a/b", true),
        (&["*/temp*"], "somedir/temporary.txt", true),
        (&["*/temp*"], "somedir/sub/temp", false),
        (&["*/*/temp*"], "a/b/temp.txt", true),
        (&[".git"], ".git/HEAD", true),
        (&[".git"], "sub/.git", false),
        (&["**/.git"], "sub/.git/config", true),
        // **
        (&["**"], "anything/deep/x", true),
        (&["a/**"], "a/b/c", true),
        (&["a/**"], "a", false),
        (&["**/foo"], "foo", true),
        (&["**/foo"], "x/y/foo", true),
        (&["**/foo"], "x/foo/bar", true),
        (&["a/**/b"], "a/b", true),
        (&["a/**/b"], "a/x/y/b", true),
        (&["a/**/b"], "a/xb", false),
        // ?, classes, escapes
        (&["temp?"], "temp1", true),
        (&["temp?"], "temp", false),
        (&["a?c"], "a/c", false),
        (&["[a-c]x"], "bx", true),
        (&["[a-c]x"], "dx", false),
        (&["[^a]x"], "ax", false),
        (&["[^a]x"], "bx", true),
        (&["\\*x"], "*x", true),
        (&["\\*x"], "ax", false),
        (&["a\\?"], "a?", true),
        (&["a\\?"], "ab", false),
        (&["a*b"], "a/b", false),
        (&["a*b"], "axxb", true),
        // ! exceptions, last match wins
        (&["*", "!keep.txt"], "keep.txt", false),
        (&["*", "!keep.txt"], "other", true),
        (&["dir", "!dir/keep"], "dir/keep", false),
        (&["dir", "!dir/keep"], "dir/keep/sub", false),
        (&["dir", "!dir/keep"], "dir/other", true),
        (&["!dir/keep", "dir"], "dir/keep", true),
        (&["*.log", "!important.log"], "important.log", false),
        (&["*.log", "!important.log", "important.log"], "important.log", true),
        (&["**/*.log", "!**/keep.log"], "a/b/keep.log", false),
        (&["**/*.log", "!**/keep.log"], "a/b/x.log", true),
        (&["*.go", "!main.go"], "main.go", false),
        (&["*.go", "!main.go"], "cmd/x.go", false),
        (&["docs", "!docs/*.md", "docs/secret.md"], "docs/a.md", false),
        (&["docs", "!docs/*.md", "docs/secret.md"], "docs/secret.md", true),
        (&["docs", "!docs/*.md", "docs/secret.md"], "docs/img.png", true),
        (&["Dockerfile", ".dockerignore"], "Dockerfile", true),
        (&["Dockerfile"], ".dockerignore", false),
        (&[], "anything", false),
        (&["  spaced.txt  "], "spaced.txt", true),
    ];
    let mut failures = Vec::new();
    for (pats, path, want) in rows {
        let got = m(pats).is_excluded(path);
        if got != *want {
            failures.push(format!("{pats:?} on {path:?}: got {got}, want {want}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(rows.len() >= 30);
}

#[test]
fn root_is_never_excluded() {
    let mm = m(&["*", "**"]);
    assert!(!mm.is_excluded(""));
    assert!(!mm.is_excluded("."));
    assert!(!mm.is_excluded("/"));
}

#[test]
fn invalid_patterns() {
    for bad in ["!", "[a", "a\\", "[]", "[z-a]"] {
        let err = ExcludeMatcher::new(&[bad.to_string()]).unwrap_err();
        assert!(
            matches!(err, CacheError::InvalidPattern { .. }),
            "{bad}: {err}"
        );
    }
}

#[test]
fn skip_dir_only_when_no_exception_can_reinclude() {
    let mm = m(&["node_modules", "build", "!build/keep/**"]);
    assert!(mm.can_skip_dir("node_modules"));
    assert!(mm.can_skip_dir("node_modules/a"));
    assert!(!mm.can_skip_dir("build"));
    assert!(!mm.can_skip_dir("build/keep"));
    assert!(mm.can_skip_dir("build/other"));
    assert!(!mm.can_skip_dir("src"), "not excluded at all");
    let mm = m(&["*", "!**/*.go"]);
    assert!(!mm.can_skip_dir("anything"));
}

#[test]
fn glob_match_is_go_filepath_match() {
    use rbuild_cache::context::glob_match;
    assert!(glob_match("*.txt", "a.txt"));
    assert!(!glob_match("*.txt", "dir/a.txt"));
    assert!(glob_match("file[0-9].?s", "file3.js"));
    assert!(!glob_match("file[^0-9]", "file3"));
    assert!(glob_match("\\[x\\]", "[x]"));
    assert!(!glob_match("[", "["));
}
