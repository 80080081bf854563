//! RUN: the exec op, its environment, `--network`/`--security`, and `--mount` parsing.

use super::*;

impl Lowerer<'_> {
    pub(super) fn run(
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
        // A RUN of one heredoc is named after its body's first line, as BuildKit's
        // summarizeHeredoc: `RUN <<EOF (apt-get update...)`.
        let mut summary: Option<String> = None;
        // What the history shows when it is not the command run.
        let mut history_args: Option<Vec<String>> = None;
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
                if let ([h], true) = (inst.heredocs.as_slice(), only) {
                    let body = h.body.trim();
                    let mut lines = body.split('\n');
                    let first = lines.next().unwrap_or("").trim_end_matches('\r');
                    let more = if lines.next().is_some() { "..." } else { "" };
                    summary = Some(format!(" ({first}{more})"));
                }
                match inst.heredocs.as_slice() {
                    [h] if only && h.body.starts_with("#!") => {
                        let path = format!("/dev/pipes/{}", h.name);
                        // BuildKit runs the file through the shell: its history shows that.
                        let mut shown = shell.clone();
                        shown.push(path.clone());
                        history_args = Some(shown);
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
                        // The shell reads the heredocs: `<<-` bodies as written.
                        let mut text = cmd.to_string();
                        for h in hs {
                            text.push('\n');
                            text.push_str(h.raw.as_deref().unwrap_or(&h.body));
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
                match st.args.get(k) {
                    Some(v) if st.arg_over_env.contains(k) => format!("{k}={v}"),
                    _ => kv.clone(),
                }
            })
            .collect();
        for (k, v) in st.args.iter() {
            if !st.env_index.contains_key(k) {
                env.push(format!("{k}={v}"));
            }
        }
        let mut proxy_env = Vec::new();
        for p in PROXY_ARGS {
            if let Some(v) = self.opts.build_args.get(p) {
                if !st.args.contains(p) {
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
        // Every declared ARG, with the value the step sees (an ENV of its name included),
        // empty when it has none (BuildKit's runCommandString).
        if !st.declared_args.is_empty() {
            created_by.push_str(&format!("|{}", st.declared_args.len()));
            for (k, _) in st.declared_args.iter() {
                let v = st.vars.get(k.as_str()).map(String::as_str).unwrap_or("");
                created_by.push_str(&format!(" {k}={v}"));
            }
            created_by.push(' ');
        }
        created_by.push_str(&history_args.as_ref().unwrap_or(&args).join(" "));
        created_by.push_str(" # buildkit");
        // Every RUN copies the stage's env and ARGs: charged, so n ARGs × n RUNs stay bounded.
        self.spend(
            created_by.len() + env.iter().map(|e| held(e)).sum::<usize>(),
            step.line(),
        )?;

        let meta = self.meta(
            step,
            format!("{}{}", step.description(), summary.unwrap_or_default()),
        );
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
                // BuildKit reads this build arg without an ARG (dockerui's keyHostnameArg).
                hostname: self
                    .opts
                    .build_args
                    .get("BUILDKIT_SANDBOX_HOSTNAME")
                    .cloned()
                    .unwrap_or_default(),
            }),
            inputs,
            meta,
        )?;
        st.node = Some(node);
        Self::history(st, created_by, false);
        Ok(())
    }

    pub(super) fn mount(
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
