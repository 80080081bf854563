//! Stages: FROM headers, stage references (`--from`, `FROM <stage>`, `--mount from=`),
//! their dependencies, and dispatching one stage (its base, ONBUILD triggers, instructions).

use super::*;

impl Lowerer<'_> {
    pub(super) fn stage_header<'i>(
        &self,
        from: &'i Instruction,
        insts: Vec<&'i Instruction>,
        earlier: &HashSet<String>,
    ) -> Result<StageDef<'i>, FrontendError> {
        let line = from.line_start;
        let flags = parse_flags(from, &["platform"])?;
        let vars = &self.global;
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
        let base = self.expand(&base_raw, vars, line)?;
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
            if earlier.contains(n) {
                return Err(FrontendError::instr(
                    line,
                    format!("DuplicateStageName: duplicate stage name \"{n}\""),
                ));
            }
        }
        let platform = match flag(&flags, "platform") {
            Some(Some(p)) => {
                let p = self.expand(p, vars, line)?;
                Some(Platform::parse(&p).ok_or_else(|| {
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
    pub(super) fn stage_ref(
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
        let found = self.stage_index.get(&lname).copied().or_else(|| {
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

    pub(super) fn base_of(&self, idx: usize, sd: &StageDef<'_>) -> Base {
        let lb = sd.base.to_lowercase();
        if lb == "scratch" {
            return Base::Scratch;
        }
        match self.named_context(&sd.base) {
            // `docker-image://scratch` is the empty image, as in BuildKit.
            Some(NamedContext::Image(r)) if r.eq_ignore_ascii_case("scratch") => {
                return Base::Scratch
            }
            Some(NamedContext::Image(r)) => return Base::Image(r.clone()),
            Some(NamedContext::Local(l)) => return Base::Local(l.clone()),
            None => {}
        }
        if let Some(&i) = self.stage_index.get(&lb).filter(|&&i| i < idx) {
            return Base::Stage(i);
        }
        Base::Image(sd.base.clone())
    }

    /// The `--build-context` a name (not a stage) stands for, if any.
    pub(super) fn named_context(&self, name: &str) -> Option<&NamedContext> {
        self.opts
            .named_contexts
            .get(name)
            .or_else(|| self.opts.named_contexts.get(&name.to_lowercase()))
    }

    /// The local source node of a named local build context.
    pub(super) fn named_local(&mut self, local: &str) -> Result<NodeId, FrontendError> {
        self.source(
            SourceOp::Local {
                name: local.to_string(),
                exclude: self
                    .opts
                    .named_context_excludes
                    .get(local)
                    .cloned()
                    .unwrap_or_default(),
            },
            format!("[internal] load build context {local}"),
        )
    }

    /// The stages stage `idx` needs: its base, `--from`/`--mount from=` references, and those
    /// of the ONBUILD triggers of a base stage (which run in this stage, as BuildKit's
    /// initOnBuildTriggers adds their dependencies).
    pub(super) fn stage_deps(
        &self,
        idx: usize,
        stages: &[StageDef<'_>],
    ) -> Result<BTreeSet<usize>, FrontendError> {
        let mut deps = BTreeSet::new();
        let Some(sd) = stages.get(idx) else {
            return Ok(deps);
        };
        if let Base::Stage(i) = self.base_of(idx, sd) {
            deps.insert(i);
            for ob in stages
                .get(i)
                .map(|b| b.insts.as_slice())
                .unwrap_or(&[])
                .iter()
                .filter(|t| t.keyword == "ONBUILD")
            {
                for t in parser::parse(&onbuild_trigger_text(ob)).instructions {
                    self.inst_deps(&t, idx, sd.from.line_start, &mut deps)?;
                }
            }
        }
        for inst in &sd.insts {
            self.inst_deps(inst, idx, inst.line_start, &mut deps)?;
        }
        Ok(deps)
    }

    /// Stages one instruction references (`COPY/ADD --from`, `RUN --mount from=`).
    fn inst_deps(
        &self,
        inst: &Instruction,
        idx: usize,
        line: u32,
        deps: &mut BTreeSet<usize>,
    ) -> Result<(), FrontendError> {
        for f in &inst.flags {
            let (k, v) = flag_name_value(f);
            let Some(v) = v else { continue };
            if k == "from" && matches!(inst.keyword.as_str(), "COPY" | "ADD") {
                if let Some(i) =
                    self.stage_ref(&v, idx, line, &format!("{} --from={v}", inst.keyword))?
                {
                    deps.insert(i);
                }
            }
            if k == "mount" && inst.keyword == "RUN" {
                for field in v.split(',') {
                    if let Some((fk, fv)) = field.split_once('=') {
                        if fk.trim().eq_ignore_ascii_case("from") {
                            if let Some(i) =
                                self.stage_ref(fv.trim(), idx, line, "RUN --mount from")?
                            {
                                deps.insert(i);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn dispatch_stage(
        &mut self,
        idx: usize,
        sd: &StageDef<'_>,
    ) -> Result<StageState, FrontendError> {
        let label = sd.name.clone().unwrap_or_else(|| format!("stage-{idx}"));
        let single = self.stage_names.len() == 1;
        let base = self.base_of(idx, sd);
        // Numbering as BuildKit's: the FROM of an image or local context is step 1 (not
        // `FROM scratch`, not a stage), then each RUN/COPY/ADD/WORKDIR; the total also counts
        // the base's ONBUILD triggers, known once the base is.
        let from_step_count = usize::from(matches!(base, Base::Image(_) | Base::Local(_)));
        // A named context that is the empty image still counts its FROM in the total, though
        // no FROM step is shown (BuildKit: `[1/2] COPY …` for `--build-context
        // base=docker-image://scratch`).
        let hidden_from =
            usize::from(matches!(base, Base::Scratch) && !sd.base.eq_ignore_ascii_case("scratch"));
        let own = sd.insts.iter().filter(|i| numbered(i)).count() + hidden_from;
        let line = sd.from.line_start;
        let platform = sd
            .platform
            .clone()
            .unwrap_or_else(|| self.opts.platform.clone());
        let from_step = Step {
            inst: sd.from,
            label: label.clone(),
            index: 1,
            total: from_step_count + own,
            single,
            onbuild: false,
        };
        let mut st = match &base {
            Base::Scratch => StageState::new(None, ImageConfig::scratch(&platform)),
            Base::Stage(i) => {
                let not_built = || {
                    FrontendError::instr(line, format!("FROM: stage \"{}\" was not built", sd.base))
                };
                let uses = self.base_uses.get_mut(*i).ok_or_else(not_built)?;
                *uses = uses.saturating_sub(1);
                let last = *uses == 0;
                let slot = self.done.get_mut(*i).ok_or_else(not_built)?;
                let prev = if last {
                    // The last stage built from it takes the state; `COPY --from` only needs
                    // the node, which stays.
                    let node = slot.as_ref().ok_or_else(not_built)?.node;
                    slot.replace(StageState::new(node, ImageConfig::default()))
                        .ok_or_else(not_built)?
                } else {
                    // Each other derived stage holds a copy of its base's state: charged, so
                    // that many stages derived from a big one cannot hold n² entries.
                    let prev = slot.as_ref().ok_or_else(not_built)?.clone();
                    self.spend(prev.size(), line)?;
                    prev
                };
                StageState {
                    cmd_set: false,
                    ..prev
                }
            }
            Base::Local(local) => {
                // The directory's contents become the stage's root filesystem.
                let src = self.named_local(local)?;
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
                StageState::new(Some(node), ImageConfig::scratch(&platform))
            }
            Base::Image(reference) => {
                let desc = |r: &crate::ResolvedImage| {
                    let total = from_step_count + own + r.config.config.on_build.len();
                    format!(
                        "{} FROM {reference}",
                        progress_prefix(&label, single, 1, total)
                    )
                };
                let (node, resolved) = self.image(
                    reference,
                    &platform,
                    line,
                    &format!("FROM {reference}"),
                    &desc,
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
                StageState::new(Some(node), resolved.config)
            }
        };
        if !st.env_index.contains_key("PATH") {
            st.set_env("PATH", DEFAULT_PATH);
        }
        // Like BuildKit: only an empty image (scratch, a local context) starts at WorkingDir
        // "/" (dockerfile2llb.emptyImage); an image keeps its own value, even empty.
        if matches!(base, Base::Scratch | Base::Local(_)) {
            st.config.config.working_dir = "/".to_string();
        }
        // ONBUILD triggers of the base run right after FROM.
        let triggers = std::mem::take(&mut st.config.config.on_build);
        let total = from_step_count + own + triggers.len();
        let mut index = from_step_count;
        for trig in triggers {
            // Triggers replay instructions that are not in this Dockerfile's text (a base
            // stage's ONBUILDs run in every stage built from it): charged with what their
            // result holds (history, config entries).
            self.spend(held(&trig) + 256, line)?;
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
                index += usize::from(numbered(&t));
                let step = Step {
                    inst: &t,
                    label: label.clone(),
                    index,
                    total,
                    single,
                    onbuild: true,
                };
                self.dispatch(&mut st, &step, idx)?;
            }
        }
        for inst in &sd.insts {
            index += usize::from(numbered(inst));
            let step = Step {
                inst,
                label: label.clone(),
                index,
                total,
                single,
                onbuild: false,
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
                let hint = if self.hints.get() < 256 {
                    let mut known: Vec<&str> = st
                        .vars
                        .keys()
                        .map(String::as_str)
                        .filter(|k| *k != n)
                        .collect();
                    known.sort_unstable();
                    self.hint(&n, known)
                } else {
                    None
                };
                let hint = hint
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

    pub(super) fn node_or_scratch(&mut self, n: Option<NodeId>) -> Result<NodeId, FrontendError> {
        match n {
            Some(n) => Ok(n),
            None => self.scratch(),
        }
    }

    /// Source node for `--from=<v>` (stage, index or image).
    pub(super) fn source_for_from(
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
            Some(NamedContext::Image(r)) if r.eq_ignore_ascii_case("scratch") => {
                return self.scratch();
            }
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
            &|_| format!("{} {what}={v}", step.prefix()),
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
}

/// The trigger an `ONBUILD` instruction records: the instruction after the keyword, with its
/// heredoc bodies (BuildKit's parseOnBuild: `original + "\n" + content + name` per heredoc).
pub(super) fn onbuild_trigger_text(inst: &Instruction) -> String {
    let mut t = inst.args.clone();
    for h in &inst.heredocs {
        t.push('\n');
        t.push_str(&h.body);
        t.push_str(&h.name);
    }
    t
}
