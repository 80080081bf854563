//! Lowering: AST → stages → [`Definition`] nodes and the target's image config.
//!
//! Global ARGs (before the first FROM) plus the predefined platform ARGs form the scope of
//! FROM lines. Each FROM opens a stage; only stages reachable from the target (through
//! `FROM <stage>`, `COPY/ADD --from` and `RUN --mount from=`) are lowered, in file order.
//! RUN → ExecOp; COPY/ADD/WORKDIR → FileOp; everything else only edits the image config and
//! adds an empty-layer history entry.
//!
//! Conventions the solver relies on:
//! - `CopyAction.dest` is absolute and cleaned; it ends in `/` exactly when Docker treats the
//!   destination as a directory (written with a trailing `/`, `.`, or `/.`). Without the slash,
//!   a single file source is copied *to* that path; a directory source copies its contents
//!   into it (`dir_copy_contents`). `src` is absolute within the source input (context paths
//!   are clamped to the context root; `--from` paths ignore the other stage's WORKDIR).
//! - Owners (`--chown`) are passed as written: numbers become `IdSpec::Id`, anything else
//!   `IdSpec::Name`, resolved against the destination's `/etc/passwd`/`/etc/group`.
//! - `Mkdir` with `make_parents` must succeed on an existing directory without changing it.
//! - ADD of a URL: an `Http` source whose file is named `filename`; the copy reads
//!   `/<filename>` from it (BuildKit gives downloaded files mode 0600).
//! - A secret mount with `env` set and no `target` has an empty `target` (env only).
//! - `RUN <<EOF` whose body starts with `#!` writes the body to a tmpfs at `/dev/pipes` and
//!   executes it (`/bin/sh` and `printf` must exist in the image).
//! - History: one entry per instruction (plus ONBUILD triggers) with `empty_layer=false` for
//!   each node-producing step, so the solver appends one diff_id per such step.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rbuild_graph::image::DEFAULT_PATH;
use rbuild_graph::{
    CacheSharing, Chmod, CopyAction, Definition, ExecOp, FileAction, FileOp, Healthcheck, History,
    IdSpec, ImageConfig, Meta, Mount, MountKind, NetworkMode, Node, NodeId, Op, Owner, Platform,
    SecurityMode, SourceOp,
};

use crate::lint;
use crate::parser::{self, Instruction, Severity};
use crate::shell;
use crate::util::{clean_path, join_abs, suggest};
use crate::{BuildOpts, BuildPlan, Diagnostic, FrontendError, ImageResolver, NamedContext};

const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

const KEYWORDS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// One stage as written.
struct StageDef<'a> {
    from: &'a Instruction,
    insts: Vec<&'a Instruction>,
    /// Lowercased stage name.
    name: Option<String>,
    /// Expanded base text (FROM argument).
    base: String,
    platform: Option<Platform>,
}

/// Where a stage's base comes from.
enum Base {
    Scratch,
    Stage(usize),
    Image(String),
    /// A named local build context (its solver local name).
    Local(String),
}

/// The evolving state of one stage.
#[derive(Clone)]
struct StageState {
    node: Option<NodeId>,
    config: ImageConfig,
    /// Declared ARGs with a value, in declaration order.
    args: Vec<(String, String)>,
    cmd_set: bool,
    /// ARGs given a value after an ENV of the same name: like BuildKit, their value wins for
    /// expansion and RUN (the image config keeps the ENV value).
    arg_over_env: BTreeSet<String>,
    /// A WORKDIR was set by this Dockerfile (for the WorkdirRelativePath check).
    workdir_set: bool,
}

impl StageState {
    fn shell(&self) -> Vec<String> {
        if self.config.config.shell.is_empty() {
            vec!["/bin/sh".to_string(), "-c".to_string()]
        } else {
            self.config.config.shell.clone()
        }
    }

    fn workdir(&self) -> String {
        if self.config.config.working_dir.is_empty() {
            "/".to_string()
        } else {
            self.config.config.working_dir.clone()
        }
    }

    /// Variables visible to expansion: ENV wins over ARG.
    fn vars(&self) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = self.args.iter().cloned().collect();
        for kv in &self.config.config.env {
            if let Some((k, v)) = kv.split_once('=') {
                m.insert(k.to_string(), v.to_string());
            }
        }
        for (k, v) in &self.args {
            if self.arg_over_env.contains(k) {
                m.insert(k.clone(), v.clone());
            }
        }
        m
    }
}

/// Per-step context (for metadata and errors).
struct Step<'i> {
    inst: &'i Instruction,
    label: String,
    index: usize,
    total: usize,
    /// The Dockerfile has one stage: progress names omit the stage (`[1/3]`), as BuildKit's.
    single: bool,
}

impl Step<'_> {
    fn line(&self) -> u32 {
        self.inst.line_start
    }

    /// `KEYWORD rest-as-written` on one line.
    fn display(&self) -> String {
        let rest = self
            .inst
            .original
            .split_once(char::is_whitespace)
            .map(|(_, r)| r.trim())
            .unwrap_or("");
        if rest.is_empty() {
            self.inst.keyword.clone()
        } else {
            format!("{} {}", self.inst.keyword, rest)
        }
    }

    /// `[stage i/n]`, or `[i/n]` in a single-stage Dockerfile.
    fn prefix(&self) -> String {
        if self.single {
            format!("[{}/{}]", self.index, self.total)
        } else {
            format!("[{} {}/{}]", self.label, self.index, self.total)
        }
    }

    fn description(&self) -> String {
        format!("{} {}", self.prefix(), self.display())
    }

    fn err(&self, message: impl Into<String>) -> FrontendError {
        FrontendError::instr(self.line(), message)
    }
}

struct Lowerer<'a> {
    opts: &'a BuildOpts,
    resolver: &'a dyn ImageResolver,
    escape: char,
    def: Definition,
    context_node: Option<NodeId>,
    scratch_node: Option<NodeId>,
    images: BTreeMap<(String, String), (NodeId, crate::ResolvedImage)>,
    sources: BTreeMap<String, NodeId>,
    warnings: Vec<Diagnostic>,
    global: Vec<(String, String)>,
    stage_names: Vec<Option<String>>,
    done: Vec<Option<StageState>>,
    /// `# check=` directive: skipped rules (`all` skips everything) and error mode.
    check_skip: BTreeSet<String>,
    check_error: bool,
    /// Experimental rules enabled with `# check=experimental=…` (or `all`).
    check_experimental: BTreeSet<String>,
    lint_failure: Option<(u32, String)>,
    /// Variables expanded while dispatching an instruction that had no value (UndefinedVar),
    /// collected while `track_undefined` is set.
    undefined: std::cell::RefCell<Vec<String>>,
    track_undefined: std::cell::Cell<bool>,
}

fn flag_name_value(flag: &str) -> (String, Option<String>) {
    let f = flag.trim_start_matches('-');
    match f.split_once('=') {
        Some((k, v)) => (k.to_ascii_lowercase(), Some(v.to_string())),
        None => (f.to_ascii_lowercase(), None),
    }
}

/// Validate flags against `allowed`; returns (name, value) pairs in order.
fn parse_flags(
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

fn flag<'f>(flags: &'f [(String, Option<String>)], name: &str) -> Option<&'f Option<String>> {
    flags.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn flag_bool(
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
fn raw_words(s: &str, escape: char) -> Vec<String> {
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
fn go_quote_list(items: &[String]) -> String {
    let q: Vec<String> = items
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\"")))
        .collect();
    format!("[{}]", q.join(" "))
}

fn parse_platform(s: &str) -> Option<Platform> {
    let mut parts = s.split('/');
    let os = parts.next()?.trim();
    let arch = parts.next()?.trim();
    let variant = parts.next().map(str::to_string);
    if os.is_empty() || arch.is_empty() || parts.next().is_some() {
        return None;
    }
    Some(Platform {
        os: os.to_string(),
        architecture: arch.to_string(),
        variant: variant.filter(|v| !v.is_empty()),
    })
}

fn parse_id(s: &str) -> IdSpec {
    match s.parse::<u32>() {
        Ok(n) => IdSpec::Id(n),
        Err(_) => IdSpec::Name(s.to_string()),
    }
}

fn parse_owner(s: &str, line: u32) -> Result<Owner, FrontendError> {
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

fn valid_symbolic_mode(s: &str) -> bool {
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

fn parse_chmod(s: &str, line: u32) -> Result<Chmod, FrontendError> {
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

/// Go-style duration ("30s", "1m30s", "500ms") to nanoseconds (`time.ParseDuration`'s
/// syntax; HEALTHCHECK flags, and `rbuild prune --filter until=`).
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

fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last()? {
        'k' => (t.get(..t.len() - 1)?, 1u64 << 10),
        'm' => (t.get(..t.len() - 1)?, 1 << 20),
        'g' => (t.get(..t.len() - 1)?, 1 << 30),
        _ => (t, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

fn is_git_url(s: &str) -> bool {
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
fn git_query(src: &str) -> (String, BTreeMap<String, String>) {
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

fn is_http_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// `%XX` escapes decoded (as Go's url.Parse does for the path); invalid escapes kept.
fn percent_decode(s: &str) -> String {
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

fn url_filename(url: &str) -> String {
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

/// Entry point used by [`crate::build`].
pub(crate) fn build(
    text: &str,
    opts: &BuildOpts,
    resolver: &dyn ImageResolver,
) -> Result<BuildPlan, FrontendError> {
    let ast = parser::parse(text);
    if let Some(e) = ast.first_error() {
        return Err(FrontendError::Syntax {
            line: e.line,
            message: e.message.clone(),
        });
    }
    let mut warnings: Vec<Diagnostic> = Vec::new();

    // Split into global ARGs and stages.
    let mut globals: Vec<&Instruction> = Vec::new();
    let mut stage_insts: Vec<(&Instruction, Vec<&Instruction>)> = Vec::new();
    for inst in &ast.instructions {
        check_keyword(inst)?;
        if inst.keyword == "FROM" {
            stage_insts.push((inst, Vec::new()));
        } else if let Some((_, list)) = stage_insts.last_mut() {
            list.push(inst);
        } else if inst.keyword == "ARG" {
            globals.push(inst);
        } else {
            return Err(FrontendError::instr(
                inst.line_start,
                format!(
                    "{} before the first FROM: only ARG may come before FROM",
                    inst.keyword
                ),
            ));
        }
    }
    if stage_insts.is_empty() {
        return Err(FrontendError::NoStages);
    }

    let mut lw = Lowerer {
        opts,
        resolver,
        escape: ast.escape,
        def: Definition::new(),
        context_node: None,
        scratch_node: None,
        images: BTreeMap::new(),
        sources: BTreeMap::new(),
        warnings: Vec::new(),
        global: platform_args(&opts.platform),
        stage_names: Vec::new(),
        done: Vec::new(),
        check_skip: BTreeSet::new(),
        check_error: false,
        check_experimental: BTreeSet::new(),
        lint_failure: None,
        undefined: std::cell::RefCell::new(Vec::new()),
        track_undefined: std::cell::Cell::new(false),
    };
    // `# check=` directive, overridden by the BUILDKIT_DOCKERFILE_CHECK build arg (BuildKit).
    let mut check_specs: Vec<String> = ast
        .directives
        .iter()
        .filter(|d| d.name == "check")
        .map(|d| d.value.clone())
        .collect();
    if let Some(v) = opts.build_args.get("BUILDKIT_DOCKERFILE_CHECK") {
        check_specs = vec![v.clone()];
    }
    for spec in &check_specs {
        for part in spec.split(';') {
            match part.trim().split_once('=') {
                Some(("skip", v)) => lw
                    .check_skip
                    .extend(v.split(',').map(|r| r.trim().to_ascii_lowercase())),
                Some(("error", v)) => lw.check_error = v.trim().eq_ignore_ascii_case("true"),
                Some(("experimental", v)) => lw
                    .check_experimental
                    .extend(v.split(',').map(|r| r.trim().to_ascii_lowercase())),
                _ => {}
            }
        }
    }
    for d in ast
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
    {
        lw.lint(d.line, "NoEmptyContinuation", d.message.clone());
    }
    lw.lint_file(&ast.instructions);
    let mut declared: BTreeSet<String> = BTreeSet::new();
    // Global ARG defaults alone (no --build-arg), for InvalidDefaultArgInFrom.
    let mut defaults_only: HashMap<String, String> = lw.global.iter().cloned().collect();
    for inst in &globals {
        let pairs = lw.arg_pairs(inst)?;
        for (name, default) in pairs {
            if lint::bad_description(text, inst.line_start, &name) {
                lw.lint_experimental(
                    inst.line_start,
                    "InvalidDefinitionDescription",
                    format!("Comment for ARG should follow the format: `# {name} <description>`"),
                );
            }
            if let Some(d) = &default {
                if let Ok(v) = lw.expand(d, &defaults_only, inst.line_start) {
                    defaults_only.insert(name.clone(), v);
                }
            }
            declared.insert(name.clone());
            let value = match opts.build_args.get(&name) {
                Some(v) => Some(v.clone()),
                None => match default {
                    Some(d) => {
                        let vars: HashMap<String, String> = lw.global.iter().cloned().collect();
                        Some(lw.expand(&d, &vars, inst.line_start)?)
                    }
                    None => None,
                },
            };
            if let Some(v) = value {
                set_pair(&mut lw.global, &name, v);
            }
        }
    }

    // Stage headers.
    let mut stages: Vec<StageDef> = Vec::new();
    for (from, insts) in &stage_insts {
        lw.lint_from(from, text, &declared, &defaults_only)?;
        lw.lint_multiple(insts);
    }
    for (from, insts) in stage_insts {
        let sd = lw.stage_header(from, insts, &stages)?;
        stages.push(sd);
    }
    lw.stage_names = stages.iter().map(|s| s.name.clone()).collect();

    // Target.
    let target = match &opts.target {
        Some(t) => {
            let tl = t.to_lowercase();
            match stages.iter().position(|s| s.name.as_deref() == Some(&tl)) {
                Some(i) => i,
                None => {
                    let names: Vec<&str> =
                        stages.iter().filter_map(|s| s.name.as_deref()).collect();
                    return Err(FrontendError::UnknownTarget {
                        target: t.clone(),
                        suggestion: suggest(&tl, names),
                    });
                }
            }
        }
        None => stages.len().saturating_sub(1),
    };
    let target_name = stages
        .get(target)
        .and_then(|s| s.name.clone())
        .unwrap_or_else(|| "default".to_string());
    set_pair(&mut lw.global, "TARGETSTAGE", target_name);

    // Dependencies and reachability.
    let mut deps: Vec<BTreeSet<usize>> = Vec::new();
    for (idx, sd) in stages.iter().enumerate() {
        deps.push(lw.stage_deps(idx, sd)?);
    }
    let mut reachable = vec![false; stages.len()];
    let mut stack = vec![target];
    while let Some(s) = stack.pop() {
        match reachable.get_mut(s) {
            Some(r) if !*r => *r = true,
            _ => continue,
        }
        if let Some(d) = deps.get(s) {
            stack.extend(d.iter().copied());
        }
    }

    // Declared names (for the unused build-arg warning).
    for sd in &stages {
        for inst in &sd.insts {
            if inst.keyword == "ARG" {
                for (n, _) in lw.arg_pairs(inst)? {
                    declared.insert(n);
                }
            }
        }
    }

    lw.done = vec![None; stages.len()];
    for (idx, sd) in stages.iter().enumerate() {
        if !reachable.get(idx).copied().unwrap_or(false) {
            continue;
        }
        let st = lw.dispatch_stage(idx, sd)?;
        if let Some(slot) = lw.done.get_mut(idx) {
            *slot = Some(st);
        }
    }

    let mut st = lw
        .done
        .get_mut(target)
        .and_then(Option::take)
        .ok_or(FrontendError::NoStages)?;
    let root = match st.node {
        Some(n) => n,
        None => lw.scratch()?,
    };
    for (k, v) in &opts.labels {
        st.config.config.labels.insert(k.clone(), v.clone());
    }
    for name in opts.build_args.keys() {
        let builtin = name.starts_with("BUILDKIT_")
            || name == "SOURCE_DATE_EPOCH"
            || lw.global.iter().any(|(k, _)| k == name);
        if !declared.contains(name) && !PROXY_ARGS.contains(&name.as_str()) && !builtin {
            lw.warnings.push(Diagnostic {
                line: 0,
                end_line: 0,
                message: format!("build argument \"{name}\" was not consumed by any ARG"),
            });
        }
    }
    if let Some((line, message)) = lw.lint_failure.take() {
        // BuildKit's wording: every failing rule, then the first finding.
        let mut rules: Vec<&str> = Vec::new();
        for w in &lw.warnings {
            if let Some((r, _)) = w.message.split_once(": ") {
                if r.chars().all(|c| c.is_ascii_alphanumeric()) && !rules.contains(&r) {
                    rules.push(r);
                }
            }
        }
        return Err(FrontendError::Instruction {
            line,
            message: format!(
                "lint violation found for rules: {} (check error=true): {message}",
                rules.join(", ")
            ),
        });
    }
    // Spans: a finding on an instruction's first line covers the whole instruction.
    for w in &mut lw.warnings {
        if let Some(i) = ast.instructions.iter().find(|i| i.line_start == w.line) {
            w.end_line = w.end_line.max(i.line_end);
        }
    }
    warnings.append(&mut lw.warnings);
    let target_stage = stages
        .get(target)
        .and_then(|s| s.name.clone())
        .unwrap_or_else(|| target.to_string());
    Ok(BuildPlan {
        definition: lw.def,
        root,
        image: st.config,
        target_stage,
        warnings,
        syntax: ast
            .directives
            .iter()
            .find(|d| d.name == "syntax")
            .map(|d| d.value.clone()),
    })
}

fn check_keyword(inst: &Instruction) -> Result<(), FrontendError> {
    if KEYWORDS.contains(&inst.keyword.as_str()) {
        return Ok(());
    }
    Err(FrontendError::UnknownInstruction {
        line: inst.line_start,
        name: inst.keyword.clone(),
        suggestion: suggest(&inst.keyword, KEYWORDS),
    })
}

fn platform_args(target: &Platform) -> Vec<(String, String)> {
    let build = Platform::host();
    let mut v = Vec::new();
    for (prefix, p) in [("TARGET", target), ("BUILD", &build)] {
        v.push((format!("{prefix}PLATFORM"), p.to_text()));
        v.push((format!("{prefix}OS"), p.os.clone()));
        v.push((format!("{prefix}ARCH"), p.architecture.clone()));
        v.push((
            format!("{prefix}VARIANT"),
            p.variant.clone().unwrap_or_default(),
        ));
    }
    v
}

fn set_pair(list: &mut Vec<(String, String)>, key: &str, value: String) {
    if let Some(slot) = list.iter_mut().find(|(k, _)| k == key) {
        slot.1 = value;
    } else {
        list.push((key.to_string(), value));
    }
}

fn valid_stage_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

impl<'a> Lowerer<'a> {
    /// Record a build-check warning unless the rule is skipped by `# check=skip=`.
    fn lint(&mut self, line: u32, rule: &str, message: String) {
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
    fn lint_experimental(&mut self, line: u32, rule: &str, message: String) {
        let lower = rule.to_ascii_lowercase();
        if self.check_experimental.contains("all") || self.check_experimental.contains(&lower) {
            self.lint(line, rule, message);
        }
    }

    /// FROM checks: UndefinedArgInFrom, InvalidDefaultArgInFrom, RedundantTargetPlatform,
    /// FromPlatformFlagConstDisallowed, InvalidDefinitionDescription.
    fn lint_from(
        &mut self,
        from: &Instruction,
        text: &str,
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
            for r in lint::referenced_vars(t, self.escape) {
                if !declared.contains(&r.name) && !predefined.contains(&r.name) {
                    let hint = suggest(&r.name, declared.iter().map(String::as_str))
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
            let v = shell::expand_with(base, &lookup, self.escape).unwrap_or_default();
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
            if lint::bad_description(text, line, n) {
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
    fn lint_multiple(&mut self, insts: &[&Instruction]) {
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

    fn lint_secret(&mut self, line: u32, what: &str, name: &str) {
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
    fn lint_file(&mut self, insts: &[Instruction]) {
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

    fn expand(
        &self,
        word: &str,
        vars: &HashMap<String, String>,
        line: u32,
    ) -> Result<String, FrontendError> {
        self.note_undefined(word, vars);
        let lookup = |k: &str| vars.get(k).cloned();
        shell::expand_with(word, &lookup, self.escape).map_err(|e| e.at_line(line))
    }

    /// Remember variables `word` uses without a value or default (UndefinedVar).
    fn note_undefined(&self, word: &str, vars: &HashMap<String, String>) {
        if !self.track_undefined.get() {
            return;
        }
        for r in lint::referenced_vars(word, self.escape) {
            if !r.has_default && !vars.contains_key(&r.name) {
                self.undefined.borrow_mut().push(r.name);
            }
        }
    }

    fn expand_words(
        &self,
        word: &str,
        vars: &HashMap<String, String>,
        line: u32,
    ) -> Result<Vec<String>, FrontendError> {
        self.note_undefined(word, vars);
        let lookup = |k: &str| vars.get(k).cloned();
        shell::expand_words_with(word, &lookup, self.escape).map_err(|e| e.at_line(line))
    }

    fn meta(&self, step: &Step<'_>, description: String) -> Meta {
        Meta {
            description,
            stage: Some(step.label.clone()),
            lines: Some((step.inst.line_start, step.inst.line_end)),
            ignore_cache: self.opts.no_cache,
        }
    }

    fn push(&mut self, op: Op, inputs: Vec<NodeId>, meta: Meta) -> Result<NodeId, FrontendError> {
        Ok(self.def.push(Node { op, inputs, meta })?)
    }

    fn scratch(&mut self) -> Result<NodeId, FrontendError> {
        if let Some(n) = self.scratch_node {
            return Ok(n);
        }
        let n = self.push(
            Op::Source(SourceOp::Scratch),
            vec![],
            Meta {
                description: "scratch".to_string(),
                ..Meta::default()
            },
        )?;
        self.scratch_node = Some(n);
        Ok(n)
    }

    fn context(&mut self) -> Result<NodeId, FrontendError> {
        if let Some(n) = self.context_node {
            return Ok(n);
        }
        let n = self.push(
            Op::Source(SourceOp::Local {
                name: "context".to_string(),
                exclude: self.opts.dockerignore.clone(),
            }),
            vec![],
            Meta {
                description: "[internal] load build context".to_string(),
                ..Meta::default()
            },
        )?;
        self.context_node = Some(n);
        Ok(n)
    }

    fn source(&mut self, op: SourceOp, description: String) -> Result<NodeId, FrontendError> {
        let key =
            String::from_utf8_lossy(&rbuild_graph::canonical_json(&op, "source")?).into_owned();
        if let Some(n) = self.sources.get(&key) {
            return Ok(*n);
        }
        let n = self.push(
            Op::Source(op),
            vec![],
            Meta {
                description,
                ..Meta::default()
            },
        )?;
        self.sources.insert(key, n);
        Ok(n)
    }

    /// Resolve an image and return its source node (shared per reference and platform).
    fn image(
        &mut self,
        reference: &str,
        platform: &Platform,
        line: u32,
        context: &str,
        description: String,
        stage: Option<&str>,
    ) -> Result<(NodeId, crate::ResolvedImage), FrontendError> {
        let key = (reference.to_string(), platform.to_text());
        if let Some((n, r)) = self.images.get(&key) {
            return Ok((*n, r.clone()));
        }
        let resolved = self
            .resolver
            .resolve(reference, platform)
            .map_err(|message| FrontendError::Resolve {
                line,
                context: context.to_string(),
                reference: reference.to_string(),
                message,
            })?;
        let op = SourceOp::Image {
            reference: resolved.reference.clone(),
            digest: Some(resolved.digest.clone()),
            platform: platform.clone(),
        };
        let op_key =
            String::from_utf8_lossy(&rbuild_graph::canonical_json(&op, "source")?).into_owned();
        if let Some(n) = self.sources.get(&op_key).copied() {
            self.images.insert(key, (n, resolved.clone()));
            return Ok((n, resolved));
        }
        let n = self.push(
            Op::Source(op),
            vec![],
            Meta {
                description,
                stage: stage.map(str::to_string),
                lines: Some((line, line)),
                ignore_cache: false,
            },
        )?;
        self.sources.insert(op_key, n);
        self.images.insert(key, (n, resolved.clone()));
        Ok((n, resolved))
    }

    /// `ARG a=b c` → [(a, Some(b)), (c, None)] (defaults unexpanded).
    fn arg_pairs(
        &self,
        inst: &Instruction,
    ) -> Result<Vec<(String, Option<String>)>, FrontendError> {
        parse_flags(inst, &[])?;
        let words = raw_words(&inst.args, self.escape);
        if words.is_empty() {
            return Err(FrontendError::instr(
                inst.line_start,
                "ARG requires at least one argument",
            ));
        }
        let mut out = Vec::new();
        for w in words {
            let (k, v) = match w.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (w.clone(), None),
            };
            if k.is_empty()
                || !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
            {
                return Err(FrontendError::instr(
                    inst.line_start,
                    format!("ARG: invalid name \"{k}\""),
                ));
            }
            out.push((k, v));
        }
        Ok(out)
    }

    fn stage_header<'i>(
        &self,
        from: &'i Instruction,
        insts: Vec<&'i Instruction>,
        earlier: &[StageDef<'_>],
    ) -> Result<StageDef<'i>, FrontendError> {
        let line = from.line_start;
        let flags = parse_flags(from, &["platform"])?;
        let vars: HashMap<String, String> = self.global.iter().cloned().collect();
        let words = raw_words(&from.args, self.escape);
        let (base_raw, name) = match words.as_slice() {
            [b] => (b.clone(), None),
            [b, as_kw, n] if as_kw.eq_ignore_ascii_case("as") => {
                (b.clone(), Some(n.to_lowercase()))
            }
            _ => {
                return Err(FrontendError::instr(
                    line,
                    "FROM requires either one argument, or three: FROM <source> [AS <name>]",
                ))
            }
        };
        let base = self.expand(&base_raw, &vars, line)?;
        if base.is_empty() {
            return Err(FrontendError::instr(
                line,
                format!("FROM: base name \"{base_raw}\" expands to an empty string"),
            ));
        }
        if let Some(n) = &name {
            if !valid_stage_name(n) {
                return Err(FrontendError::instr(
                    line,
                    format!("invalid stage name \"{n}\": must match [a-z][a-z0-9-_.]*"),
                ));
            }
            if n == "scratch" || n == "context" {
                return Err(FrontendError::instr(
                    line,
                    format!("ReservedStageName: stage name \"{n}\" is reserved"),
                ));
            }
            if earlier.iter().any(|s| s.name.as_deref() == Some(n)) {
                return Err(FrontendError::instr(
                    line,
                    format!("DuplicateStageName: duplicate stage name \"{n}\""),
                ));
            }
        }
        let platform = match flag(&flags, "platform") {
            Some(Some(p)) => {
                let p = self.expand(p, &vars, line)?;
                Some(parse_platform(&p).ok_or_else(|| {
                    FrontendError::instr(line, format!("FROM --platform: invalid platform \"{p}\""))
                })?)
            }
            Some(None) => {
                return Err(FrontendError::instr(
                    line,
                    "FROM --platform requires a value",
                ))
            }
            None => None,
        };
        Ok(StageDef {
            from,
            insts,
            name,
            base,
            platform,
        })
    }

    /// A stage referenced by `name` (stage name or index) from stage `current`.
    fn stage_ref(
        &self,
        name: &str,
        current: usize,
        line: u32,
        what: &str,
    ) -> Result<Option<usize>, FrontendError> {
        // A named build context overrides a stage of the same name (as in BuildKit).
        if self.named_context(name).is_some() {
            return Ok(None);
        }
        let lname = name.to_lowercase();
        let found = self
            .stage_names
            .iter()
            .position(|n| n.as_deref() == Some(lname.as_str()))
            .or_else(|| {
                lname
                    .parse::<usize>()
                    .ok()
                    .filter(|i| *i < self.stage_names.len())
            });
        match found {
            Some(i) if i >= current => Err(FrontendError::instr(
                line,
                format!(
                    "{what}: stage \"{name}\" is defined at or after the current stage; it needs to be defined before it"
                ),
            )),
            other => Ok(other),
        }
    }

    fn base_of(&self, idx: usize, sd: &StageDef<'_>) -> Base {
        let lb = sd.base.to_lowercase();
        if lb == "scratch" {
            return Base::Scratch;
        }
        match self.named_context(&sd.base) {
            Some(NamedContext::Image(r)) => return Base::Image(r.clone()),
            Some(NamedContext::Local(l)) => return Base::Local(l.clone()),
            None => {}
        }
        if let Some(i) = self
            .stage_names
            .iter()
            .take(idx)
            .position(|n| n.as_deref() == Some(lb.as_str()))
        {
            return Base::Stage(i);
        }
        Base::Image(sd.base.clone())
    }

    /// The `--build-context` a name (not a stage) stands for, if any.
    fn named_context(&self, name: &str) -> Option<&NamedContext> {
        self.opts
            .named_contexts
            .get(name)
            .or_else(|| self.opts.named_contexts.get(&name.to_lowercase()))
    }

    /// The local source node of a named local build context.
    fn named_local(&mut self, local: &str) -> Result<NodeId, FrontendError> {
        self.source(
            SourceOp::Local {
                name: local.to_string(),
                exclude: Vec::new(),
            },
            format!("[internal] load build context {local}"),
        )
    }

    fn stage_deps(&self, idx: usize, sd: &StageDef<'_>) -> Result<BTreeSet<usize>, FrontendError> {
        let mut deps = BTreeSet::new();
        if let Base::Stage(i) = self.base_of(idx, sd) {
            deps.insert(i);
        }
        for inst in &sd.insts {
            for f in &inst.flags {
                let (k, v) = flag_name_value(f);
                let Some(v) = v else { continue };
                if k == "from" && matches!(inst.keyword.as_str(), "COPY" | "ADD") {
                    if let Some(i) = self.stage_ref(
                        &v,
                        idx,
                        inst.line_start,
                        &format!("{} --from={v}", inst.keyword),
                    )? {
                        deps.insert(i);
                    }
                }
                if k == "mount" && inst.keyword == "RUN" {
                    for field in v.split(',') {
                        if let Some((fk, fv)) = field.split_once('=') {
                            if fk.trim().eq_ignore_ascii_case("from") {
                                if let Some(i) = self.stage_ref(
                                    fv.trim(),
                                    idx,
                                    inst.line_start,
                                    "RUN --mount from",
                                )? {
                                    deps.insert(i);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(deps)
    }

    fn dispatch_stage(
        &mut self,
        idx: usize,
        sd: &StageDef<'_>,
    ) -> Result<StageState, FrontendError> {
        let label = sd.name.clone().unwrap_or_else(|| format!("stage-{idx}"));
        // Like BuildKit, `FROM scratch` is not a step: the numbering starts at the first
        // instruction.
        let from_step_count = usize::from(!matches!(self.base_of(idx, sd), Base::Scratch));
        let total = sd.insts.len() + from_step_count;
        let line = sd.from.line_start;
        let platform = sd
            .platform
            .clone()
            .unwrap_or_else(|| self.opts.platform.clone());
        let from_step = Step {
            inst: sd.from,
            label: label.clone(),
            index: 1,
            total,
            single: self.stage_names.len() == 1,
        };
        let mut st = match self.base_of(idx, sd) {
            Base::Scratch => StageState {
                node: None,
                config: ImageConfig::scratch(&platform),
                args: Vec::new(),
                cmd_set: false,
                arg_over_env: BTreeSet::new(),
                workdir_set: false,
            },
            Base::Stage(i) => {
                let prev = self.done.get(i).and_then(Clone::clone).ok_or_else(|| {
                    FrontendError::instr(line, format!("FROM: stage \"{}\" was not built", sd.base))
                })?;
                StageState {
                    cmd_set: false,
                    ..prev
                }
            }
            Base::Local(local) => {
                // The directory's contents become the stage's root filesystem.
                let src = self.named_local(&local)?;
                let meta = Meta {
                    description: format!("{} FROM {}", from_step.prefix(), sd.base),
                    stage: Some(label.clone()),
                    lines: Some((line, line)),
                    ignore_cache: self.opts.no_cache,
                };
                let node = self.push(
                    Op::File(FileOp {
                        dest_input: None,
                        actions: vec![FileAction::Copy(CopyAction {
                            src_input: 0,
                            src: "/".into(),
                            dest: "/".into(),
                            owner: None,
                            mode: None,
                            follow_symlinks: true,
                            dir_copy_contents: true,
                            attempt_unpack: false,
                            create_dest_path: true,
                            allow_wildcard: false,
                            allow_empty_wildcard: false,
                            exclude: Vec::new(),
                            parents: false,
                        })],
                    }),
                    vec![src],
                    meta,
                )?;
                StageState {
                    node: Some(node),
                    config: ImageConfig::scratch(&platform),
                    args: Vec::new(),
                    cmd_set: false,
                    arg_over_env: BTreeSet::new(),
                    workdir_set: false,
                }
            }
            Base::Image(reference) => {
                let desc = format!(
                    "{} FROM {}",
                    from_step
                        .description()
                        .split(']')
                        .next()
                        .map(|s| format!("{s}]"))
                        .unwrap_or_default(),
                    reference
                );
                let (node, resolved) = self.image(
                    &reference,
                    &platform,
                    line,
                    &format!("FROM {reference}"),
                    desc,
                    Some(&label),
                )?;
                let got = (&resolved.config.os, &resolved.config.architecture);
                if !got.0.is_empty() && (got.0 != &platform.os || got.1 != &platform.architecture) {
                    self.lint(
                        line,
                        "InvalidBaseImagePlatform",
                        format!(
                            "Base image {reference} was pulled with platform \"{}/{}\", expected \"{}\" for current build",
                            got.0,
                            got.1,
                            platform.to_text()
                        ),
                    );
                }
                StageState {
                    node: Some(node),
                    config: resolved.config,
                    args: Vec::new(),
                    cmd_set: false,
                    arg_over_env: BTreeSet::new(),
                    workdir_set: false,
                }
            }
        };
        if st.config.config.env_get("PATH").is_none() {
            st.config.config.env_set("PATH", DEFAULT_PATH);
        }
        if st.config.config.working_dir.is_empty() {
            st.config.config.working_dir = "/".to_string();
        }
        // ONBUILD triggers of the base run right after FROM.
        let triggers = std::mem::take(&mut st.config.config.on_build);
        for trig in triggers {
            let ast = parser::parse(&trig);
            if let Some(e) = ast.first_error() {
                return Err(FrontendError::instr(
                    line,
                    format!("ONBUILD trigger \"{trig}\": {}", e.message),
                ));
            }
            for mut t in ast.instructions {
                check_keyword(&t)
                    .map_err(|e| FrontendError::instr(line, format!("ONBUILD trigger: {e}")))?;
                if matches!(t.keyword.as_str(), "FROM" | "ONBUILD" | "MAINTAINER") {
                    return Err(FrontendError::instr(
                        line,
                        format!("ONBUILD trigger {} is not allowed", t.keyword),
                    ));
                }
                t.line_start = line;
                t.line_end = sd.from.line_end;
                let step = Step {
                    inst: &t,
                    label: label.clone(),
                    index: 1,
                    total,
                    single: self.stage_names.len() == 1,
                };
                self.dispatch(&mut st, &step, idx)?;
            }
        }
        for (k, inst) in sd.insts.iter().enumerate() {
            let step = Step {
                inst,
                label: label.clone(),
                index: k + 1 + from_step_count,
                total,
                single: self.stage_names.len() == 1,
            };
            self.track_undefined.set(true);
            let r = self.dispatch(&mut st, &step, idx);
            self.track_undefined.set(false);
            r?;
            let names = std::mem::take(&mut *self.undefined.borrow_mut());
            let mut seen = BTreeSet::new();
            for n in names {
                if !seen.insert(n.clone()) {
                    continue;
                }
                let mut known: Vec<String> = st.vars().into_keys().filter(|k| *k != n).collect();
                known.sort();
                let hint = suggest(&n, known.iter().map(String::as_str))
                    .map(|s| format!(" (did you mean ${s}?)"))
                    .unwrap_or_default();
                self.lint(
                    inst.line_start,
                    "UndefinedVar",
                    format!("Usage of undefined variable '${n}'{hint}"),
                );
            }
        }
        Ok(st)
    }

    fn history(st: &mut StageState, created_by: String, empty_layer: bool) {
        st.config.history.push(History {
            created: None,
            created_by: Some(created_by),
            author: None,
            comment: Some(HISTORY_COMMENT.to_string()),
            empty_layer,
        });
    }

    fn dispatch(
        &mut self,
        st: &mut StageState,
        step: &Step<'_>,
        stage_idx: usize,
    ) -> Result<(), FrontendError> {
        let inst = step.inst;
        let line = step.line();
        match inst.keyword.as_str() {
            "RUN" => self.run(st, step, stage_idx),
            "COPY" => self.copy(st, step, stage_idx, false),
            "ADD" => self.copy(st, step, stage_idx, true),
            "WORKDIR" => self.workdir(st, step),
            "ENV" => {
                parse_flags(inst, &[])?;
                let vars = st.vars();
                let pairs = self.kv_pairs(inst, &vars, "ENV")?;
                let mut msg = String::from("ENV");
                for (k, _) in &pairs {
                    self.lint_secret(line, "ENV", k);
                }
                for (k, v) in pairs {
                    st.config.config.env_set(&k, &v);
                    st.arg_over_env.remove(&k);
                    msg.push_str(&format!(" {k}={v}"));
                }
                Self::history(st, msg, true);
                Ok(())
            }
            "LABEL" => {
                parse_flags(inst, &[])?;
                let vars = st.vars();
                let pairs = self.kv_pairs(inst, &vars, "LABEL")?;
                let mut msg = String::from("LABEL");
                for (k, v) in pairs {
                    msg.push_str(&format!(" {k}={v}"));
                    st.config.config.labels.insert(k, v);
                }
                Self::history(st, msg, true);
                Ok(())
            }
            "ARG" => {
                let vars = st.vars();
                let mut msg = String::from("ARG");
                for (name, default) in self.arg_pairs(inst)? {
                    self.lint_secret(line, "ARG", &name);
                    let value = match self.opts.build_args.get(&name) {
                        Some(v) => Some(v.clone()),
                        None => match default {
                            Some(d) => Some(self.expand(&d, &vars, line)?),
                            None => self
                                .global
                                .iter()
                                .find(|(k, _)| *k == name)
                                .map(|(_, v)| v.clone()),
                        },
                    };
                    match value {
                        Some(v) => {
                            msg.push_str(&format!(" {name}={v}"));
                            if st.config.config.env_get(&name).is_some() {
                                st.arg_over_env.insert(name.clone());
                            }
                            set_pair(&mut st.args, &name, v);
                        }
                        None => msg.push_str(&format!(" {name}")),
                    }
                }
                Self::history(st, msg, true);
                Ok(())
            }
            "USER" => {
                parse_flags(inst, &[])?;
                let vars = st.vars();
                let user = &self.expand(&inst.args, &vars, line)?;
                if user.trim().is_empty() {
                    return Err(step.err("USER requires exactly one argument"));
                }
                st.config.config.user = user.clone();
                Self::history(st, format!("USER {user}"), true);
                Ok(())
            }
            "CMD" | "ENTRYPOINT" => {
                parse_flags(inst, &[])?;
                let argv = match &inst.json {
                    Some(v) => v.clone(),
                    None => {
                        if inst.args.is_empty() {
                            return Err(step
                                .err(format!("{} requires at least one argument", inst.keyword)));
                        }
                        self.lint(
                            line,
                            "JSONArgsRecommended",
                            format!("JSON arguments recommended for {} to prevent unintended behavior related to OS signals", inst.keyword),
                        );
                        let mut v = st.shell();
                        v.push(inst.args.clone());
                        v
                    }
                };
                let msg = format!("{} {}", inst.keyword, go_quote_list(&argv));
                if inst.keyword == "CMD" {
                    // An empty list is omitted from the config, as BuildKit's JSON (omitempty).
                    st.config.config.cmd = Some(argv).filter(|a| !a.is_empty());
                    st.cmd_set = true;
                } else {
                    st.config.config.entrypoint = Some(argv).filter(|a| !a.is_empty());
                    if !st.cmd_set {
                        st.config.config.cmd = None;
                    }
                }
                Self::history(st, msg, true);
                Ok(())
            }
            "EXPOSE" => {
                parse_flags(inst, &[])?;
                let vars = st.vars();
                let words = self.expand_words(&inst.args, &vars, line)?;
                if words.is_empty() {
                    return Err(step.err("EXPOSE requires at least one argument"));
                }
                let mut ports = BTreeSet::new();
                for w in words {
                    let spec = match w.rsplit_once(':') {
                        Some((_, p)) => {
                            self.lint(
                                line,
                                "ExposeInvalidFormat",
                                format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{w}'"),
                            );
                            p.to_string()
                        }
                        None => w.clone(),
                    };
                    let (port, proto) = match spec.split_once('/') {
                        Some((p, pr)) => {
                            if pr != pr.to_ascii_lowercase() {
                                self.lint(
                                    line,
                                    "ExposeProtoCasing",
                                    format!("Defined protocol '{spec}' in EXPOSE instruction should be lowercase"),
                                );
                            }
                            (p.to_string(), pr.to_ascii_lowercase())
                        }
                        None => (spec.clone(), "tcp".to_string()),
                    };
                    let port_ok = {
                        let mut it = port.splitn(2, '-');
                        it.all(|p| !p.is_empty() && p.parse::<u16>().is_ok())
                    };
                    if !port_ok {
                        return Err(step.err(format!("EXPOSE: invalid port \"{w}\"")));
                    }
                    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
                        return Err(step.err(format!(
                            "EXPOSE: invalid protocol \"{proto}\" in \"{w}\" (tcp, udp or sctp)"
                        )));
                    }
                    // Like BuildKit (nat.ParsePortSpecs), a range exposes each port in it.
                    match port.split_once('-') {
                        Some((a, b)) => {
                            let (a, b) =
                                (a.parse::<u16>().unwrap_or(0), b.parse::<u16>().unwrap_or(0));
                            if a > b {
                                return Err(step.err(format!("EXPOSE: invalid port range \"{w}\"")));
                            }
                            for p in a..=b {
                                ports.insert(format!("{p}/{proto}"));
                            }
                        }
                        None => {
                            ports.insert(format!("{port}/{proto}"));
                        }
                    }
                }
                let list: Vec<String> = ports.iter().map(|p| format!("{p}:{{}}")).collect();
                for p in ports {
                    st.config.config.exposed_ports.insert(p, Default::default());
                }
                Self::history(st, format!("EXPOSE map[{}]", list.join(" ")), true);
                Ok(())
            }
            "VOLUME" => {
                parse_flags(inst, &[])?;
                let vars = st.vars();
                let vols = match &inst.json {
                    Some(v) => {
                        let mut out = Vec::new();
                        for w in v {
                            out.push(self.expand(w, &vars, line)?);
                        }
                        out
                    }
                    None => self.expand_words(&inst.args, &vars, line)?,
                };
                if vols.is_empty() || vols.iter().any(|v| v.trim().is_empty()) {
                    return Err(step.err("VOLUME specified can not be an empty string"));
                }
                for v in &vols {
                    st.config
                        .config
                        .volumes
                        .insert(v.clone(), Default::default());
                }
                Self::history(st, format!("VOLUME [{}]", vols.join(" ")), true);
                Ok(())
            }
            "STOPSIGNAL" => {
                parse_flags(inst, &[])?;
                let vars = st.vars();
                let sig = &self.expand(&inst.args, &vars, line)?;
                if sig.trim().is_empty() {
                    return Err(step.err("STOPSIGNAL requires exactly one argument"));
                }
                st.config.config.stop_signal = sig.clone();
                Self::history(st, format!("STOPSIGNAL {sig}"), true);
                Ok(())
            }
            "SHELL" => {
                parse_flags(inst, &[])?;
                let Some(v) = inst.json.clone().filter(|v| !v.is_empty()) else {
                    return Err(step.err("SHELL requires the arguments to be in JSON form, e.g. SHELL [\"/bin/bash\", \"-c\"]"));
                };
                let msg = format!("SHELL [{}]", v.join(" "));
                st.config.config.shell = v;
                Self::history(st, msg, true);
                Ok(())
            }
            "MAINTAINER" => {
                parse_flags(inst, &[])?;
                if inst.args.is_empty() {
                    return Err(step.err("MAINTAINER requires exactly one argument"));
                }
                st.config.author = Some(inst.args.clone());
                self.lint(
                    line,
                    "MaintainerDeprecated",
                    "Maintainer instruction is deprecated in favor of using label".to_string(),
                );
                Self::history(st, format!("MAINTAINER {}", inst.args), true);
                Ok(())
            }
            "HEALTHCHECK" => self.healthcheck(st, step),
            "ONBUILD" => {
                parse_flags(inst, &[])?;
                let (kw, rest) = inst
                    .args
                    .split_once(char::is_whitespace)
                    .map(|(k, r)| (k, r.trim()))
                    .unwrap_or((inst.args.as_str(), ""));
                let kw = kw.to_ascii_uppercase();
                if kw.is_empty() {
                    return Err(step.err("ONBUILD requires at least one argument"));
                }
                if matches!(kw.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
                    return Err(step.err(format!("{kw} isn't allowed as an ONBUILD trigger")));
                }
                if !KEYWORDS.contains(&kw.as_str()) {
                    return Err(FrontendError::UnknownInstruction {
                        line,
                        name: kw.clone(),
                        suggestion: suggest(&kw, KEYWORDS),
                    });
                }
                let trigger = if rest.is_empty() {
                    kw
                } else {
                    format!("{kw} {rest}")
                };
                Self::history(st, format!("ONBUILD {trigger}"), true);
                st.config.config.on_build.push(trigger);
                Ok(())
            }
            "FROM" => Err(step.err("FROM is not allowed here")),
            other => Err(FrontendError::UnknownInstruction {
                line,
                name: other.to_string(),
                suggestion: suggest(other, KEYWORDS),
            }),
        }
    }

    /// ENV/LABEL pairs: `k=v …` or legacy `k v…`; keys and values expanded.
    fn kv_pairs(
        &mut self,
        inst: &Instruction,
        vars: &HashMap<String, String>,
        what: &str,
    ) -> Result<Vec<(String, String)>, FrontendError> {
        let line = inst.line_start;
        let words = raw_words(&inst.args, self.escape);
        let Some(first) = words.first() else {
            return Err(FrontendError::instr(
                line,
                format!("{what} requires at least one argument"),
            ));
        };
        let mut out = Vec::new();
        if !first.contains('=') {
            let rest = inst
                .args
                .trim_start()
                .get(first.len()..)
                .unwrap_or("")
                .trim();
            if rest.is_empty() {
                return Err(FrontendError::instr(
                    line,
                    format!("{what} must have two arguments"),
                ));
            }
            self.lint(
                line,
                "LegacyKeyValueFormat",
                format!("\"{what} key=value\" should be used instead of legacy \"{what} key value\" format"),
            );
            out.push((
                self.expand(first, vars, line)?,
                self.expand(rest, vars, line)?,
            ));
            return Ok(out);
        }
        for w in &words {
            let Some((k, v)) = w.split_once('=') else {
                return Err(FrontendError::instr(
                    line,
                    format!("{what}: syntax error - can't find = in \"{w}\"; must be of the form name=value"),
                ));
            };
            let key = self.expand(k, vars, line)?;
            if key.is_empty() {
                return Err(FrontendError::instr(
                    line,
                    format!("{what} names can not be blank"),
                ));
            }
            out.push((key, self.expand(v, vars, line)?));
        }
        Ok(out)
    }

    fn workdir(&mut self, st: &mut StageState, step: &Step<'_>) -> Result<(), FrontendError> {
        let inst = step.inst;
        parse_flags(inst, &[])?;
        let vars = st.vars();
        let p = &self.expand(&inst.args, &vars, step.line())?;
        if p.trim().is_empty() {
            return Err(step.err("WORKDIR requires exactly one argument"));
        }
        if !p.starts_with('/') && !st.workdir_set {
            self.lint(
                step.line(),
                "WorkdirRelativePath",
                format!("Relative workdir \"{p}\" can have unexpected results if the base image changes"),
            );
        }
        st.workdir_set = true;
        let path = join_abs(&st.workdir(), p);
        st.config.config.working_dir = path.clone();
        if path == "/" {
            Self::history(st, format!("WORKDIR {path}"), true);
            return Ok(());
        }
        let (inputs, dest_input) = match st.node {
            Some(n) => (vec![n], Some(0)),
            None => (vec![], None),
        };
        // Like BuildKit, missing directories are created owned by the current USER.
        let user = st.config.config.user.clone();
        let owner = if user.is_empty() {
            None
        } else {
            Some(parse_owner(&user, step.line())?)
        };
        let meta = self.meta(step, step.description());
        let node = self.push(
            Op::File(FileOp {
                dest_input,
                actions: vec![FileAction::Mkdir {
                    path: path.clone(),
                    mode: 0o755,
                    make_parents: true,
                    owner,
                }],
            }),
            inputs,
            meta,
        )?;
        st.node = Some(node);
        Self::history(st, format!("WORKDIR {path}"), false);
        Ok(())
    }

    fn healthcheck(&mut self, st: &mut StageState, step: &Step<'_>) -> Result<(), FrontendError> {
        let inst = step.inst;
        let flags = parse_flags(
            inst,
            &[
                "interval",
                "timeout",
                "start-period",
                "start-interval",
                "retries",
            ],
        )?;
        let (kind, rest) = inst
            .args
            .split_once(char::is_whitespace)
            .map(|(k, r)| (k, r.trim()))
            .unwrap_or((inst.args.as_str(), ""));
        let mut hc = Healthcheck::default();
        match kind.to_ascii_uppercase().as_str() {
            "NONE" => {
                if !rest.is_empty() || !flags.is_empty() {
                    return Err(step.err("HEALTHCHECK NONE takes no arguments"));
                }
                hc.test = vec!["NONE".to_string()];
            }
            "CMD" => {
                if rest.is_empty() {
                    return Err(step.err("HEALTHCHECK CMD requires a command"));
                }
                hc.test = match serde_json::from_str::<Vec<String>>(rest) {
                    Ok(v) if rest.starts_with('[') => {
                        let mut t = vec!["CMD".to_string()];
                        t.extend(v);
                        t
                    }
                    _ => vec!["CMD-SHELL".to_string(), rest.to_string()],
                };
                for (name, v) in &flags {
                    let v = v.clone().unwrap_or_default();
                    if name == "retries" {
                        hc.retries = v.parse::<u64>().map_err(|_| {
                            step.err(format!("HEALTHCHECK --retries: invalid value \"{v}\""))
                        })?;
                        continue;
                    }
                    let d = parse_duration(&v).ok_or_else(|| {
                        step.err(format!("HEALTHCHECK --{name}: invalid duration \"{v}\""))
                    })?;
                    if d != 0 && d < 1_000_000 {
                        return Err(
                            step.err(format!("HEALTHCHECK --{name}: cannot be less than 1ms"))
                        );
                    }
                    match name.as_str() {
                        "interval" => hc.interval = d,
                        "timeout" => hc.timeout = d,
                        "start-period" => hc.start_period = d,
                        _ => hc.start_interval = d,
                    }
                }
            }
            other => {
                return Err(step.err(format!("unknown type \"{other}\" in HEALTHCHECK (try CMD)")))
            }
        }
        st.config.config.healthcheck = Some(hc);
        Self::history(st, step.display(), true);
        Ok(())
    }

    fn node_or_scratch(&mut self, n: Option<NodeId>) -> Result<NodeId, FrontendError> {
        match n {
            Some(n) => Ok(n),
            None => self.scratch(),
        }
    }

    /// Source node for `--from=<v>` (stage, index or image).
    fn source_for_from(
        &mut self,
        v: &str,
        stage_idx: usize,
        step: &Step<'_>,
        what: &str,
    ) -> Result<NodeId, FrontendError> {
        if v.contains('$') {
            return Err(step.err(format!(
                "{what}={v}: variables are not expanded in --from; define a new stage with FROM using ARG from global scope"
            )));
        }
        if let Some(i) = self.stage_ref(v, stage_idx, step.line(), &format!("{what}={v}"))? {
            let n = self
                .done
                .get(i)
                .and_then(|s| s.as_ref())
                .map(|s| s.node)
                .ok_or_else(|| step.err(format!("{what}={v}: stage was not built")))?;
            return self.node_or_scratch(n);
        }
        if v.eq_ignore_ascii_case("scratch") {
            return self.scratch();
        }
        let v = match self.named_context(v).cloned() {
            Some(NamedContext::Local(local)) => return self.named_local(&local),
            Some(NamedContext::Image(r)) => r,
            None => v.to_string(),
        };
        let v = v.as_str();
        let platform = self.opts.platform.clone();
        let names: Vec<String> = self.stage_names.iter().flatten().cloned().collect();
        let r = self.image(
            v,
            &platform,
            step.line(),
            what,
            format!("{} {what}={v}", step.prefix()),
            Some(&step.label),
        );
        match r {
            Ok((n, _)) => Ok(n),
            Err(FrontendError::Resolve { line, message, .. }) => Err(FrontendError::FromNotFound {
                line,
                instruction: format!("{what}={v}"),
                name: v.to_string(),
                message,
                suggestion: suggest(&v.to_lowercase(), names.iter().map(String::as_str)),
            }),
            Err(e) => Err(e),
        }
    }

    fn copy(
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
        let owner = match flag(&flags, "chown") {
            Some(Some(v)) => Some(parse_owner(&self.expand(v, &vars, line)?, line)?),
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
            Some(Some(v)) => Some(parse_chmod(&self.expand(v, &vars, line)?, line)?),
            Some(None) => return Err(step.err("--chmod requires a value")),
            None => None,
        };
        let mut exclude = Vec::new();
        for (k, v) in &flags {
            if k == "exclude" {
                let v = v
                    .as_deref()
                    .ok_or_else(|| step.err("--exclude requires a value"))?;
                exclude.push(self.expand(v, &vars, line)?);
            }
        }
        let checksum = match flag(&flags, "checksum") {
            Some(Some(v)) => Some(self.expand(v, &vars, line)?),
            Some(None) => return Err(step.err("--checksum requires a value")),
            None => None,
        };
        let keep_git_dir = flag_bool(&flags, "keep-git-dir", line)?.unwrap_or(false);
        let unpack = flag_bool(&flags, "unpack", line)?;

        let words: Vec<String> = match &inst.json {
            Some(v) => {
                let mut out = Vec::new();
                for w in v {
                    out.push(self.expand(w, &vars, line)?);
                }
                out
            }
            None if !inst.heredocs.is_empty() => {
                // Heredoc markers must not be expanded; other words are.
                let mut out = Vec::new();
                for w in raw_words(&inst.args, self.escape) {
                    if w.trim_start_matches(|c: char| c.is_ascii_digit())
                        .starts_with("<<")
                    {
                        out.push(format!("\u{0}{w}"));
                    } else {
                        out.extend(self.expand_words(&w, &vars, line)?);
                    }
                }
                out
            }
            None => {
                let mut out = self.expand_words(&inst.args, &vars, line)?;
                // A destination that expands to nothing means the working directory
                // (BuildKit expands the destination as one word).
                let raw = raw_words(&inst.args, self.escape);
                if let [.., last] = raw.as_slice() {
                    if raw.len() >= 2 && self.expand(last, &vars, line)?.is_empty() {
                        out.push(".".to_string());
                    }
                }
                out
            }
        };
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
                    shell::expand_heredoc(&h.body, &lookup, self.escape)
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
                    if literal && lint::ignored(&self.opts.dockerignore, src) {
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
        Self::history(st, format!("{} # buildkit", step.display()), false);
        Ok(())
    }

    fn run(
        &mut self,
        st: &mut StageState,
        step: &Step<'_>,
        stage_idx: usize,
    ) -> Result<(), FrontendError> {
        let inst = step.inst;
        let flags = parse_flags(inst, &["mount", "network", "security"])?;
        let vars = st.vars();
        let shell = st.shell();
        let mut extra_mounts: Vec<Mount> = Vec::new();
        let mut args: Vec<String> = match &inst.json {
            Some(v) => v.clone(),
            None if !inst.heredocs.is_empty() => {
                let cmd = inst.args.trim();
                let only = match inst.heredocs.as_slice() {
                    [h] => {
                        let m = cmd
                            .trim_start_matches("<<")
                            .trim_start_matches('-')
                            .replace(['"', '\''], "");
                        cmd.starts_with("<<") && m == h.name
                    }
                    _ => false,
                };
                match inst.heredocs.as_slice() {
                    [h] if only && h.body.starts_with("#!") => {
                        let path = format!("/dev/pipes/{}", h.name);
                        extra_mounts.push(Mount {
                            target: "/dev/pipes".to_string(),
                            input: None,
                            kind: MountKind::Tmpfs { size: None },
                        });
                        vec![
                            "/bin/sh".to_string(),
                            "-c".to_string(),
                            format!("printf '%s' \"$1\" > '{path}' && chmod 0755 '{path}' && exec '{path}'"),
                            "rbuild-heredoc".to_string(),
                            h.body.clone(),
                        ]
                    }
                    [h] if only => {
                        let mut v = shell.clone();
                        v.push(h.body.clone());
                        v
                    }
                    hs => {
                        let mut text = cmd.to_string();
                        for h in hs {
                            text.push('\n');
                            text.push_str(&h.body);
                            text.push_str(&h.name);
                        }
                        let mut v = shell.clone();
                        v.push(text);
                        v
                    }
                }
            }
            None => {
                if inst.args.is_empty() {
                    return Err(step.err("RUN requires at least one argument"));
                }
                let mut v = shell.clone();
                v.push(inst.args.clone());
                v
            }
        };
        if args.is_empty() {
            return Err(step.err("RUN requires at least one argument"));
        }
        let network = match flag(&flags, "network") {
            None => NetworkMode::Default,
            Some(v) => match v.as_deref().unwrap_or("").to_ascii_lowercase().as_str() {
                "default" => NetworkMode::Default,
                "none" => NetworkMode::None,
                "host" => NetworkMode::Host,
                other => {
                    return Err(step.err(format!(
                        "RUN --network: unsupported value \"{other}\" (default, none or host)"
                    )))
                }
            },
        };
        let security = match flag(&flags, "security") {
            None => SecurityMode::Sandbox,
            Some(v) => match v.as_deref().unwrap_or("").to_ascii_lowercase().as_str() {
                "sandbox" => SecurityMode::Sandbox,
                "insecure" => SecurityMode::Insecure,
                other => {
                    return Err(step.err(format!(
                        "RUN --security: unsupported value \"{other}\" (sandbox or insecure)"
                    )))
                }
            },
        };

        // Env: image env (an ARG declared after an ENV of its name replaces it in place), then
        // declared ARGs not shadowed by ENV.
        let mut env: Vec<String> = st
            .config
            .config
            .env
            .iter()
            .map(|kv| {
                let k = kv.split_once('=').map(|(k, _)| k).unwrap_or(kv);
                match st.args.iter().find(|(a, _)| a == k) {
                    Some((a, v)) if st.arg_over_env.contains(a) => format!("{a}={v}"),
                    _ => kv.clone(),
                }
            })
            .collect();
        for (k, v) in &st.args {
            if st.config.config.env_get(k).is_none() {
                env.push(format!("{k}={v}"));
            }
        }
        let mut proxy_env = Vec::new();
        for p in PROXY_ARGS {
            if let Some(v) = self.opts.build_args.get(p) {
                if !st.args.iter().any(|(k, _)| k == p) {
                    proxy_env.push(format!("{p}={v}"));
                }
            }
        }

        let mut inputs: Vec<NodeId> = Vec::new();
        let root_input = match st.node {
            Some(n) => {
                inputs.push(n);
                Some(0)
            }
            None => None,
        };
        let mut mounts = vec![Mount {
            target: "/".to_string(),
            input: root_input,
            kind: MountKind::Bind {
                source: "/".to_string(),
                readonly: false,
            },
        }];
        let mut ssh_count = 0usize;
        for (k, v) in &flags {
            if k != "mount" {
                continue;
            }
            let spec = v
                .as_deref()
                .ok_or_else(|| step.err("--mount requires a value"))?;
            let m = self.mount(spec, &vars, stage_idx, step, &mut inputs, &mut ssh_count)?;
            if let MountKind::Ssh { .. } = &m.kind {
                if !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
                    env.push(format!("SSH_AUTH_SOCK={}", m.target));
                }
            }
            mounts.push(m);
        }
        mounts.extend(extra_mounts);

        let mut created_by = String::from("RUN ");
        if !st.args.is_empty() {
            created_by.push_str(&format!("|{}", st.args.len()));
            for (k, v) in &st.args {
                created_by.push_str(&format!(" {k}={v}"));
            }
            created_by.push(' ');
        }
        created_by.push_str(&args.join(" "));
        created_by.push_str(" # buildkit");

        let meta = self.meta(step, step.description());
        let node = self.push(
            Op::Exec(ExecOp {
                args: std::mem::take(&mut args),
                env,
                cwd: st.workdir(),
                user: st.config.config.user.clone(),
                network,
                security,
                mounts,
                proxy_env,
                run_options: Default::default(),
                platform: Some(Platform {
                    os: st.config.os.clone(),
                    architecture: st.config.architecture.clone(),
                    variant: st.config.variant.clone(),
                }),
            }),
            inputs,
            meta,
        )?;
        st.node = Some(node);
        Self::history(st, created_by, false);
        Ok(())
    }

    fn mount(
        &mut self,
        spec: &str,
        vars: &HashMap<String, String>,
        stage_idx: usize,
        step: &Step<'_>,
        inputs: &mut Vec<NodeId>,
        ssh_count: &mut usize,
    ) -> Result<Mount, FrontendError> {
        let line = step.line();
        let mut fields: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut from: Option<String> = None;
        for field in spec.split(',') {
            let field = field.trim();
            if field.is_empty() {
                continue;
            }
            let (k, v) = match field.split_once('=') {
                Some((k, v)) => (
                    k.trim().to_ascii_lowercase(),
                    Some(v.trim().trim_matches('"').to_string()),
                ),
                None => (field.to_ascii_lowercase(), None),
            };
            if k == "from" {
                from = v;
                continue;
            }
            let v = match v {
                Some(v) => Some(self.expand(&v, vars, line)?),
                None => None,
            };
            let k = match k.as_str() {
                "dst" | "destination" => "target".to_string(),
                "src" => "source".to_string(),
                "ro" => "readonly".to_string(),
                "rw" => "readwrite".to_string(),
                _ => k,
            };
            fields.insert(k, v);
        }
        let kind = fields
            .remove("type")
            .flatten()
            .unwrap_or_else(|| "bind".to_string());
        let get = |f: &BTreeMap<String, Option<String>>, k: &str| f.get(k).cloned().flatten();
        let boolean = |f: &BTreeMap<String, Option<String>>,
                       k: &str|
         -> Result<Option<bool>, FrontendError> {
            match f.get(k) {
                None => Ok(None),
                Some(None) => Ok(Some(true)),
                Some(Some(v)) => match v.to_ascii_lowercase().as_str() {
                    "true" | "1" => Ok(Some(true)),
                    "false" | "0" => Ok(Some(false)),
                    _ => Err(step.err(format!("--mount: {k}: expected a boolean, got \"{v}\""))),
                },
            }
        };
        let num = |f: &BTreeMap<String, Option<String>>,
                   k: &str,
                   radix: u32,
                   default: u32|
         -> Result<u32, FrontendError> {
            match get(f, k) {
                None => Ok(default),
                Some(v) => u32::from_str_radix(&v, radix)
                    .map_err(|_| step.err(format!("--mount: invalid {k} \"{v}\""))),
            }
        };
        let allowed: &[&str] = match kind.as_str() {
            "bind" => &["target", "source", "readonly", "readwrite"],
            "cache" => &[
                "target",
                "source",
                "readonly",
                "readwrite",
                "id",
                "sharing",
                "mode",
                "uid",
                "gid",
            ],
            "tmpfs" => &["target", "size"],
            "secret" => &["target", "id", "env", "required", "mode", "uid", "gid"],
            "ssh" => &["target", "id", "required", "mode", "uid", "gid"],
            other => {
                return Err(step.err(format!(
                    "--mount: unsupported mount type \"{other}\" (bind, cache, tmpfs, secret, ssh)"
                )))
            }
        };
        if let Some(bad) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(step.err(format!(
                "--mount: option \"{bad}\" is not valid for type={kind}"
            )));
        }
        if from.is_some() && !matches!(kind.as_str(), "bind" | "cache") {
            return Err(step.err(format!("--mount: from is not valid for type={kind}")));
        }
        let target = get(&fields, "target").map(|t| join_abs("/", &t));
        let ro = boolean(&fields, "readonly")?;
        let rw = boolean(&fields, "readwrite")?;
        let add_input = |inputs: &mut Vec<NodeId>, n: NodeId| -> usize {
            match inputs.iter().position(|x| *x == n) {
                Some(i) => i,
                None => {
                    inputs.push(n);
                    inputs.len() - 1
                }
            }
        };
        match kind.as_str() {
            "bind" => {
                let target =
                    target.ok_or_else(|| step.err("--mount type=bind requires a target"))?;
                let n = match &from {
                    Some(f) => self.source_for_from(f, stage_idx, step, "RUN --mount from")?,
                    None => self.context()?,
                };
                let i = add_input(inputs, n);
                let readonly = match (ro, rw) {
                    (_, Some(true)) => false,
                    (Some(r), _) => r,
                    _ => true,
                };
                Ok(Mount {
                    target,
                    input: Some(i),
                    kind: MountKind::Bind {
                        source: clean_path(&format!(
                            "/{}",
                            get(&fields, "source").unwrap_or_default()
                        )),
                        readonly,
                    },
                })
            }
            "cache" => {
                let target =
                    target.ok_or_else(|| step.err("--mount type=cache requires a target"))?;
                let input = match &from {
                    Some(f) => {
                        let n = self.source_for_from(f, stage_idx, step, "RUN --mount from")?;
                        Some(add_input(inputs, n))
                    }
                    None => None,
                };
                let sharing = match get(&fields, "sharing").as_deref() {
                    None | Some("shared") => CacheSharing::Shared,
                    Some("private") => CacheSharing::Private,
                    Some("locked") => CacheSharing::Locked,
                    Some(o) => {
                        return Err(step.err(format!(
                            "--mount: invalid sharing \"{o}\" (shared, private or locked)"
                        )))
                    }
                };
                Ok(Mount {
                    target: target.clone(),
                    input,
                    kind: MountKind::Cache {
                        id: get(&fields, "id").unwrap_or(target),
                        sharing,
                        source: clean_path(&format!(
                            "/{}",
                            get(&fields, "source").unwrap_or_default()
                        )),
                        readonly: ro.unwrap_or(false) && rw != Some(true),
                        mode: num(&fields, "mode", 8, 0o755)?,
                        uid: num(&fields, "uid", 10, 0)?,
                        gid: num(&fields, "gid", 10, 0)?,
                    },
                })
            }
            "tmpfs" => {
                let target =
                    target.ok_or_else(|| step.err("--mount type=tmpfs requires a target"))?;
                let size = match get(&fields, "size") {
                    Some(s) => Some(
                        parse_size(&s)
                            .ok_or_else(|| step.err(format!("--mount: invalid size \"{s}\"")))?,
                    ),
                    None => None,
                };
                Ok(Mount {
                    target,
                    input: None,
                    kind: MountKind::Tmpfs { size },
                })
            }
            "secret" => {
                let env = get(&fields, "env");
                let id = match (get(&fields, "id"), &target) {
                    (Some(id), _) => id,
                    (None, Some(t)) => t.rsplit('/').next().unwrap_or("").to_string(),
                    (None, None) => String::new(),
                };
                if id.is_empty() {
                    return Err(step.err("--mount type=secret requires an id or a target"));
                }
                let target = match (target, &env) {
                    (Some(t), _) => t,
                    (None, Some(_)) => String::new(),
                    (None, None) => format!("/run/secrets/{id}"),
                };
                Ok(Mount {
                    target,
                    input: None,
                    kind: MountKind::Secret {
                        id,
                        env,
                        required: boolean(&fields, "required")?.unwrap_or(false),
                        mode: num(&fields, "mode", 8, 0o400)?,
                        uid: num(&fields, "uid", 10, 0)?,
                        gid: num(&fields, "gid", 10, 0)?,
                    },
                })
            }
            _ => {
                let target =
                    target.unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{}", *ssh_count));
                *ssh_count += 1;
                Ok(Mount {
                    target,
                    input: None,
                    kind: MountKind::Ssh {
                        id: get(&fields, "id").unwrap_or_else(|| "default".to_string()),
                        required: boolean(&fields, "required")?.unwrap_or(false),
                        mode: num(&fields, "mode", 8, 0o600)?,
                        uid: num(&fields, "uid", 10, 0)?,
                        gid: num(&fields, "gid", 10, 0)?,
                    },
                })
            }
        }
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
