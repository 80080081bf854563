//! Lowering: AST → stages → [`Definition`] nodes and the target's image config.
//!
//! Split by instruction family, as BuildKit splits `dockerfile2llb/convert*.go`: this module
//! holds the entry point, the shared state and `dispatch`; [`stages`] FROM, stage references
//! and ONBUILD triggers; [`config`] the instructions that only edit the image config (ENV,
//! ARG, LABEL, USER, CMD, ENTRYPOINT, EXPOSE, VOLUME, STOPSIGNAL, SHELL, MAINTAINER,
//! HEALTHCHECK, ONBUILD) and WORKDIR; [`copy`] COPY/ADD; [`run`] RUN and its mounts;
//! [`flags`] flag and argument parsing. The build checks live in `crate::lint`.
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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;

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

mod config;
mod copy;
pub(crate) mod flags;
mod run;
mod stages;

use flags::*;

const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

pub(crate) const KEYWORDS: [&str; 18] = [
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

/// Ordered name → value pairs with an index, so that setting and looking up a name costs
/// O(1) however many there are (ARG scopes).
#[derive(Clone, Default)]
struct Scope {
    pairs: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl Scope {
    fn set(&mut self, key: &str, value: String) {
        match self.index.get(key).and_then(|&i| self.pairs.get_mut(i)) {
            Some(slot) => slot.1 = value,
            None => {
                self.index.insert(key.to_string(), self.pairs.len());
                self.pairs.push((key.to_string(), value));
            }
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.index
            .get(key)
            .and_then(|&i| self.pairs.get(i))
            .map(|(_, v)| v.as_str())
    }

    fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    fn iter(&self) -> std::slice::Iter<'_, (String, String)> {
        self.pairs.iter()
    }

    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// Variables an expansion can read.
trait Vars {
    fn var(&self, key: &str) -> Option<&str>;
}

impl Vars for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Vars for Scope {
    fn var(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

/// Approximate heap bytes of a string held in a config (text + allocation overhead).
fn held(s: &str) -> usize {
    s.len() + 32
}

/// The evolving state of one stage.
#[derive(Clone)]
struct StageState {
    node: Option<NodeId>,
    config: ImageConfig,
    /// Declared ARGs with a value, in declaration order.
    args: Scope,
    /// Every ARG the stage declared, with a value or not, in order of first declaration
    /// (values unused): RUN's history lists them all (BuildKit's buildArgs).
    declared_args: Scope,
    cmd_set: bool,
    /// ARGs given a value after an ENV of the same name: like BuildKit, their value wins for
    /// expansion and RUN (the image config keeps the ENV value).
    arg_over_env: BTreeSet<String>,
    /// A WORKDIR was set by this Dockerfile (for the WorkdirRelativePath check).
    workdir_set: bool,
    /// Position of each name in `config.config.env` (its first entry).
    env_index: HashMap<String, usize>,
    /// Variables visible to expansion, kept up to date by `set_env`/`set_arg` (shared until
    /// changed, so reading it costs nothing).
    vars: Rc<HashMap<String, String>>,
}

impl StageState {
    /// A stage starting from `config` (its env indexed).
    fn new(node: Option<NodeId>, config: ImageConfig) -> Self {
        let mut env_index = HashMap::new();
        let mut vars = HashMap::new();
        for (i, kv) in config.config.env.iter().enumerate() {
            if let Some((k, v)) = kv.split_once('=') {
                env_index.entry(k.to_string()).or_insert(i);
                vars.insert(k.to_string(), v.to_string());
            }
        }
        StageState {
            node,
            config,
            args: Scope::default(),
            declared_args: Scope::default(),
            cmd_set: false,
            arg_over_env: BTreeSet::new(),
            workdir_set: false,
            env_index,
            vars: Rc::new(vars),
        }
    }

    /// Heap bytes a copy of this state holds (charged when a stage is derived from it).
    fn size(&self) -> usize {
        let c = &self.config;
        let strs = |v: &[String]| v.iter().map(|s| held(s)).sum::<usize>();
        let history: usize = c
            .history
            .iter()
            .map(|h| held(h.created_by.as_deref().unwrap_or("")) + 160)
            .sum();
        let labels: usize = c.config.labels.iter().map(|(k, v)| held(k) + held(v)).sum();
        let args: usize = self
            .args
            .iter()
            .map(|(k, v)| 2 * (held(k) + held(v)))
            .sum::<usize>()
            + self
                .declared_args
                .iter()
                .map(|(k, _)| 2 * held(k))
                .sum::<usize>();
        let vars: usize = self.vars.iter().map(|(k, v)| held(k) + held(v)).sum();
        history
            + labels
            + args
            + vars
            + 2 * strs(&c.config.env)
            + strs(&c.config.on_build)
            + strs(&c.rootfs.diff_ids)
            + c.config
                .exposed_ports
                .keys()
                .map(|k| held(k))
                .sum::<usize>()
            + c.config.volumes.keys().map(|k| held(k)).sum::<usize>()
    }

    /// `ENV key=value`: replaces the entry in place or appends it.
    fn set_env(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        match self
            .env_index
            .get(key)
            .and_then(|&i| self.config.config.env.get_mut(i))
        {
            Some(slot) => *slot = entry,
            None => {
                self.env_index
                    .insert(key.to_string(), self.config.config.env.len());
                self.config.config.env.push(entry);
            }
        }
        self.arg_over_env.remove(key);
        Rc::make_mut(&mut self.vars).insert(key.to_string(), value.to_string());
    }

    /// An ARG got a value: it wins for expansion (also over an ENV of the same name).
    fn set_arg(&mut self, key: &str, value: String) {
        if self.env_index.contains_key(key) {
            self.arg_over_env.insert(key.to_string());
        }
        Rc::make_mut(&mut self.vars).insert(key.to_string(), value.clone());
        self.args.set(key, value);
    }

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

    /// Variables visible to expansion: ENV wins over ARG, an ARG set after an ENV of its
    /// name wins over it. Drop the returned handle before changing the stage.
    fn vars(&self) -> Rc<HashMap<String, String>> {
        Rc::clone(&self.vars)
    }
}

/// `[label i/n]` as BuildKit's prefixCommand writes it: the index padded to the width of the
/// total (`[base  3/12]`); `[i/n]` when the Dockerfile has one stage.
fn progress_prefix(label: &str, single: bool, index: usize, total: usize) -> String {
    let width = total.max(1).to_string().len();
    if single {
        format!("[{index:>width$}/{total}]")
    } else {
        format!("[{label} {index:>width$}/{total}]")
    }
}

/// Whether BuildKit numbers an instruction as a step (dispatchState.cmdTotal: the FROM of an
/// image, RUN, COPY, ADD, WORKDIR; ENV, LABEL, USER … are not shown).
fn numbered(inst: &Instruction) -> bool {
    matches!(inst.keyword.as_str(), "RUN" | "COPY" | "ADD" | "WORKDIR")
}

/// Per-step context (for metadata and errors).
struct Step<'i> {
    inst: &'i Instruction,
    label: String,
    index: usize,
    total: usize,
    /// The Dockerfile has one stage: progress names omit the stage (`[1/3]`), as BuildKit's.
    single: bool,
    /// An ONBUILD trigger of the base (named `ONBUILD …` in the progress).
    onbuild: bool,
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
        progress_prefix(&self.label, self.single, self.index, self.total)
    }

    /// The progress name: prefix, `ONBUILD ` for a trigger, the instruction.
    fn description(&self) -> String {
        let onbuild = if self.onbuild { "ONBUILD " } else { "" };
        format!("{} {onbuild}{}", self.prefix(), self.display())
    }

    fn err(&self, message: impl Into<String>) -> FrontendError {
        FrontendError::instr(self.line(), message)
    }
}

pub(crate) struct Lowerer<'a> {
    pub(crate) opts: &'a BuildOpts,
    resolver: &'a dyn ImageResolver,
    pub(crate) escape: char,
    def: Definition,
    context_node: Option<NodeId>,
    scratch_node: Option<NodeId>,
    images: BTreeMap<(String, String), (NodeId, crate::ResolvedImage)>,
    sources: BTreeMap<String, NodeId>,
    pub(crate) warnings: Vec<Diagnostic>,
    global: Scope,
    stage_names: Vec<Option<String>>,
    /// How many stages still to be dispatched are built `FROM` each stage: the last one
    /// takes the base's state instead of copying it.
    base_uses: Vec<usize>,
    /// Stage name → index (names are unique).
    stage_index: HashMap<String, usize>,
    /// What expansions and stage copies may still cost (one budget per build).
    pub(crate) budget: shell::Budget,
    /// "did you mean" hints computed so far (each costs a scan of the candidates; capped so
    /// thousands of findings stay linear).
    hints: std::cell::Cell<usize>,
    /// `.dockerignore` pattern matches left for the CopyIgnoredFile check (patterns ×
    /// sources would otherwise grow with the product of two hostile inputs).
    ignore_checks_left: usize,
    done: Vec<Option<StageState>>,
    /// `# check=` directive: skipped rules (`all` skips everything) and error mode.
    pub(crate) check_skip: BTreeSet<String>,
    pub(crate) check_error: bool,
    /// Experimental rules enabled with `# check=experimental=…` (or `all`).
    pub(crate) check_experimental: BTreeSet<String>,
    pub(crate) lint_failure: Option<(u32, String)>,
    /// Variables expanded while dispatching an instruction that had no value (UndefinedVar),
    /// collected while `track_undefined` is set.
    undefined: std::cell::RefCell<Vec<String>>,
    track_undefined: std::cell::Cell<bool>,
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
    check_syntax(&ast, opts)?;
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
        global: Scope::default(),
        stage_names: Vec::new(),
        base_uses: Vec::new(),
        stage_index: HashMap::new(),
        budget: shell::Budget::for_input(
            text.len()
                + opts
                    .build_args
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>(),
        ),
        hints: std::cell::Cell::new(0),
        ignore_checks_left: 1 << 22,
        done: Vec::new(),
        check_skip: BTreeSet::new(),
        check_error: false,
        check_experimental: BTreeSet::new(),
        lint_failure: None,
        undefined: std::cell::RefCell::new(Vec::new()),
        track_undefined: std::cell::Cell::new(false),
    };
    for (k, v) in platform_args(&opts.platform) {
        lw.global.set(&k, v);
    }
    // The line above each ARG and FROM (for InvalidDefinitionDescription), kept for those
    // lines only.
    let defs: HashSet<u32> = ast
        .instructions
        .iter()
        .filter(|i| matches!(i.keyword.as_str(), "ARG" | "FROM"))
        .map(|i| i.line_start)
        .collect();
    let above: HashMap<u32, &str> = text
        .lines()
        .zip(1u32..)
        .filter(|(_, n)| defs.contains(&n.saturating_add(1)))
        .map(|(l, n)| (n.saturating_add(1), l))
        .collect();
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
            if lint::bad_description(above.get(&inst.line_start).copied(), &name) {
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
                    Some(d) => Some(lw.expand(&d, &lw.global, inst.line_start)?),
                    None => None,
                },
            };
            if let Some(v) = value {
                lw.global.set(&name, v);
            }
        }
    }

    // Stage headers.
    let mut stages: Vec<StageDef> = Vec::new();
    for (from, insts) in &stage_insts {
        lw.lint_from(
            from,
            above.get(&from.line_start).copied(),
            &declared,
            &defaults_only,
        )?;
        lw.lint_multiple(insts);
    }
    let mut names: HashSet<String> = HashSet::new();
    for (from, insts) in stage_insts {
        let sd = lw.stage_header(from, insts, &names)?;
        if let Some(n) = &sd.name {
            names.insert(n.clone());
            lw.stage_index.insert(n.clone(), stages.len());
        }
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
    lw.global.set("TARGETSTAGE", target_name);

    // Reachability: only the stages the target needs are read for their references, so a
    // bad reference (a stage used before it is defined) in a stage nobody needs is no error
    // (BuildKit v0.25 builds such a Dockerfile).
    let mut reachable = vec![false; stages.len()];
    let mut stack = vec![target];
    while let Some(s) = stack.pop() {
        match reachable.get_mut(s) {
            Some(r) if !*r => *r = true,
            _ => continue,
        }
        stack.extend(lw.stage_deps(s, &stages)?);
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
    lw.base_uses = vec![0; stages.len()];
    for (idx, sd) in stages.iter().enumerate() {
        if reachable.get(idx).copied().unwrap_or(false) {
            if let Base::Stage(i) = lw.base_of(idx, sd) {
                if let Some(u) = lw.base_uses.get_mut(i) {
                    *u += 1;
                }
            }
        }
    }
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
            || lw.global.contains(name);
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
    let ends: HashMap<u32, u32> = ast
        .instructions
        .iter()
        .map(|i| (i.line_start, i.line_end))
        .collect();
    for w in &mut lw.warnings {
        if let Some(end) = ends.get(&w.line) {
            w.end_line = w.end_line.max(*end);
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

/// `# syntax=` (or the `BUILDKIT_SYNTAX` build arg): rbuild is its own Dockerfile frontend, so
/// it accepts the official frontend's references (`docker/dockerfile`, `-upstream`, any tag or
/// digest, with or without `docker.io/`), whose features it implements, and refuses anything
/// else instead of ignoring it (BuildKit would run that frontend).
fn check_syntax(ast: &parser::Ast, opts: &BuildOpts) -> Result<(), FrontendError> {
    let (line, value) = match opts.build_args.get("BUILDKIT_SYNTAX") {
        Some(v) => (0, v.as_str()),
        None => match ast.directives.iter().find(|d| d.name == "syntax") {
            Some(d) => (d.line, d.value.as_str()),
            None => return Ok(()),
        },
    };
    if is_official_frontend(value) {
        return Ok(());
    }
    let message = format!(
        "unsupported syntax \"{value}\": rbuild builds Dockerfiles with its own frontend and \
         accepts only the official Dockerfile frontend here (docker/dockerfile or \
         docker/dockerfile-upstream, any tag or digest, e.g. docker/dockerfile:1); remove the \
         line to build with rbuild"
    );
    Err(match line {
        0 => FrontendError::Expand {
            line: None,
            message: format!("--build-arg BUILDKIT_SYNTAX: {message}"),
        },
        line => FrontendError::Syntax { line, message },
    })
}

/// `[docker.io/|index.docker.io/]docker/dockerfile[-upstream][:tag][@sha256:hex]`.
fn is_official_frontend(reference: &str) -> bool {
    let r = reference.trim();
    let r = r
        .strip_prefix("docker.io/")
        .or_else(|| r.strip_prefix("index.docker.io/"))
        .unwrap_or(r);
    let (r, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    let (name, tag) = match r.split_once(':') {
        Some((n, t)) => (n, Some(t)),
        None => (r, None),
    };
    let tag_ok = tag.is_none_or(|t| {
        !t.is_empty()
            && t.len() <= 128
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    });
    let digest_ok = digest.is_none_or(|d| {
        d.strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
    });
    matches!(name, "docker/dockerfile" | "docker/dockerfile-upstream") && tag_ok && digest_ok
}

pub(crate) fn check_keyword(inst: &Instruction) -> Result<(), FrontendError> {
    if KEYWORDS.contains(&inst.keyword.as_str()) {
        return Ok(());
    }
    Err(FrontendError::UnknownInstruction {
        line: inst.line_start,
        name: inst.keyword.clone(),
        suggestion: suggest(&inst.keyword, KEYWORDS),
    })
}

pub(crate) fn platform_args(target: &Platform) -> Vec<(String, String)> {
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

pub(crate) fn valid_stage_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

impl<'a> Lowerer<'a> {
    fn expand(&self, word: &str, vars: &impl Vars, line: u32) -> Result<String, FrontendError> {
        self.note_undefined(word, vars);
        let lookup = |k: &str| vars.var(k).map(str::to_string);
        shell::expand_in(word, &lookup, self.escape, &self.budget).map_err(|e| e.at_line(line))
    }

    /// Remember variables `word` uses without a value or default (UndefinedVar).
    fn note_undefined(&self, word: &str, vars: &impl Vars) {
        if !self.track_undefined.get() {
            return;
        }
        for r in lint::referenced_vars(word, self.escape) {
            if !r.has_default && vars.var(&r.name).is_none() {
                self.undefined.borrow_mut().push(r.name);
            }
        }
    }

    fn expand_words(
        &self,
        word: &str,
        vars: &impl Vars,
        line: u32,
    ) -> Result<Vec<String>, FrontendError> {
        self.note_undefined(word, vars);
        let lookup = |k: &str| vars.var(k).map(str::to_string);
        shell::expand_words_in(word, &lookup, self.escape, &self.budget)
            .map_err(|e| e.at_line(line))
    }

    /// Charge `bytes` of copied state or produced text to the build's budget.
    fn spend(&self, bytes: usize, line: u32) -> Result<(), FrontendError> {
        self.budget.spend_bytes(bytes).map_err(|e| e.at_line(line))
    }

    /// A "did you mean" hint, while fewer than 256 were computed in this build.
    pub(crate) fn hint<'c, I: IntoIterator<Item = &'c str>>(
        &self,
        word: &str,
        candidates: I,
    ) -> Option<String> {
        let n = self.hints.get();
        if n >= 256 {
            return None;
        }
        self.hints.set(n + 1);
        suggest(word, candidates)
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
        description: &dyn Fn(&crate::ResolvedImage) -> String,
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
                description: description(&resolved),
                stage: stage.map(str::to_string),
                lines: Some((line, line)),
                ignore_cache: false,
            },
        )?;
        self.sources.insert(op_key, n);
        self.images.insert(key, (n, resolved.clone()));
        Ok((n, resolved))
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
            "ENV" => self.env(st, step),
            "LABEL" => self.label(st, step),
            "ARG" => self.arg(st, step),
            "USER" => self.user(st, step),
            "CMD" | "ENTRYPOINT" => self.command(st, step),
            "EXPOSE" => self.expose(st, step),
            "VOLUME" => self.volume(st, step),
            "STOPSIGNAL" => self.stopsignal(st, step),
            "SHELL" => self.shell_form(st, step),
            "MAINTAINER" => self.maintainer(st, step),
            "HEALTHCHECK" => self.healthcheck(st, step),
            "ONBUILD" => self.onbuild(st, step),
            "FROM" => Err(step.err("FROM is not allowed here")),
            other => Err(FrontendError::UnknownInstruction {
                line,
                name: other.to_string(),
                suggestion: suggest(other, KEYWORDS),
            }),
        }
    }
}
