//! Listing and store commands as docker users expect them, through the real binary:
//! `rbuild images` with `--format` (templates, `table`, `json`), `--filter`, `--digests`, `-a`
//! and columns that fit long names; `history` with content sizes; `prune -f` with Go
//! durations; unknown commands with a suggestion. Needs root and the test registry.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

mod common;

use common::{Project, Run};
use serde_json::Value;

fn run(p: &Project, args: &[&str]) -> Run {
    Run {
        out: p.cmd(args).output().unwrap(),
    }
}

const LONG: &str = "registry.example.com/team/a-very-long-repository-name-for-tests";

/// A store with `app:1` (label tier=web, a 3-byte file), the same image under a long name,
/// and `other:2` built later.
fn project() -> Project {
    let p = Project::new("FROM busybox\nRUN printf abc > /f\nLABEL tier=web\n");
    p.build(&["-t", "app:1"]).ok();
    run(&p, &["tag", "app:1", &format!("{LONG}:v1")]).ok();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    p.file("Dockerfile", "FROM busybox\nRUN echo other > /o\n");
    p.build(&["-t", "other:2"]).ok();
    p
}

#[test]
fn images_columns_fit_long_names_and_formats_and_filters_work() {
    let p = project();
    let table = run(&p, &["images"]).ok().stdout();
    let lines: Vec<&str> = table.lines().collect();
    let tag_col = lines[0].find("TAG").unwrap();
    assert!(tag_col > LONG.len(), "{table}");
    for l in &lines[1..] {
        let tag = l[tag_col..].split_whitespace().next().unwrap();
        assert!(
            ["1", "v1", "2"].contains(&tag),
            "tag column misaligned: {table}"
        );
    }
    assert!(
        lines[0].contains("CREATED") && lines[0].contains("SIZE"),
        "{table}"
    );

    let names = run(&p, &["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .ok()
        .stdout();
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        ["app:1", "other:2", &format!("{LONG}:v1")]
    );
    let t = run(&p, &["images", "--format", "table {{.Tag}}\\t{{.Size}}"])
        .ok()
        .stdout();
    assert!(t.starts_with("TAG "), "{t}");
    assert!(t.lines().nth(1).unwrap().contains("MB"), "{t}");

    let json: Vec<Value> = run(&p, &["images", "--format", "json"])
        .ok()
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json.len(), 3);
    for key in [
        "Repository",
        "Tag",
        "ID",
        "Digest",
        "CreatedSince",
        "CreatedAt",
        "Size",
    ] {
        assert!(json[0][key].is_string(), "{key}: {:?}", json[0]);
    }
    assert_eq!(json[0]["ID"].as_str().unwrap().len(), 12);
    assert!(json[0]["Digest"].as_str().unwrap().starts_with("sha256:"));

    let only = |filters: &[&str]| {
        let mut args = vec!["images", "--format", "{{.Repository}}:{{.Tag}}"];
        for f in filters {
            args.extend(["--filter", f]);
        }
        run(&p, &args).ok().stdout()
    };
    assert_eq!(only(&["reference=app"]), "app:1\n");
    assert_eq!(
        only(&["reference=registry.example.com/*/*"]),
        format!("{LONG}:v1\n")
    );
    assert_eq!(only(&["label=tier=web", "reference=app*"]), "app:1\n");
    assert_eq!(only(&["label=tier"]).lines().count(), 2);
    assert_eq!(only(&["dangling=true"]), "");
    assert_eq!(only(&["since=app:1"]), "other:2\n");
    assert_eq!(only(&["before=other:2"]).lines().count(), 2);

    let digests = run(&p, &["images", "--digests"]).ok().stdout();
    assert!(
        digests.lines().next().unwrap().contains("DIGEST"),
        "{digests}"
    );
    assert!(digests.contains("sha256:"), "{digests}");

    // -a: the base image the builds pulled is listed too
    let all = run(
        &p,
        &["images", "-a", "--format", "{{.Repository}}:{{.Tag}}"],
    )
    .ok()
    .stdout();
    assert!(all.lines().any(|l| l == "busybox:latest"), "{all}");
    assert!(!names.contains("busybox"), "{names}");

    for (args, code) in [
        (vec!["images", "--filter", "color=red"], 2),
        (vec!["images", "--filter", "since=nothere:1"], 2),
        (vec!["images", "--format", "{{.Nope}}"], 2),
    ] {
        let r = run(&p, &args);
        assert_eq!(r.code(), Some(code), "{args:?}: {}", r.stderr());
    }
}

#[test]
fn history_shows_content_sizes_and_prune_takes_go_durations() {
    let p = project();
    let h = run(&p, &["history", "app:1"]).ok().stdout();
    let run_line = h
        .lines()
        .find(|l| l.contains("RUN /bin/sh -c printf abc"))
        .unwrap_or_else(|| panic!("{h}"));
    // a 3-byte file: docker says 3B; the layer tar is 2048 bytes or more
    assert!(run_line.contains(" 3B "), "{h}");
    assert!(!h.contains("2048") && !h.contains("2.05kB"), "{h}");
    assert!(h.lines().next().unwrap().starts_with("IMAGE "), "{h}");

    let r = run(&p, &["prune", "-f", "--filter", "until=1h30m"]).ok();
    assert!(r.stdout().contains("removed"), "{}", r.stdout());
    run(&p, &["prune", "--force", "--filter", "until=2h45m30s"]).ok();
}

#[test]
fn unknown_commands_are_usage_errors_with_a_suggestion() {
    let p = Project::new("FROM busybox\n");
    let r = run(&p, &["imgaes"]);
    assert_eq!(r.code(), Some(2), "{}", r.stderr());
    assert!(
        r.stderr().contains("unknown command \"imgaes\""),
        "{}",
        r.stderr()
    );
    assert!(r.stderr().contains("\timages"), "{}", r.stderr());
    // an existing directory is still built: `rbuild DIR` = `rbuild build DIR`
    std::fs::create_dir(p.path().join("imgaes")).unwrap();
    std::fs::write(p.path().join("imgaes/Dockerfile"), "FROM busybox\n").unwrap();
    run(&p, &["imgaes"]).ok();
}
