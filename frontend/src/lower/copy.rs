//! COPY and ADD: sources (context, stages, images, URLs, git), flags, heredoc files.

use super::*;

pub(super) fn is_git_url(s: &str) -> bool {
    if s.starts_with("git@") || s.starts_with("git://") || s.starts_with("ssh://") {
        return true;
    }
    if s.starts_with("http://") || s.starts_with("https://") {
        let base = s.split(['#', '?']).next().unwrap_or(s);
        return base.ends_with(".git") || s.contains(".git#");
    }
    false
}

/// A git URL's query form (`repo.git?ref=v1&subdir=dir&checksum=…&keep-git-dir=true`, current
/// BuildKit): the remote without the query, and the recognised parameters.
pub(super) fn git_query(src: &str) -> (String, BTreeMap<String, String>) {
    let (before_frag, frag) = match src.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (src, None),
    };
    let Some((remote, query)) = before_frag.split_once('?') else {
        return (src.to_string(), BTreeMap::new());
    };
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, "true"))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let remote = match frag {
        Some(f) => format!("{remote}#{f}"),
        None => remote.to_string(),
    };
    (remote, params)
}

pub(super) fn is_http_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// `%XX` escapes decoded (as Go's url.Parse does for the path); invalid escapes kept.
pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex = |c: u8| (c as char).to_digit(16);
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn url_filename(url: &str) -> String {
    let no_frag = url.split('#').next().unwrap_or(url);
    let no_query = no_frag.split('?').next().unwrap_or(no_frag);
    let after_scheme = no_query
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(no_query);
    let name = match after_scheme.split_once('/') {
        Some((_, path)) => path
            .rsplit('/')
            .find(|s| !s.is_empty())
            .map(percent_decode)
            .unwrap_or_default(),
        None => String::new(),
    };
    // Like BuildKit, a URL without a usable last path segment names the file __unnamed__.
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        "__unnamed__".to_string()
    } else {
        name
    }
}

impl Lowerer<'_> {
    pub(super) fn copy(
        &mut self,
        st: &mut StageState,
        step: &Step<'_>,
        stage_idx: usize,
        is_add: bool,
    ) -> Result<(), FrontendError> {
        let inst = step.inst;
        let line = step.line();
        let kw = inst.keyword.as_str();
        let allowed: &[&str] = if is_add {
            &[
                "chown",
                "chmod",
                "link",
                "exclude",
                "checksum",
                "keep-git-dir",
                "unpack",
            ]
        } else {
            &["from", "chown", "chmod", "link", "exclude", "parents"]
        };
        let flags = parse_flags(inst, allowed)?;
        let vars = st.vars();
        let parents = flag_bool(&flags, "parents", line)? == Some(true);
        // History as BuildKit writes it (dispatchCopy): the keyword, `--parents`, `--chown=`,
        // `--chmod=` (expanded), the sources, heredocs as `<<NAME`, the destination; no
        // `--from` or other flags.
        let mut created_by = String::from(kw);
        if parents {
            created_by.push_str(" --parents");
        }
        let owner = match flag(&flags, "chown") {
            Some(Some(v)) => {
                let v = self.expand(v, &*vars, line)?;
                created_by.push_str(&format!(" --chown={v}"));
                Some(parse_owner(&v, line)?)
            }
            Some(None) => return Err(step.err("--chown requires a value")),
            None => None,
        };
        let named_owner = owner.as_ref().is_some_and(|o| {
            matches!(o.user, IdSpec::Name(_)) || matches!(o.group, Some(IdSpec::Name(_)))
        });
        // `--link`: copy onto scratch and stack the result on the stage with a Merge, so the
        // copy's layer does not depend on (and is reused across changes to) earlier steps.
        let mut link = flag_bool(&flags, "link", line)? == Some(true);
        if link && named_owner {
            link = false;
            self.warnings.push(Diagnostic {
                line,
                end_line: line,
                message: format!(
                    "{kw} --link --chown by name: lowered as a regular copy (names are resolved in the stage's /etc/passwd)"
                ),
            });
        }
        let mode = match flag(&flags, "chmod") {
            Some(Some(v)) => {
                let v = self.expand(v, &*vars, line)?;
                created_by.push_str(&format!(" --chmod={v}"));
                Some(parse_chmod(&v, line)?)
            }
            Some(None) => return Err(step.err("--chmod requires a value")),
            None => None,
        };
        let mut exclude = Vec::new();
        for (k, v) in &flags {
            if k == "exclude" {
                let v = v
                    .as_deref()
                    .ok_or_else(|| step.err("--exclude requires a value"))?;
                exclude.push(self.expand(v, &*vars, line)?);
            }
        }
        let checksum = match flag(&flags, "checksum") {
            Some(Some(v)) => Some(self.expand(v, &*vars, line)?),
            Some(None) => return Err(step.err("--checksum requires a value")),
            None => None,
        };
        let keep_git_dir = flag_bool(&flags, "keep-git-dir", line)?.unwrap_or(false);
        let unpack = flag_bool(&flags, "unpack", line)?;

        let words: Vec<String> = match &inst.json {
            Some(v) => {
                let mut out = Vec::new();
                for w in v {
                    out.push(self.expand(w, &*vars, line)?);
                }
                out
            }
            None if !inst.heredocs.is_empty() => {
                // Heredoc markers must not be expanded; other words are.
                let mut out = Vec::new();
                for w in whitespace_words(&inst.args) {
                    if w.trim_start_matches(|c: char| c.is_ascii_digit())
                        .starts_with("<<")
                    {
                        out.push(format!("\u{0}{w}"));
                    } else {
                        out.push(self.expand(&w, &*vars, line)?);
                    }
                }
                out
            }
            None => {
                // Each word is expanded as one word, never split again (BuildKit's
                // SourcesAndDest.Expand): `ARG F="a b"` + `COPY $F /d/` copies the file "a b".
                let mut out = Vec::new();
                for w in whitespace_words(&inst.args) {
                    out.push(self.expand(&w, &*vars, line)?);
                }
                out
            }
        };
        // A destination that expands to nothing means the working directory (the history
        // shows it as written: empty).
        let mut words = words;
        let mut dest_shown = None;
        if let [_, .., last] = words.as_mut_slice() {
            if last.is_empty() {
                *last = ".".to_string();
                dest_shown = Some(String::new());
            }
        }
        let Some((dest, srcs)) = words.split_last() else {
            return Err(step.err(format!("{kw} requires at least two arguments")));
        };
        if srcs.is_empty() {
            return Err(step.err(format!(
                "{kw} requires at least two arguments, but only one was provided. Destination could not be determined"
            )));
        }
        if dest.starts_with('\u{0}') {
            return Err(step.err(format!("{kw}: a heredoc cannot be the destination")));
        }
        for src in srcs.iter().filter(|s| !s.starts_with('\u{0}')) {
            created_by.push(' ');
            created_by.push_str(src);
        }
        for h in &inst.heredocs {
            created_by.push_str(&format!(" <<{}", h.name));
        }
        created_by.push(' ');
        created_by.push_str(dest_shown.as_deref().unwrap_or(dest));
        let dest_is_dir =
            dest.ends_with('/') || dest == "." || dest.ends_with("/.") || dest == "..";
        if srcs.len() > 1 && !dest_is_dir {
            return Err(step.err(format!(
                "when using {kw} with more than one source file, the destination must be a directory and end with a /"
            )));
        }
        let mut dest_abs = join_abs(&st.workdir(), dest);
        if dest_is_dir && !dest_abs.ends_with('/') {
            dest_abs.push('/');
        }
        if checksum.is_some() && !srcs.iter().all(|s| is_http_url(s) || is_git_url(s)) {
            return Err(step.err("--checksum requires HTTP(S) or Git sources"));
        }

        let mut inputs: Vec<NodeId> = Vec::new();
        let dest_input = match st.node {
            Some(n) => {
                inputs.push(n);
                Some(0)
            }
            None => None,
        };
        let input_of = |inputs: &mut Vec<NodeId>, n: NodeId| -> usize {
            match inputs.iter().position(|x| *x == n) {
                Some(i) => i,
                None => {
                    inputs.push(n);
                    inputs.len() - 1
                }
            }
        };
        let from = match flag(&flags, "from") {
            Some(Some(v)) => {
                Some(self.source_for_from(v, stage_idx, step, &format!("{kw} --from"))?)
            }
            Some(None) => return Err(step.err("--from requires a value")),
            None => None,
        };
        let mut actions = Vec::new();
        let mut heredoc_idx = 0usize;
        let base_copy = |src_input: usize, src: String, dest: String| CopyAction {
            src_input,
            src,
            dest,
            owner: owner.clone(),
            mode: mode.clone(),
            follow_symlinks: true,
            dir_copy_contents: true,
            attempt_unpack: false,
            create_dest_path: true,
            allow_wildcard: true,
            allow_empty_wildcard: true,
            exclude: exclude.clone(),
            parents,
        };
        for src in srcs {
            if let Some(marker) = src.strip_prefix('\u{0}') {
                let Some(h) = inst.heredocs.get(heredoc_idx) else {
                    return Err(step.err(format!("{kw}: heredoc {marker} has no body")));
                };
                heredoc_idx += 1;
                let data = if h.expand {
                    let lookup = |k: &str| vars.get(k).cloned();
                    // BuildKit expands heredoc files with a `\` lexer whatever the escape
                    // directive (dockerfile2llb: shell.NewLex('\\') for ExpandRaw).
                    shell::expand_heredoc_in(&h.body, &lookup, '\\', &self.budget)
                        .map_err(|e| e.at_line(line))?
                } else {
                    h.body.clone()
                };
                let path = if dest_is_dir {
                    format!("{dest_abs}{}", h.name)
                } else {
                    dest_abs.clone()
                };
                let path = clean_path(&path);
                let fmode = match &mode {
                    None => 0o644,
                    Some(Chmod::Octal(m)) => *m,
                    Some(Chmod::Symbolic(_)) => {
                        return Err(step.err(
                            "--chmod with a symbolic mode is not supported for heredoc sources",
                        ))
                    }
                };
                let parent = path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
                let already = actions
                    .iter()
                    .any(|a| matches!(a, FileAction::Mkdir { path, .. } if path == parent));
                if !parent.is_empty() && !already {
                    actions.push(FileAction::Mkdir {
                        path: parent.to_string(),
                        mode: 0o755,
                        make_parents: true,
                        owner: owner.clone(),
                    });
                }
                actions.push(FileAction::Mkfile {
                    path,
                    mode: fmode,
                    data: data.into_bytes(),
                    owner: owner.clone(),
                });
                continue;
            }
            if is_add && is_git_url(src) {
                let (src, query) = git_query(src);
                let src = &src;
                let (remote, frag) = match src.split_once('#') {
                    Some((r, f)) => (r.to_string(), Some(f.to_string())),
                    None => (src.clone(), None),
                };
                let (reference, subdir) = match &frag {
                    Some(f) => match f.split_once(':') {
                        Some((r, s)) => (Some(r.to_string()), s.to_string()),
                        None => (Some(f.clone()), String::new()),
                    },
                    None => (None, String::new()),
                };
                let reference = reference.filter(|r| !r.is_empty()).or_else(|| {
                    ["ref", "tag", "branch"]
                        .iter()
                        .find_map(|k| query.get(*k).cloned())
                });
                let subdir = if subdir.is_empty() {
                    query.get("subdir").cloned().unwrap_or_default()
                } else {
                    subdir
                };
                let checksum = checksum.clone().or_else(|| query.get("checksum").cloned());
                let keep_git_dir = keep_git_dir
                    || query
                        .get("keep-git-dir")
                        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
                // `--checksum` pins the commit: it is the reference when none is given, and
                // otherwise the commit the reference must resolve to.
                let (reference, git_checksum) = match (&checksum, reference) {
                    (Some(c), None) => (Some(c.clone()), None),
                    (c, r) => (r, c.clone()),
                };
                let n = self.source(
                    SourceOp::Git {
                        remote: remote.clone(),
                        reference,
                        keep_git_dir,
                        checksum: git_checksum,
                    },
                    format!("{} git {src}", step.prefix()),
                )?;
                let i = input_of(&mut inputs, n);
                let mut c = base_copy(i, clean_path(&format!("/{subdir}")), dest_abs.clone());
                c.allow_wildcard = false;
                actions.push(FileAction::Copy(c));
                continue;
            }
            if is_add && is_http_url(src) {
                let filename = url_filename(src);
                let n = self.source(
                    SourceOp::Http {
                        url: src.clone(),
                        checksum: checksum.clone(),
                        filename: Some(filename.clone()),
                    },
                    format!("{} https {src}", step.prefix()),
                )?;
                let i = input_of(&mut inputs, n);
                let d = if dest_is_dir {
                    format!("{dest_abs}{filename}")
                } else {
                    dest_abs.clone()
                };
                let mut c = base_copy(i, format!("/{filename}"), d);
                c.allow_wildcard = false;
                c.allow_empty_wildcard = false;
                c.attempt_unpack = unpack == Some(true);
                actions.push(FileAction::Copy(c));
                continue;
            }
            let n = match from {
                Some(n) => n,
                None => {
                    let literal = !src.contains(['*', '?', '[']);
                    // Bounded: past 2^22 pattern matches the check is skipped (a lint only).
                    let cost = self.opts.dockerignore.len() * (src.matches('/').count() + 1);
                    let checked = literal && cost <= self.ignore_checks_left;
                    if checked {
                        self.ignore_checks_left -= cost;
                    }
                    if checked && lint::ignored(&self.opts.dockerignore, src) {
                        self.lint(
                            line,
                            "CopyIgnoredFile",
                            format!("Attempting to {kw} file \"{src}\" that is excluded by .dockerignore"),
                        );
                    }
                    self.context()?
                }
            };
            let i = input_of(&mut inputs, n);
            let rel = src.strip_prefix("./").unwrap_or(src);
            let src_path = match rel.split_once("/./") {
                Some((before, after)) if parents && !before.is_empty() => format!(
                    "{}/./{}",
                    clean_path(&format!("/{before}")),
                    clean_path(&format!("/{after}")).trim_start_matches('/')
                ),
                _ => clean_path(&format!("/{src}")),
            };
            let mut c = base_copy(i, src_path, dest_abs.clone());
            c.attempt_unpack = is_add && unpack != Some(false);
            actions.push(FileAction::Copy(c));
        }
        let meta = self.meta(step, step.description());
        let node = match (link, dest_input) {
            (true, Some(d)) => {
                // Drop the stage from the copy's inputs (indexes above it shift down by one)
                // unless a source reads from that very node.
                let stage_node = inputs[d];
                let reads_stage = actions
                    .iter()
                    .any(|a| matches!(a, FileAction::Copy(c) if c.src_input == d));
                if !reads_stage {
                    inputs.remove(d);
                    for a in &mut actions {
                        if let FileAction::Copy(c) = a {
                            if c.src_input > d {
                                c.src_input -= 1;
                            }
                        }
                    }
                }
                let copy = self.push(
                    Op::File(FileOp {
                        dest_input: None,
                        actions,
                    }),
                    inputs,
                    meta.clone(),
                )?;
                self.push(Op::Merge, vec![stage_node, copy], meta)?
            }
            _ => self.push(
                Op::File(FileOp {
                    dest_input,
                    actions,
                }),
                inputs,
                meta,
            )?,
        };
        st.node = Some(node);
        Self::history(st, format!("{created_by} # buildkit"), false);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_file_names_like_buildkit() {
        assert_eq!(url_filename("https://x.org/a/b.tar.gz?x=1#f"), "b.tar.gz");
        assert_eq!(url_filename("https://x.org/dir/"), "dir");
        assert_eq!(url_filename("https://x.org/"), "__unnamed__");
        assert_eq!(url_filename("https://x.org"), "__unnamed__");
        assert_eq!(url_filename("https://x.org/a%20b.txt"), "a b.txt");
        assert_eq!(url_filename("https://x.org/a/.."), "__unnamed__");
        assert_eq!(url_filename("https://x.org/x%2Fy"), "__unnamed__");
        assert_eq!(url_filename("https://x.org/%zz%é"), "%zz%é");
    }

    #[test]
    fn git_query_form() {
        let (r, q) = git_query("https://h/r.git?ref=v1&subdir=docs&keep-git-dir");
        assert_eq!(r, "https://h/r.git");
        assert_eq!(q.get("ref").map(String::as_str), Some("v1"));
        assert_eq!(q.get("subdir").map(String::as_str), Some("docs"));
        assert_eq!(q.get("keep-git-dir").map(String::as_str), Some("true"));
        let (r, q) = git_query("https://h/r.git#main:sub");
        assert_eq!(r, "https://h/r.git#main:sub");
        assert!(q.is_empty());
        assert!(is_git_url("https://h/r.git?ref=v1"));
        assert!(!is_git_url("https://h/file.tar.gz?x=.git"));
    }
}
