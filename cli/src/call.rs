//! `rbuild build --call=METHOD[,format=text|json]`, as buildx: `build` (the default), `check`
//! (the build checks; `--check` is short for it), `outline` (the build arguments, secrets,
//! SSH agents and cache mounts the target uses) and `targets` (the Dockerfile's stages).
//! The JSON shapes are BuildKit's subrequest results (`frontend/subrequests/outline`,
//! `targets`, `lint`: `name`, `args[].name/value/description/location`, `secrets[]`, `ssh[]`,
//! `cache[].ID`, `targets[].name/default/description/base/platform/location`, lint
//! `warnings[].ruleName/detail/url/location`, `sources`); the text forms are buildx's
//! printers (tab-aligned tables). Outline and targets read the Dockerfile only: nothing is
//! resolved or built.

use std::collections::BTreeSet;

use base64::Engine;
use rbuild_frontend::parser::Instruction;
use serde_json::{json, Value};

/// What `--call` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Build,
    Check,
    Outline,
    Targets,
}

/// A parsed `--call` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub method: Method,
    pub json: bool,
}

/// Parse `METHOD[,format=text|json]` (clap value parser; errors name the flag).
pub fn parse(s: &str) -> Result<Call, String> {
    let fields = crate::flags::csv_fields(s).map_err(|e| format!("--call: {e}"))?;
    let mut method = None;
    let mut json = false;
    for f in fields {
        match f.split_once('=') {
            Some(("format", "json")) => json = true,
            Some(("format", "text")) => json = false,
            Some(("format", v)) => {
                return Err(format!("--call: format={v:?}: expected text or json"))
            }
            Some((k, _)) => return Err(format!("--call: unknown option {k:?} (format)")),
            None => {
                method = Some(match f.as_str() {
                    "build" => Method::Build,
                    "check" | "lint" => Method::Check,
                    "outline" => Method::Outline,
                    "targets" => Method::Targets,
                    other => {
                        return Err(format!(
                            "--call {other:?}: expected build, check, outline or targets"
                        ))
                    }
                })
            }
        }
    }
    Ok(Call {
        method: method.unwrap_or(Method::Build),
        json,
    })
}

/// The clap value parser: checks the syntax, keeps the text.
pub fn value(s: &str) -> Result<String, String> {
    parse(s).map(|_| s.to_string())
}

/// One stage of the Dockerfile.
struct Stage<'a> {
    name: Option<String>,
    base: String,
    platform: Option<String>,
    line: u32,
    description: String,
    body: Vec<&'a Instruction>,
}

fn flag<'a>(i: &'a Instruction, name: &str) -> Option<&'a str> {
    i.flags
        .iter()
        .find_map(|f| f.strip_prefix(&format!("--{name}=")))
}

/// The comment lines directly above line `line` (1-based), joined; a leading `NAME ` is
/// dropped (`# version the release to build` above `ARG version`), as BuildKit does.
fn comment_above(lines: &[&str], line: u32, name: &str) -> String {
    let mut out = Vec::new();
    let mut n = line as usize;
    while n >= 2 {
        let l = lines[n - 2].trim();
        match l.strip_prefix('#') {
            Some(c)
                if !c.trim_start().contains("syntax=") && !c.trim_start().contains("check=") =>
            {
                out.push(c.trim().to_string());
                n -= 1;
            }
            _ => break,
        }
    }
    out.reverse();
    let text = out.join(" ");
    match text.strip_prefix(name) {
        Some(rest) if !name.is_empty() && rest.starts_with(' ') => rest.trim().to_string(),
        _ => text,
    }
}

fn stages<'a>(
    ast: &'a rbuild_frontend::parser::Ast,
    lines: &[&str],
) -> (Vec<&'a Instruction>, Vec<Stage<'a>>) {
    let mut global = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for i in &ast.instructions {
        if i.keyword == "FROM" {
            let words: Vec<&str> = i.args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, n] if as_.eq_ignore_ascii_case("as") => Some(n.to_string()),
                _ => None,
            };
            stages.push(Stage {
                description: comment_above(lines, i.line_start, name.as_deref().unwrap_or("")),
                name,
                base: words.first().map(|w| w.to_string()).unwrap_or_default(),
                platform: flag(i, "platform").map(str::to_string),
                line: i.line_start,
                body: Vec::new(),
            });
        } else if let Some(s) = stages.last_mut() {
            s.body.push(i);
        } else {
            global.push(i);
        }
    }
    (global, stages)
}

fn location(start: u32, end: u32) -> Value {
    json!({"sourceIndex": 0, "ranges": [{"start": {"line": start}, "end": {"line": end}}]})
}

/// `ARG A=1 B` → [("A", Some("1")), ("B", None)].
fn arg_decls(i: &Instruction) -> Vec<(String, Option<String>)> {
    i.args
        .split_whitespace()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.trim_matches(['"', '\'']).to_string())),
            None => (w.to_string(), None),
        })
        .collect()
}

/// The stages `target` needs (itself, its FROM stage, `--from` sources), in file order.
fn reachable(stages: &[Stage], target: usize) -> BTreeSet<usize> {
    let find = |name: &str| -> Option<usize> {
        stages
            .iter()
            .position(|s| {
                s.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .or_else(|| name.parse::<usize>().ok().filter(|n| *n < stages.len()))
    };
    let mut seen = BTreeSet::new();
    let mut todo = vec![target];
    while let Some(s) = todo.pop() {
        if !seen.insert(s) {
            continue;
        }
        todo.extend(find(&stages[s].base));
        for i in &stages[s].body {
            if let Some(f) = flag(i, "from") {
                todo.extend(find(f));
            }
            for m in mounts(i) {
                if let Some(f) = m.iter().find_map(|(k, v)| (k == "from").then_some(v)) {
                    todo.extend(find(f));
                }
            }
        }
    }
    seen
}

/// The `--mount` options of a RUN, as key/value lists.
fn mounts(i: &Instruction) -> Vec<Vec<(String, String)>> {
    i.flags
        .iter()
        .filter_map(|f| f.strip_prefix("--mount="))
        .filter_map(|m| crate::flags::csv_fields(m).ok())
        .map(|fields| {
            fields
                .into_iter()
                .map(|f| match f.split_once('=') {
                    Some((k, v)) => (k.to_lowercase(), v.to_string()),
                    None => (f.to_lowercase(), "true".to_string()),
                })
                .collect()
        })
        .collect()
}

fn target_index(stages: &[Stage], target: Option<&str>) -> Result<usize, String> {
    match target {
        None => Ok(stages.len().saturating_sub(1)),
        Some(t) => stages
            .iter()
            .position(|s| s.name.as_deref() == Some(t))
            .ok_or_else(|| format!("target stage {t:?} could not be found")),
    }
}

/// BuildKit's outline result for `target` (default: the last stage).
pub fn outline(dockerfile: &str, target: Option<&str>) -> Result<Value, String> {
    let ast = rbuild_frontend::parser::parse(dockerfile);
    let lines: Vec<&str> = dockerfile.lines().collect();
    let (global, stages) = stages(&ast, &lines);
    if stages.is_empty() {
        return Err("the Dockerfile has no FROM instruction".into());
    }
    let t = target_index(&stages, target)?;
    let mut args = Vec::new();
    let mut seen = BTreeSet::new();
    let mut push_args = |i: &Instruction| {
        for (name, value) in arg_decls(i) {
            if seen.insert(name.clone()) {
                let mut a = json!({"name": name, "location": location(i.line_start, i.line_end)});
                if let Some(v) = value {
                    a["value"] = json!(v);
                }
                let d = comment_above(&lines, i.line_start, &name);
                if !d.is_empty() {
                    a["description"] = json!(d);
                }
                args.push(a);
            }
        }
    };
    for i in global.iter().filter(|i| i.keyword == "ARG") {
        push_args(i);
    }
    let mut secrets: Vec<Value> = Vec::new();
    let mut ssh: Vec<Value> = Vec::new();
    let mut cache: Vec<Value> = Vec::new();
    for s in reachable(&stages, t) {
        for i in &stages[s].body {
            if i.keyword == "ARG" {
                push_args(i);
            }
            for m in mounts(i) {
                let get = |k: &str| m.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
                let required = get("required").is_some_and(|v| v == "true");
                let loc = location(i.line_start, i.line_end);
                match get("type") {
                    Some("secret") => {
                        let name = get("id")
                            .or_else(|| {
                                get("target")
                                    .or(get("dst"))
                                    .and_then(|t| t.rsplit('/').next())
                            })
                            .unwrap_or_default()
                            .to_string();
                        if !secrets.iter().any(|x| x["name"] == name) {
                            let mut o = json!({"name": name, "location": loc});
                            if required {
                                o["required"] = json!(true);
                            }
                            secrets.push(o);
                        }
                    }
                    Some("ssh") => {
                        let name = get("id").unwrap_or("default").to_string();
                        if !ssh.iter().any(|x| x["name"] == name) {
                            let mut o = json!({"name": name, "location": loc});
                            if required {
                                o["required"] = json!(true);
                            }
                            ssh.push(o);
                        }
                    }
                    Some("cache") => {
                        let id = get("id")
                            .or(get("target"))
                            .or(get("dst"))
                            .unwrap_or_default()
                            .to_string();
                        if !cache.iter().any(|x| x["ID"] == id) {
                            cache.push(json!({"ID": id, "location": loc}));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let mut o = json!({});
    if let Some(n) = &stages[t].name {
        o["name"] = json!(n);
    }
    if !stages[t].description.is_empty() {
        o["description"] = json!(stages[t].description);
    }
    for (k, v) in [
        ("args", args),
        ("secrets", secrets),
        ("ssh", ssh),
        ("cache", cache),
    ] {
        if !v.is_empty() {
            o[k] = Value::Array(v);
        }
    }
    Ok(o)
}

/// BuildKit's targets result: every stage, the last one the default.
pub fn targets(dockerfile: &str) -> Value {
    let ast = rbuild_frontend::parser::parse(dockerfile);
    let lines: Vec<&str> = dockerfile.lines().collect();
    let (_, stages) = stages(&ast, &lines);
    let last = stages.len().saturating_sub(1);
    let list: Vec<Value> = stages
        .iter()
        .enumerate()
        .map(|(n, s)| {
            let mut o = json!({"location": location(s.line, s.line)});
            if let Some(name) = &s.name {
                o["name"] = json!(name);
            }
            if n == last {
                o["default"] = json!(true);
            }
            if !s.description.is_empty() {
                o["description"] = json!(s.description);
            }
            if !s.base.is_empty() {
                o["base"] = json!(s.base);
            }
            if let Some(p) = &s.platform {
                o["platform"] = json!(p);
            }
            o
        })
        .collect();
    json!({"targets": list, "sources": []})
}

/// buildx's text form of an outline.
pub fn outline_text(o: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut out = String::new();
    if o.get("name").is_some() || o.get("description").is_some() {
        let name = o.get("name").map(s).unwrap_or_else(|| "(default)".into());
        let mut rows = vec![format!("TARGET:\t{name}")];
        if let Some(d) = o.get("description") {
            rows.push(format!("DESCRIPTION:\t{}", s(d)));
        }
        out.push_str(&crate::images::tabulate_with(&rows, 0, 1));
        out.push('\n');
    }
    let list = |k: &str| {
        o.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let args = list("args");
    if !args.is_empty() {
        let mut rows = vec!["BUILD ARG\tVALUE\tDESCRIPTION".to_string()];
        for a in &args {
            rows.push(format!(
                "{}\t{}\t{}",
                s(&a["name"]),
                s(&a["value"]),
                s(&a["description"])
            ));
        }
        out.push_str(&crate::images::tabulate_with(&rows, 0, 3));
        out.push('\n');
    }
    for (key, title) in [("secrets", "SECRET"), ("ssh", "SSH")] {
        let items = list(key);
        if !items.is_empty() {
            let mut rows = vec![format!("{title}\tREQUIRED")];
            for x in &items {
                let req = if x["required"] == true { "true" } else { "" };
                rows.push(format!("{}\t{req}", s(&x["name"])));
            }
            out.push_str(&crate::images::tabulate_with(&rows, 0, 3));
            out.push('\n');
        }
    }
    out
}

/// buildx's text form of a targets list.
pub fn targets_text(l: &Value) -> String {
    let mut rows = vec!["TARGET\tDESCRIPTION".to_string()];
    for t in l["targets"].as_array().cloned().unwrap_or_default() {
        let name = t["name"].as_str().unwrap_or_default();
        let name = match (name.is_empty(), t["default"] == true) {
            (true, true) => "(default)".to_string(),
            (false, true) => format!("{name} (default)"),
            _ => name.to_string(),
        };
        rows.push(format!(
            "{name}\t{}",
            t["description"].as_str().unwrap_or_default()
        ));
    }
    crate::images::tabulate_with(&rows, 0, 1)
}

/// BuildKit's lint result (`--call=check,format=json`) for `warnings` of the Dockerfile
/// `name` with `text`.
pub fn lint_json(name: &str, text: &str, warnings: &[rbuild_frontend::Diagnostic]) -> Value {
    let list: Vec<Value> = warnings
        .iter()
        .map(|w| {
            let (rule, detail) = crate::check::split_rule(&w.message);
            let mut o = json!({"ruleName": rule.unwrap_or_default(), "detail": detail});
            if let Some(r) = rule {
                o["url"] = json!(crate::check::rule_url(r));
            }
            if w.line > 0 {
                o["location"] = location(w.line, w.end_line.max(w.line));
            }
            o
        })
        .collect();
    json!({
        "warnings": list,
        "sources": [{
            "filename": name,
            "data": base64::engine::general_purpose::STANDARD.encode(text),
            "language": "Dockerfile",
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DF: &str = "\
# syntax=docker/dockerfile:1
ARG VERSION=1.2
# base the build environment
FROM --platform=linux/amd64 golang:1.22 AS base
ARG GOFLAGS
RUN --mount=type=secret,id=token,required --mount=type=cache,target=/root/.cache true

FROM alpine AS unused
RUN --mount=type=secret,id=other true

# release the final image
FROM base AS release
# PORT the port to listen on
ARG PORT=8080
RUN --mount=type=ssh true
";

    #[test]
    fn call_values_parse_like_buildx() {
        assert_eq!(
            parse("outline,format=json").unwrap(),
            Call {
                method: Method::Outline,
                json: true
            }
        );
        assert_eq!(parse("targets").unwrap().method, Method::Targets);
        assert_eq!(parse("check").unwrap().method, Method::Check);
        assert!(parse("dance").unwrap_err().contains("outline"));
        assert!(parse("outline,format=yaml").is_err());
        assert!(parse("outline,colour=red").is_err());
    }

    #[test]
    fn the_outline_lists_the_targets_args_secrets_ssh_and_cache() {
        let o = outline(DF, None).unwrap();
        assert_eq!(o["name"], "release");
        assert_eq!(o["description"], "the final image");
        let args: Vec<&str> = o["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert_eq!(args, ["VERSION", "GOFLAGS", "PORT"]);
        assert_eq!(o["args"][0]["value"], "1.2");
        assert_eq!(o["args"][2]["description"], "the port to listen on");
        assert_eq!(o["args"][2]["location"]["ranges"][0]["start"]["line"], 14);
        assert_eq!(
            o["secrets"],
            json!([{"name": "token", "required": true, "location": location(6, 6)}])
        );
        assert_eq!(o["ssh"][0]["name"], "default");
        assert_eq!(o["cache"][0]["ID"], "/root/.cache");
        let text = outline_text(&o);
        assert!(text.starts_with("TARGET:      release\nDESCRIPTION: the final image\n\nBUILD ARG   VALUE   DESCRIPTION\nVERSION     1.2\n"), "{text}");
        assert!(
            text.contains("SECRET   REQUIRED\ntoken    true\n"),
            "{text}"
        );
        assert!(outline(DF, Some("nope")).is_err());
        let unused = outline(DF, Some("unused")).unwrap();
        assert_eq!(unused["secrets"][0]["name"], "other");
    }

    #[test]
    fn targets_list_every_stage_and_the_default() {
        let l = targets(DF);
        let t = l["targets"].as_array().unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0]["name"], "base");
        assert_eq!(t[0]["platform"], "linux/amd64");
        assert_eq!(t[0]["base"], "golang:1.22");
        assert_eq!(t[0]["description"], "the build environment");
        assert_eq!(t[2]["default"], true);
        assert!(t[0].get("default").is_none());
        assert_eq!(
            targets_text(&l),
            "TARGET            DESCRIPTION\nbase              the build environment\nunused\nrelease (default) the final image\n"
        );
    }
}
