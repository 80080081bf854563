//! Reference parsing and normalisation table.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub
)]

use rbuild_oci::Reference;

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn parse_table() {
    // input, registry, repository, tag, digest, Display, familiar
    let dgst = format!("busybox@{D}");
    let tag_dgst = format!("busybox:1@{D}");
    let local_dgst = format!("127.0.0.1:5055/x@{D}");
    type Row<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        String,
        String,
    );
    let ok: Vec<Row> = vec![
        (
            "busybox",
            "docker.io",
            "library/busybox",
            Some("latest"),
            None,
            "docker.io/library/busybox:latest".into(),
            "busybox:latest".into(),
        ),
        (
            "busybox:1",
            "docker.io",
            "library/busybox",
            Some("1"),
            None,
            "docker.io/library/busybox:1".into(),
            "busybox:1".into(),
        ),
        (
            "library/busybox",
            "docker.io",
            "library/busybox",
            Some("latest"),
            None,
            "docker.io/library/busybox:latest".into(),
            "busybox:latest".into(),
        ),
        (
            "docker.io/busybox",
            "docker.io",
            "library/busybox",
            Some("latest"),
            None,
            "docker.io/library/busybox:latest".into(),
            "busybox:latest".into(),
        ),
        (
            "index.docker.io/library/busybox:1.36",
            "docker.io",
            "library/busybox",
            Some("1.36"),
            None,
            "docker.io/library/busybox:1.36".into(),
            "busybox:1.36".into(),
        ),
        (
            "me/app:v1",
            "docker.io",
            "me/app",
            Some("v1"),
            None,
            "docker.io/me/app:v1".into(),
            "me/app:v1".into(),
        ),
        (
            "127.0.0.1:5055/x",
            "127.0.0.1:5055",
            "x",
            Some("latest"),
            None,
            "127.0.0.1:5055/x:latest".into(),
            "127.0.0.1:5055/x:latest".into(),
        ),
        (
            "127.0.0.1:5055/library/busybox:1",
            "127.0.0.1:5055",
            "library/busybox",
            Some("1"),
            None,
            "127.0.0.1:5055/library/busybox:1".into(),
            "127.0.0.1:5055/library/busybox:1".into(),
        ),
        (
            "localhost/x",
            "localhost",
            "x",
            Some("latest"),
            None,
            "localhost/x:latest".into(),
            "localhost/x:latest".into(),
        ),
        (
            "localhost:5000/a/b/c:t_1",
            "localhost:5000",
            "a/b/c",
            Some("t_1"),
            None,
            "localhost:5000/a/b/c:t_1".into(),
            "localhost:5000/a/b/c:t_1".into(),
        ),
        (
            "ghcr.io/org/img:1.0-rc.1",
            "ghcr.io",
            "org/img",
            Some("1.0-rc.1"),
            None,
            "ghcr.io/org/img:1.0-rc.1".into(),
            "ghcr.io/org/img:1.0-rc.1".into(),
        ),
        (
            &dgst,
            "docker.io",
            "library/busybox",
            None,
            Some(D),
            format!("docker.io/library/busybox@{D}"),
            format!("busybox@{D}"),
        ),
        (
            &tag_dgst,
            "docker.io",
            "library/busybox",
            Some("1"),
            Some(D),
            format!("docker.io/library/busybox:1@{D}"),
            format!("busybox:1@{D}"),
        ),
        (
            &local_dgst,
            "127.0.0.1:5055",
            "x",
            None,
            Some(D),
            format!("127.0.0.1:5055/x@{D}"),
            format!("127.0.0.1:5055/x@{D}"),
        ),
        (
            "ab-c_d__e/f--g.h:TAG",
            "docker.io",
            "ab-c_d__e/f--g.h",
            Some("TAG"),
            None,
            "docker.io/ab-c_d__e/f--g.h:TAG".into(),
            "ab-c_d__e/f--g.h:TAG".into(),
        ),
        (
            "[::1]:5000/img",
            "[::1]:5000",
            "img",
            Some("latest"),
            None,
            "[::1]:5000/img:latest".into(),
            "[::1]:5000/img:latest".into(),
        ),
        (
            "my-registry.example.com:443/team/app",
            "my-registry.example.com:443",
            "team/app",
            Some("latest"),
            None,
            "my-registry.example.com:443/team/app:latest".into(),
            "my-registry.example.com:443/team/app:latest".into(),
        ),
    ];
    for (input, reg, repo, tag, digest, display, familiar) in ok {
        let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(r.registry, reg, "{input}");
        assert_eq!(r.repository, repo, "{input}");
        assert_eq!(r.tag.as_deref(), tag, "{input}");
        assert_eq!(r.digest.as_deref(), digest, "{input}");
        assert_eq!(r.to_string(), display, "{input}");
        assert_eq!(r.familiar(), familiar, "{input}");
        // Display output parses back to the same reference.
        assert_eq!(
            Reference::parse(&r.to_string()).unwrap(),
            r,
            "{input} round trip"
        );
    }

    let long = "a".repeat(256);
    let long_tag = format!("x:{}", "t".repeat(129));
    let bad: Vec<(&str, &str)> = vec![
        ("", "empty"),
        ("Busybox", "lowercase"),
        ("docker.io/Library/busybox", "lowercase"),
        ("busybox:", "invalid tag"),
        ("busybox:-x", "invalid tag"),
        ("busybox:a/b", "invalid"),
        ("busybox@sha256:1234", "invalid digest"),
        (
            "busybox@md5:0123456789abcdef0123456789abcdef",
            "invalid digest",
        ),
        ("bus box", "whitespace"),
        ("-busybox", "invalid repository path component"),
        ("a//b", "invalid repository path component"),
        ("a/b/", "invalid repository path component"),
        ("a..b", "invalid repository path component"),
        ("a___b", "invalid repository path component"),
        ("host:port/x", "invalid registry host"),
        ("-bad.com/x", "invalid registry host"),
        (long.as_str(), "longer than 255"),
        (long_tag.as_str(), "invalid tag"),
        (":tag", "empty repository"),
        (
            "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "empty repository",
        ),
    ];
    for (input, want) in bad {
        let err = Reference::parse(input).expect_err(input).to_string();
        assert!(
            err.contains(want),
            "{input:?}: error {err:?} should mention {want:?}"
        );
        assert!(err.starts_with("invalid reference"), "{err}");
    }
}

#[test]
fn display_and_with_tag() {
    let r = Reference::parse("busybox").unwrap();
    assert_eq!(r.name(), "docker.io/library/busybox");
    assert_eq!(r.object(), "latest");
    let t = r.with_tag("1");
    assert_eq!(t.familiar(), "busybox:1");
    let d = Reference::parse(&format!("busybox@{D}")).unwrap();
    assert_eq!(d.object(), D);
}
