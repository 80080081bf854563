//! A stable, human-readable text dump of a definition.
//!
//! One line per node reachable from the root: `nN <digest12> <op summary> <- [inputs]`, with
//! the full op as compact canonical JSON. Used by `rbuild debug dump-graph` and by the
//! lowering golden files, so any change to a definition digest shows up in review.

use crate::op::{Definition, NodeId, Op, SourceOp};
use crate::GraphError;

impl Definition {
    /// Dump the nodes reachable from `root`.
    pub fn dump(&self, root: NodeId) -> Result<String, GraphError> {
        let digests = self.digests()?;
        let mut out = String::new();
        for id in self.reachable(root)? {
            let node = &self.nodes[id.0];
            let kind = match &node.op {
                Op::Source(SourceOp::Scratch) => "scratch",
                Op::Source(SourceOp::Image { .. }) => "image",
                Op::Source(SourceOp::Local { .. }) => "local",
                Op::Source(SourceOp::Http { .. }) => "http",
                Op::Source(SourceOp::Git { .. }) => "git",
                Op::Exec(_) => "exec",
                Op::File(_) => "file",
                Op::Merge => "merge",
            };
            let inputs: Vec<String> = node.inputs.iter().map(|i| format!("n{}", i.0)).collect();
            let json = crate::digest::canonical_json(&node.op, "op")?;
            let hex = digests[id.0].trim_start_matches("sha256:");
            out.push_str(&format!(
                "n{} {} {} [{}] {}\n",
                id.0,
                &hex[..12.min(hex.len())],
                kind,
                inputs.join(","),
                String::from_utf8_lossy(&json)
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::op::*;

    fn image(def: &mut Definition) -> NodeId {
        def.push(Node {
            op: Op::Source(SourceOp::Image {
                reference: "docker.io/library/busybox:latest".into(),
                digest: None,
                platform: Platform::host(),
            }),
            inputs: vec![],
            meta: Meta::default(),
        })
        .unwrap()
    }

    fn exec(def: &mut Definition, input: NodeId, cmd: &str, desc: &str) -> NodeId {
        def.push(Node {
            op: Op::Exec(ExecOp {
                args: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                user: String::new(),
                network: NetworkMode::Default,
                security: SecurityMode::Sandbox,
                mounts: vec![Mount {
                    target: "/".into(),
                    input: Some(0),
                    kind: MountKind::Bind {
                        source: "/".into(),
                        readonly: false,
                    },
                }],
                proxy_env: vec![format!("HTTP_PROXY={desc}")],
                run_options: Default::default(),
                platform: None,
                hostname: String::new(),
            }),
            inputs: vec![input],
            meta: Meta {
                description: desc.into(),
                ..Meta::default()
            },
        })
        .unwrap()
    }

    #[test]
    fn digest_ignores_metadata_and_proxy_env_but_not_the_command() {
        let mut a = Definition::new();
        let i = image(&mut a);
        let ra = exec(&mut a, i, "echo hi", "first");
        let mut b = Definition::new();
        let i = image(&mut b);
        let rb = exec(&mut b, i, "echo hi", "second description");
        assert_eq!(a.digests().unwrap()[ra.0], b.digests().unwrap()[rb.0]);
        let mut c = Definition::new();
        let i = image(&mut c);
        let rc = exec(&mut c, i, "echo ho", "first");
        assert_ne!(a.digests().unwrap()[ra.0], c.digests().unwrap()[rc.0]);
    }

    #[test]
    fn hostname_is_keyed_only_when_set() {
        let mut a = Definition::new();
        let i = image(&mut a);
        let r = exec(&mut a, i, "uname -n", "");
        let unset = crate::digest::canonical_json(&a.nodes[r.0].op, "op").unwrap();
        assert!(!String::from_utf8_lossy(&unset).contains("hostname"));
        let before = a.digests().unwrap()[r.0].clone();
        if let Op::Exec(e) = &mut a.nodes[r.0].op {
            e.hostname = "foo".into();
        }
        assert_ne!(a.digests().unwrap()[r.0], before);
    }

    #[test]
    fn digest_covers_inputs() {
        let mut a = Definition::new();
        let i = image(&mut a);
        let r1 = exec(&mut a, i, "one", "");
        let r2 = exec(&mut a, r1, "two", "");
        let mut b = Definition::new();
        let i = image(&mut b);
        let s1 = exec(&mut b, i, "uno", "");
        let s2 = exec(&mut b, s1, "two", "");
        assert_ne!(a.digests().unwrap()[r2.0], b.digests().unwrap()[s2.0]);
    }

    #[test]
    fn push_rejects_forward_references_and_bad_mount_inputs() {
        let mut d = Definition::new();
        let bad = Node {
            op: Op::Merge,
            inputs: vec![NodeId(0)],
            meta: Meta::default(),
        };
        assert!(d.push(bad).is_err());
        let i = image(&mut d);
        let mut node = d.nodes[0].clone();
        node.op = Op::Exec(ExecOp {
            args: vec![],
            env: vec![],
            cwd: "/".into(),
            user: String::new(),
            network: NetworkMode::None,
            security: SecurityMode::Sandbox,
            mounts: vec![Mount {
                target: "/".into(),
                input: Some(3),
                kind: MountKind::Tmpfs { size: None },
            }],
            proxy_env: vec![],
            run_options: Default::default(),
            platform: None,
            hostname: String::new(),
        });
        node.inputs = vec![i];
        assert!(d.push(node).is_err());
    }

    #[test]
    fn dump_lists_only_reachable_nodes_in_order() {
        let mut d = Definition::new();
        let i = image(&mut d);
        let _unused = exec(&mut d, i, "unused", "");
        let r = exec(&mut d, i, "used", "");
        let text = d.dump(r).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("n0 ") && lines[0].contains(" image [] "));
        assert!(lines[1].starts_with("n2 ") && lines[1].contains(" exec [n0] "));
        assert!(lines[1].contains("\"used\""));
        assert!(!text.contains("HTTP_PROXY"));
    }
}
