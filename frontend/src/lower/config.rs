//! Instructions that change the image config only (ENV, ARG, LABEL, USER, CMD, ENTRYPOINT,
//! EXPOSE, VOLUME, STOPSIGNAL, SHELL, MAINTAINER, HEALTHCHECK, ONBUILD) and WORKDIR.

use super::*;

impl Lowerer<'_> {
    /// `ARG a=b c` → [(a, Some(b)), (c, None)] (defaults unexpanded).
    pub(super) fn arg_pairs(
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

    /// ENV/LABEL pairs: `k=v …` or legacy `k v…`; keys and values expanded.
    pub(super) fn kv_pairs(
        &mut self,
        inst: &Instruction,
        vars: &impl Vars,
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

    pub(super) fn workdir(
        &mut self,
        st: &mut StageState,
        step: &Step<'_>,
    ) -> Result<(), FrontendError> {
        let inst = step.inst;
        parse_flags(inst, &[])?;
        let vars = st.vars();
        let p = &self.expand(&inst.args, &*vars, step.line())?;
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

    pub(super) fn healthcheck(
        &mut self,
        st: &mut StageState,
        step: &Step<'_>,
    ) -> Result<(), FrontendError> {
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
        // BuildKit's `fmt.Sprintf("HEALTHCHECK %q", config)` of the Go struct.
        let msg = format!(
            "HEALTHCHECK &{{{} \"{}\" \"{}\" \"{}\" \"{}\" {}}}",
            go_quote_list(&hc.test),
            go_duration(hc.interval),
            go_duration(hc.timeout),
            go_duration(hc.start_period),
            go_duration(hc.start_interval),
            go_quote_rune(hc.retries)
        );
        st.config.config.healthcheck = Some(hc);
        Self::history(st, msg, true);
        Ok(())
    }

    /// `ENV k=v …`.
    pub(super) fn env(
        &mut self,
        st: &mut StageState,
        step: &Step<'_>,
    ) -> Result<(), FrontendError> {
        let inst = step.inst;
        let line = step.line();
        parse_flags(inst, &[])?;
        let vars = st.vars();
        let pairs = self.kv_pairs(inst, &*vars, "ENV")?;
        drop(vars);
        let mut msg = String::from("ENV");
        for (k, _) in &pairs {
            self.lint_secret(line, "ENV", k);
        }
        for (k, v) in pairs {
            st.set_env(&k, &v);
            msg.push_str(&format!(" {k}={v}"));
        }
        Self::history(st, msg, true);
        Ok(())
    }

    /// `LABEL k=v …`.
    pub(super) fn label(
        &mut self,
        st: &mut StageState,
        step: &Step<'_>,
    ) -> Result<(), FrontendError> {
        let inst = step.inst;
        parse_flags(inst, &[])?;
        let vars = st.vars();
        let pairs = self.kv_pairs(inst, &*vars, "LABEL")?;
        let mut msg = String::from("LABEL");
        for (k, v) in pairs {
            msg.push_str(&format!(" {k}={v}"));
            st.config.config.labels.insert(k, v);
        }
        Self::history(st, msg, true);
        Ok(())
    }

    /// `ARG name[=default] …` inside a stage.
    pub(super) fn arg(
        &mut self,
        st: &mut StageState,
        step: &Step<'_>,
    ) -> Result<(), FrontendError> {
        let inst = step.inst;
        let line = step.line();
        // Defaults see the variables as they were before this instruction.
        let vars = st.vars();
        let mut values = Vec::new();
        for (name, default) in self.arg_pairs(inst)? {
            self.lint_secret(line, "ARG", &name);
            let value = match self.opts.build_args.get(&name) {
                Some(v) => Some(v.clone()),
                None => match default {
                    Some(d) => Some(self.expand(&d, &*vars, line)?),
                    None => self.global.get(&name).map(str::to_string),
                },
            };
            values.push((name, value));
        }
        drop(vars);
        let mut msg = String::from("ARG");
        for (name, value) in values {
            st.declared_args.set(&name, String::new());
            match value {
                Some(v) => {
                    msg.push_str(&format!(" {name}={v}"));
                    st.set_arg(&name, v);
                }
                None => msg.push_str(&format!(" {name}")),
            }
        }
        Self::history(st, msg, true);
        Ok(())
    }

    /// `USER`.
    pub(super) fn user(
        &mut self,
        st: &mut StageState,
        step: &Step<'_>,
    ) -> Result<(), FrontendError> {
        let user = self.one_argument(st, step)?;
        Self::history(st, format!("USER {user}"), true);
        st.config.config.user = user;
        Ok(())
    }

    /// The single expanded argument of USER/STOPSIGNAL (no flags; empty is an error).
    fn one_argument(&mut self, st: &StageState, step: &Step<'_>) -> Result<String, FrontendError> {
        let inst = step.inst;
        parse_flags(inst, &[])?;
        let vars = st.vars();
        let value = self.expand(&inst.args, &*vars, step.line())?;
        if value.trim().is_empty() {
            return Err(step.err(format!("{} requires exactly one argument", inst.keyword)));
        }
        Ok(value)
    }

    /// `CMD` and `ENTRYPOINT`.
    pub(super) fn command(
        &mut self,
        st: &mut StageState,
        step: &Step<'_>,
    ) -> Result<(), FrontendError> {
        let inst = step.inst;
        let line = step.line();
        parse_flags(inst, &[])?;
        let argv = match &inst.json {
            Some(v) => v.clone(),
            None => {
                if inst.args.is_empty() {
                    return Err(
                        step.err(format!("{} requires at least one argument", inst.keyword))
                    );
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
            // Every CMD sets it (BuildKit's dispatchCmd, for the Docker image spec).
            st.config.config.args_escaped = true;
        } else {
            st.config.config.entrypoint = Some(argv).filter(|a| !a.is_empty());
            if !st.cmd_set {
                st.config.config.cmd = None;
            }
        }
        Self::history(st, msg, true);
        Ok(())
    }

    /// `EXPOSE port[/proto] …`.
    pub(super) fn expose(
        &mut self,
        st: &mut StageState,
        step: &Step<'_>,
    ) -> Result<(), FrontendError> {
        let inst = step.inst;
        let line = step.line();
        parse_flags(inst, &[])?;
        let vars = st.vars();
        // Like BuildKit (instructions.parseExpose), the arguments are sorted as written, then
        // expanded; the history lists every port in that order (duplicates kept).
        let mut raw = raw_words(&inst.args, self.escape);
        raw.sort();
        let mut words = Vec::new();
        for r in &raw {
            words.extend(self.expand_words(r, &*vars, line)?);
        }
        if words.is_empty() {
            return Err(step.err("EXPOSE requires at least one argument"));
        }
        let mut ports = Vec::new();
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
                    let (a, b) = (a.parse::<u16>().unwrap_or(0), b.parse::<u16>().unwrap_or(0));
                    if a > b {
                        return Err(step.err(format!("EXPOSE: invalid port range \"{w}\"")));
                    }
                    // A range is up to 65536 ports from a few bytes: charged.
                    self.spend(usize::from(b - a) * 16, line)?;
                    for p in a..=b {
                        ports.push(format!("{p}/{proto}"));
                    }
                }
                None => {
                    // As a number (`080` is port 80), as BuildKit's strconv.Itoa.
                    ports.push(format!("{}/{proto}", port.parse::<u16>().unwrap_or(0)));
                }
            }
        }
        let msg = format!("EXPOSE [{}]", ports.join(" "));
        self.spend(msg.len(), line)?;
        for p in ports {
            st.config.config.exposed_ports.insert(p, Default::default());
        }
        Self::history(st, msg, true);
        Ok(())
    }

    /// `VOLUME`.
    pub(super) fn volume(
        &mut self,
        st: &mut StageState,
        step: &Step<'_>,
    ) -> Result<(), FrontendError> {
        let inst = step.inst;
        let line = step.line();
        parse_flags(inst, &[])?;
        let vars = st.vars();
        let vols = match &inst.json {
            Some(v) => {
                let mut out = Vec::new();
                for w in v {
                    out.push(self.expand(w, &*vars, line)?);
                }
                out
            }
            // Each word is expanded as one word (BuildKit's VolumeCommand.Expand):
            // `ARG V="/a /b"` + `VOLUME $V` is the one volume "/a /b".
            None => {
                let mut out = Vec::new();
                for w in whitespace_words(&inst.args) {
                    out.push(self.expand(&w, &*vars, line)?);
                }
                out
            }
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

    /// `STOPSIGNAL`.
    pub(super) fn stopsignal(
        &mut self,
        st: &mut StageState,
        step: &Step<'_>,
    ) -> Result<(), FrontendError> {
        let sig = self.one_argument(st, step)?;
        Self::history(st, format!("STOPSIGNAL {sig}"), true);
        st.config.config.stop_signal = sig;
        Ok(())
    }

    /// `SHELL ["…"]`.
    pub(super) fn shell_form(
        &mut self,
        st: &mut StageState,
        step: &Step<'_>,
    ) -> Result<(), FrontendError> {
        let inst = step.inst;
        parse_flags(inst, &[])?;
        let Some(v) = inst.json.clone().filter(|v| !v.is_empty()) else {
            return Err(step.err("SHELL requires the arguments to be in JSON form, e.g. SHELL [\"/bin/bash\", \"-c\"]"));
        };
        let msg = format!("SHELL [{}]", v.join(" "));
        st.config.config.shell = v;
        Self::history(st, msg, true);
        Ok(())
    }

    /// `MAINTAINER` (deprecated).
    pub(super) fn maintainer(
        &mut self,
        st: &mut StageState,
        step: &Step<'_>,
    ) -> Result<(), FrontendError> {
        let inst = step.inst;
        let line = step.line();
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

    /// `ONBUILD <instruction>`: recorded as a trigger.
    pub(super) fn onbuild(
        &mut self,
        st: &mut StageState,
        step: &Step<'_>,
    ) -> Result<(), FrontendError> {
        let inst = step.inst;
        let line = step.line();
        parse_flags(inst, &[])?;
        let kw = inst
            .args
            .split(char::is_whitespace)
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
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
        // The trigger as written with its heredoc bodies (BuildKit's parseOnBuild); BuildKit
        // (dispatchOnbuild) records it in the config only, with no history entry.
        let trigger = super::stages::onbuild_trigger_text(inst);
        st.config.config.on_build.push(trigger);
        Ok(())
    }
}
