//! Behavioural assertions on lowering (complementing the golden files).
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use common::{amd64, FakeResolver};
use rbuild_frontend::{build, BuildOpts, BuildPlan, FrontendError};
use rbuild_graph::{Chmod, FileAction, IdSpec, MountKind, NetworkMode, Op, SourceOp};

fn opts() -> BuildOpts {
    BuildOpts {
        platform: amd64(),
        ..BuildOpts::default()
    }
}

fn plan(df: &str) -> BuildPlan {
    build(df, &opts(), &FakeResolver).unwrap()
}

fn root_op(p: &BuildPlan) -> &Op {
    &p.definition.nodes[p.root.0].op
}

#[test]
fn run_shell_form_env_cwd_user_and_root_mount() {
    let p = plan("FROM busybox\nARG V=1\nENV E=2\nWORKDIR /w\nUSER 5:6\nRUN echo $V\n");
    let Op::Exec(e) = root_op(&p) else {
        panic!("root is not an exec")
    };
    assert_eq!(e.args, vec!["/bin/sh", "-c", "echo $V"]);
    assert!(e.env.contains(&"V=1".to_string()));
    assert!(e.env.contains(&"E=2".to_string()));
    assert_eq!(e.cwd, "/w");
    assert_eq!(e.user, "5:6");
    assert_eq!(e.mounts[0].target, "/");
    assert_eq!(e.mounts[0].input, Some(0));
    assert!(matches!(
        e.mounts[0].kind,
        MountKind::Bind {
            readonly: false,
            ..
        }
    ));
    // ARG never reaches the image config
    assert!(p.image.config.env.iter().all(|kv| !kv.starts_with("V=")));
    assert_eq!(p.image.config.env_get("E"), Some("2"));
    let last = p.image.history.last().unwrap();
    assert_eq!(
        last.created_by.as_deref(),
        Some("RUN |1 V=1 /bin/sh -c echo $V # buildkit")
    );
    assert!(!last.empty_layer);
}

#[test]
fn no_cache_marks_exec_and_file_nodes_only() {
    let mut o = opts();
    o.no_cache = true;
    let p = build(
        "FROM busybox\nWORKDIR /a\nCOPY x y\nRUN true\n",
        &o,
        &FakeResolver,
    )
    .unwrap();
    for n in &p.definition.nodes {
        match n.op {
            Op::Exec(_) | Op::File(_) => assert!(n.meta.ignore_cache),
            _ => assert!(!n.meta.ignore_cache),
        }
    }
}

#[test]
fn proxy_args_go_to_proxy_env_unless_declared() {
    let mut o = opts();
    o.build_args.insert("https_proxy".into(), "http://p".into());
    o.build_args.insert("NO_PROXY".into(), "local".into());
    let p = build("FROM busybox\nARG NO_PROXY\nRUN true\n", &o, &FakeResolver).unwrap();
    let Op::Exec(e) = root_op(&p) else { panic!() };
    assert_eq!(e.proxy_env, vec!["https_proxy=http://p"]);
    assert!(e.env.contains(&"NO_PROXY=local".to_string()));
    assert!(!e.env.iter().any(|kv| kv.starts_with("https_proxy")));
}

#[test]
fn platform_args_need_redeclaration_in_stage() {
    let mut o = opts();
    o.platform.architecture = "arm64".into();
    o.platform.variant = Some("v8".into());
    let p = build(
        "FROM busybox\nRUN echo $TARGETARCH\nARG TARGETPLATFORM\nRUN echo x\n",
        &o,
        &FakeResolver,
    )
    .unwrap();
    let execs: Vec<_> = p
        .definition
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Exec(e) => Some(e),
            _ => None,
        })
        .collect();
    assert!(!execs[0].env.iter().any(|kv| kv.starts_with("TARGET")));
    assert!(execs[1]
        .env
        .contains(&"TARGETPLATFORM=linux/arm64/v8".to_string()));
    // the image source is resolved for the target platform
    let Op::Source(SourceOp::Image { platform, .. }) = &p.definition.nodes[0].op else {
        panic!()
    };
    assert_eq!(platform.architecture, "arm64");
}

#[test]
fn global_arg_in_from_and_build_arg_override() {
    let mut o = opts();
    o.build_args.insert("BASE".into(), "alpine:3.20".into());
    let p = build("ARG BASE=busybox\nFROM ${BASE}\n", &o, &FakeResolver).unwrap();
    let Op::Source(SourceOp::Image {
        reference, digest, ..
    }) = root_op(&p)
    else {
        panic!()
    };
    assert_eq!(reference, "docker.io/library/alpine:3.20");
    assert_eq!(
        digest.as_deref(),
        Some(&*format!("sha256:{}", "0".repeat(64)))
    );
}

#[test]
fn copy_chown_chmod_and_dest_resolution() {
    let p = plan("FROM busybox\nWORKDIR /app\nCOPY --chown=user:123 --chmod=755 src/ lib/\n");
    let Op::File(f) = root_op(&p) else { panic!() };
    let FileAction::Copy(c) = &f.actions[0] else {
        panic!()
    };
    assert_eq!(c.src, "/src");
    assert_eq!(c.dest, "/app/lib/");
    assert_eq!(c.mode, Some(Chmod::Octal(0o755)));
    let owner = c.owner.as_ref().unwrap();
    assert_eq!(owner.user, IdSpec::Name("user".into()));
    assert_eq!(owner.group, Some(IdSpec::Id(123)));
    assert!(c.dir_copy_contents && c.create_dest_path && c.follow_symlinks && c.allow_wildcard);
    // src comes from the context local source, with dockerignore patterns
    let src_node = p.definition.nodes[p.root.0].inputs[c.src_input];
    assert!(matches!(
        &p.definition.nodes[src_node.0].op,
        Op::Source(SourceOp::Local { name, .. }) if name == "context"
    ));
}

#[test]
fn copy_from_ignores_other_stage_workdir() {
    let p =
        plan("FROM busybox AS a\nWORKDIR /deep\nRUN touch f\nFROM busybox\nCOPY --from=a f /f\n");
    let Op::File(f) = root_op(&p) else { panic!() };
    let FileAction::Copy(c) = &f.actions[0] else {
        panic!()
    };
    assert_eq!(c.src, "/f");
    let src = p.definition.nodes[p.root.0].inputs[c.src_input];
    assert!(matches!(p.definition.nodes[src.0].op, Op::Exec(_)));
}

#[test]
fn entrypoint_resets_inherited_cmd_but_not_own_cmd() {
    let p = plan("FROM busybox\nENTRYPOINT [\"x\"]\n");
    assert_eq!(p.image.config.cmd, None);
    let p = plan("FROM busybox\nCMD [\"c\"]\nENTRYPOINT [\"x\"]\n");
    assert_eq!(p.image.config.cmd, Some(vec!["c".to_string()]));
}

#[test]
fn scratch_gets_default_path_and_scratch_root() {
    let p = plan("FROM scratch\nENV A=1\n");
    assert_eq!(
        p.image.config.env_get("PATH"),
        Some(rbuild_graph::image::DEFAULT_PATH)
    );
    assert!(matches!(root_op(&p), Op::Source(SourceOp::Scratch)));
    assert!(p.image.rootfs.diff_ids.is_empty());
    assert_eq!(p.image.architecture, "amd64");
}

#[test]
fn run_heredoc_only_runs_the_body_with_the_shell() {
    let p = plan("FROM busybox\nSHELL [\"/bin/bash\", \"-c\"]\nRUN <<EOF\necho a\necho b\nEOF\n");
    let Op::Exec(e) = root_op(&p) else { panic!() };
    assert_eq!(e.args, vec!["/bin/bash", "-c", "echo a\necho b\n"]);
    assert_eq!(p.definition.nodes[p.root.0].meta.lines, Some((3, 6)));
}

#[test]
fn network_flag_and_unknown_security() {
    let p = plan("FROM busybox\nRUN --network=host true\n");
    let Op::Exec(e) = root_op(&p) else { panic!() };
    assert_eq!(e.network, NetworkMode::Host);
    let err = build(
        "FROM busybox\nRUN --security=weird true\n",
        &opts(),
        &FakeResolver,
    )
    .unwrap_err();
    assert_eq!(err.line(), Some(2));
}

#[test]
fn resolver_error_names_line_and_reference() {
    let err = build(
        "FROM busybox\nFROM nope/thing:1 AS x\n",
        &opts(),
        &FakeResolver,
    )
    .unwrap_err();
    assert!(matches!(err, FrontendError::Resolve { line: 2, .. }));
    let s = err.to_string();
    assert!(s.starts_with("Dockerfile:2: "), "{s}");
    assert!(
        s.contains("nope/thing:1") && s.contains("manifest unknown"),
        "{s}"
    );
}

#[test]
fn only_target_reachable_stages_are_resolved() {
    // The unreachable stage refers to an image the resolver rejects: it must not be resolved.
    let mut o = opts();
    o.target = Some("good".into());
    let p = build(
        "FROM nope AS bad\nFROM busybox AS good\nRUN true\n",
        &o,
        &FakeResolver,
    )
    .unwrap();
    assert_eq!(p.target_stage, "good");
}

#[test]
fn labels_from_options_win() {
    let mut o = opts();
    o.labels.insert("a".into(), "cli".into());
    let p = build("FROM busybox\nLABEL a=file b=2\n", &o, &FakeResolver).unwrap();
    assert_eq!(
        p.image.config.labels.get("a").map(String::as_str),
        Some("cli")
    );
    assert_eq!(
        p.image.config.labels.get("b").map(String::as_str),
        Some("2")
    );
}

#[test]
fn env_uses_values_from_before_the_instruction() {
    let p = plan("FROM busybox\nENV abc=hi\nENV abc=bye def=$abc\n");
    assert_eq!(p.image.config.env_get("def"), Some("hi"));
    assert_eq!(p.image.config.env_get("abc"), Some("bye"));
}

#[test]
fn workdir_user_stopsignal_take_the_whole_line() {
    let p = plan("FROM busybox\nWORKDIR /my dir\nUSER app user\nSTOPSIGNAL SIG TERM\n");
    assert_eq!(p.image.config.working_dir, "/my dir");
    assert_eq!(p.image.config.user, "app user");
    let Op::File(f) = root_op(&p) else { panic!() };
    assert!(
        matches!(&f.actions[0], FileAction::Mkdir { path, mode: 0o755, make_parents: true, owner: None } if path == "/my dir")
    );
}

#[test]
fn stage_names_are_case_insensitive_and_indexes_work() {
    let p = plan("FROM busybox AS Build\nRUN touch /a\nFROM build\nCOPY --from=BUILD /a /b\nCOPY --from=0 /a /c\n");
    let Op::File(f) = root_op(&p) else { panic!() };
    let FileAction::Copy(c) = &f.actions[0] else {
        panic!()
    };
    let node = &p.definition.nodes[p.root.0];
    // dest (previous copy, based on the RUN) and source (the RUN) are both inputs
    assert!(matches!(
        p.definition.nodes[node.inputs[c.src_input].0].op,
        Op::Exec(_)
    ));
    assert_eq!(p.target_stage, "1");
}

#[test]
fn dockerignore_patterns_reach_the_context_source() {
    let mut o = opts();
    o.dockerignore = rbuild_frontend::dockerignore::parse("node_modules\n!keep\n").unwrap();
    let p = build("FROM busybox\nCOPY . /app/\n", &o, &FakeResolver).unwrap();
    let local = p
        .definition
        .nodes
        .iter()
        .find_map(|n| match &n.op {
            Op::Source(SourceOp::Local { name, exclude }) => Some((name.clone(), exclude.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(local.0, "context");
    assert_eq!(local.1, vec!["node_modules", "!keep"]);
}

#[test]
fn error_lines_and_detail() {
    let e = build("FROM busybox\n\nRUN --boo true\n", &opts(), &FakeResolver).unwrap_err();
    assert_eq!(e.line(), Some(3));
    assert_eq!(e.detail(), "RUN: unknown flag: --boo");
    let e = build("FROM busybox\nCOPY a\n", &opts(), &FakeResolver).unwrap_err();
    assert_eq!(e.line(), Some(2));
    let e = build("", &opts(), &FakeResolver).unwrap_err();
    assert_eq!(e.line(), None);
}

#[test]
fn equivalent_image_references_share_one_source_node() {
    let p = plan(
        "FROM busybox AS a\nRUN true\nFROM docker.io/library/busybox:latest\nCOPY --from=a /x /x\n",
    );
    let images = p
        .definition
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Source(SourceOp::Image { .. })))
        .count();
    assert_eq!(images, 1);
}

// ---- BuildKit v0.25 fidelity (issue 15); expectations from moby/buildkit v0.25.2 sources ----

fn created_by(p: &BuildPlan) -> Vec<String> {
    p.image
        .history
        .iter()
        .filter_map(|h| h.created_by.clone())
        .collect()
}

#[test]
fn working_dir_is_kept_from_the_base_and_slash_only_for_scratch() {
    // dockerfile2llb: only emptyImage() sets WorkingDir "/"; an image keeps its own (empty).
    assert_eq!(
        plan("FROM busybox\nRUN true\n").image.config.working_dir,
        ""
    );
    assert_eq!(
        plan("FROM scratch\nENV A=1\n").image.config.working_dir,
        "/"
    );
    assert_eq!(
        plan("FROM busybox AS a\nWORKDIR /w\nFROM a\nRUN true\n")
            .image
            .config
            .working_dir,
        "/w"
    );
    // RUN still runs in / when the image has no WorkingDir.
    let p = plan("FROM busybox\nRUN true\n");
    let Op::Exec(e) = root_op(&p) else {
        panic!("root is not an exec")
    };
    assert_eq!(e.cwd, "/");
}

#[test]
fn copy_and_expose_history_as_buildkit_writes_it() {
    // testExportedHistory: `COPY foo2 foo3` (no --from), `EXPOSE [1234/udp 2375/tcp 5000/tcp]`.
    let p = plan(
        "FROM busybox AS base\nFROM busybox\nARG D=foo3\nCOPY --from=base --link --chown=1:2 --chmod=644 foo2 $D\nEXPOSE 2375 5000 1234/udp\nCOPY <<EOF /h\nx\nEOF\n",
    );
    let h = created_by(&p);
    assert!(
        h.contains(&"COPY --chown=1:2 --chmod=644 foo2 foo3 # buildkit".to_string()),
        "{h:?}"
    );
    assert!(
        h.contains(&"EXPOSE [1234/udp 2375/tcp 5000/tcp]".to_string()),
        "{h:?}"
    );
    assert!(h.contains(&"COPY <<EOF /h # buildkit".to_string()), "{h:?}");
}

#[test]
fn onbuild_heredoc_parses_and_records_no_history() {
    let p = plan("FROM busybox\nONBUILD RUN <<EOF\necho hi\nEOF\n");
    assert_eq!(p.image.config.on_build, vec!["RUN <<EOF\necho hi\nEOF"]);
    assert!(created_by(&p).iter().all(|c| !c.starts_with("ONBUILD")));
    // The trigger runs in a stage built from it.
    let p = plan("FROM busybox AS base\nONBUILD RUN <<EOF\necho hi\nEOF\nFROM base\n");
    let Op::Exec(e) = root_op(&p) else {
        panic!("the trigger did not run")
    };
    assert_eq!(e.args.last().map(String::as_str), Some("echo hi\n"));
}

#[test]
fn onbuild_copy_from_a_stage_is_a_dependency_of_the_derived_stage() {
    // testOnBuildInheritedStageWithFrom.
    let p = plan(
        "FROM busybox AS src\nRUN echo 12 > /f\nFROM busybox AS base\nONBUILD COPY --from=src /f /out/foo\nFROM base AS mid\nRUN cp /out/foo /out/bar\nFROM scratch\nCOPY --from=mid /out/bar /\n",
    );
    let descs: Vec<&str> = p
        .definition
        .nodes
        .iter()
        .map(|n| n.meta.description.as_str())
        .collect();
    assert!(
        descs.iter().any(|d| d.contains("ONBUILD COPY --from=src")),
        "{descs:?}"
    );
}

#[test]
fn syntax_directive_accepts_official_frontends_only() {
    for ok in [
        "docker/dockerfile:1",
        "docker/dockerfile:1.7-labs",
        "docker.io/docker/dockerfile-upstream:master",
        "docker/dockerfile@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "docker/dockerfile",
    ] {
        let r = build(
            &format!("# syntax={ok}\nFROM busybox\n"),
            &opts(),
            &FakeResolver,
        );
        assert!(r.is_ok(), "{ok}: {:?}", r.err().map(|e| e.to_string()));
    }
    for bad in [
        "tonistiigi/dockerfile:x",
        "docker/dockerfile:1 extra",
        "example.com/docker/dockerfile:1",
        "docker/dockerfile@sha256:xyz",
    ] {
        let e = build(
            &format!("# syntax={bad}\nFROM busybox\n"),
            &opts(),
            &FakeResolver,
        )
        .err()
        .unwrap_or_else(|| panic!("{bad} accepted"));
        let t = e.to_string();
        assert!(
            t.starts_with("Dockerfile:1: unsupported syntax") && t.contains("docker/dockerfile"),
            "{t}"
        );
    }
}

#[test]
fn build_context_docker_image_scratch_is_the_empty_image() {
    let mut o = opts();
    o.named_contexts.insert(
        "base".into(),
        rbuild_frontend::NamedContext::Image("scratch".into()),
    );
    let p = build("FROM base\nENV A=1\n", &o, &FakeResolver).unwrap();
    assert!(p
        .definition
        .nodes
        .iter()
        .all(|n| !matches!(n.op, Op::Source(SourceOp::Image { .. }))));
    assert_eq!(p.image.config.working_dir, "/");
    let p = build("FROM busybox\nCOPY --from=base / /b/\n", &o, &FakeResolver).unwrap();
    assert!(p
        .definition
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::Source(SourceOp::Scratch))));
}

#[test]
fn step_numbering_counts_only_buildkit_steps() {
    // prefixCommand / cmdTotal: FROM <image> is 1, then RUN/COPY/ADD/WORKDIR; ENV, LABEL,
    // USER … not counted; a stage built FROM a stage shows no FROM step.
    let p = plan(
        "FROM busybox AS a\nENV A=1\nLABEL l=1\nRUN true\nUSER 1\nWORKDIR /w\nFROM a AS b\nENV B=1\nRUN false\nFROM busybox\nCOPY --from=b /x /x\n",
    );
    let descs: Vec<&str> = p
        .definition
        .nodes
        .iter()
        .map(|n| n.meta.description.as_str())
        .collect();
    for want in [
        "[a 1/3] FROM busybox",
        "[a 2/3] RUN true",
        "[a 3/3] WORKDIR /w",
        "[b 1/1] RUN false",
        "[stage-2 2/2] COPY --from=b /x /x",
    ] {
        assert!(descs.contains(&want), "{want} not in {descs:?}");
    }
    // Padding to the width of the total, as `%*d`.
    let mut df = String::from("FROM busybox AS a\n");
    for _ in 0..10 {
        df.push_str("RUN true\n");
    }
    df.push_str("FROM a\n");
    let p = plan(&df);
    assert!(p
        .definition
        .nodes
        .iter()
        .any(|n| n.meta.description == "[a  2/11] RUN true"));
}
