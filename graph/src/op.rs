//! Op types: the vertices of the build graph.
//!
//! Paths inside ops are absolute, cleaned, slash-separated paths within a rootfs. Fields marked
//! `#[serde(skip)]` (proxy env) are deliberately outside the definition digest.

use serde::{Deserialize, Serialize};

use crate::digest::sha256_digest;
use crate::GraphError;

/// Index of a node inside its [`Definition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub usize);

/// A build graph. Nodes are stored in topological order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub nodes: Vec<Node>,
}

/// One vertex: an op, the nodes it reads, and metadata outside its identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<NodeId>,
    #[serde(skip)]
    pub meta: Meta,
}

/// Metadata that never enters a digest or cache key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Progress name, e.g. `[build 2/4] RUN make`.
    pub description: String,
    /// Stage name (or index as text) the node was lowered from.
    pub stage: Option<String>,
    /// 1-based Dockerfile line range `(start, end)` of the instruction, if any.
    pub lines: Option<(u32, u32)>,
    /// Do not look this node up in the cache (still store its result). `--no-cache`.
    pub ignore_cache: bool,
}

/// The operation a node performs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    Source(SourceOp),
    Exec(ExecOp),
    File(FileOp),
    /// Stack the inputs' layer chains; later inputs win per path.
    Merge,
}

/// A root vertex that imports content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum SourceOp {
    /// The empty filesystem.
    Scratch,
    /// A registry image. `reference` is fully normalised (`docker.io/library/busybox:latest`);
    /// `digest` is the resolved manifest digest (`sha256:…`) when known at lowering time.
    Image {
        reference: String,
        digest: Option<String>,
        platform: Platform,
    },
    /// A local directory handed to the build (`context` or a named build context).
    /// `exclude` holds `.dockerignore` patterns; the solver applies them.
    Local { name: String, exclude: Vec<String> },
    /// A file fetched over HTTP(S).
    Http {
        url: String,
        checksum: Option<String>,
        filename: Option<String>,
    },
    /// A git repository at a ref.
    Git {
        remote: String,
        reference: Option<String>,
        keep_git_dir: bool,
        /// `ADD --checksum=<commit>`: the commit the reference must resolve to. Omitted from
        /// the encoding when absent, so existing digests are unchanged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checksum: Option<String>,
    },
}

/// Target platform of an image or op (the one type, shared with `oci`).
pub use rbuild_platform::Platform;

/// Network mode of a RUN step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// The build's default network (host network unless an isolated one is configured).
    #[default]
    Default,
    /// A fresh network namespace with only loopback.
    None,
    /// The host's network namespace.
    Host,
}

/// Security mode of a RUN step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    #[default]
    Sandbox,
    Insecure,
}

/// Run a process. `mounts[0]` is always the root filesystem (`target == "/"`), read-write,
/// from `inputs[mounts[0].input]` (or scratch when `input` is `None`); its changes are the
/// op's output layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecOp {
    pub args: Vec<String>,
    /// `KEY=VALUE`, in declaration order. Includes ARG values visible to the step.
    pub env: Vec<String>,
    pub cwd: String,
    /// `user[:group]` as written (names resolved in the rootfs at run time); empty = root.
    pub user: String,
    pub network: NetworkMode,
    pub security: SecurityMode,
    pub mounts: Vec<Mount>,
    /// Proxy variables (`HTTP_PROXY` …): passed to the process, never part of the digest.
    #[serde(skip)]
    pub proxy_env: Vec<String>,
    /// Build-wide sandbox settings (`--add-host`, `--shm-size`, `--ulimit`). Omitted from the
    /// encoding when empty, so existing digests are unchanged.
    #[serde(default, skip_serializing_if = "RunOptions::is_empty")]
    pub run_options: RunOptions,
    /// The platform the process runs as (its stage's: the base image's, or the target's for
    /// scratch), so two platforms never share a step's result, as BuildKit keys `Op.platform`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// The sandbox hostname (`BUILDKIT_SANDBOX_HOSTNAME`); empty = the build's default
    /// (`buildkitsandbox`). Part of the key like BuildKit's `Meta.hostname`, omitted from the
    /// encoding when empty so existing digests are unchanged.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
}

/// Sandbox settings that BuildKit keeps in an exec op's `Meta` (and so in its cache key): extra
/// `/etc/hosts` entries (names only: BuildKit clears the addresses from the cache map), the
/// `/dev/shm` size and rlimits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOptions {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<ExtraHost>,
    /// Size of `/dev/shm` in bytes (`None`: 64 MiB, Docker's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<Ulimit>,
}

impl RunOptions {
    /// True when nothing is set (the op encodes as before these options existed).
    pub fn is_empty(&self) -> bool {
        self.extra_hosts.is_empty() && self.shm_size.is_none() && self.ulimits.is_empty()
    }
}

/// An `/etc/hosts` entry of a RUN step (`--add-host host:ip`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraHost {
    pub host: String,
    /// The address: given to the step, never part of the digest or cache key (as in BuildKit).
    #[serde(skip)]
    pub ip: String,
}

/// A resource limit of a RUN step (`--ulimit nofile=1024:2048`); `-1` means unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// `nofile`, `nproc`, … (Docker's names).
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// One mount of an exec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path inside the container.
    pub target: String,
    /// Index into the node's `inputs`, or `None` for scratch / no input.
    pub input: Option<usize>,
    pub kind: MountKind,
}

/// Sharing mode of a cache mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheSharing {
    #[default]
    Shared,
    Private,
    Locked,
}

/// The kinds of mount a RUN step can have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MountKind {
    /// `source` is a path inside the input.
    Bind {
        source: String,
        readonly: bool,
    },
    Cache {
        id: String,
        sharing: CacheSharing,
        source: String,
        readonly: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Tmpfs {
        size: Option<u64>,
    },
    Secret {
        id: String,
        /// Expose as this env var instead of (or besides) a file.
        env: Option<String>,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Ssh {
        id: String,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// Filesystem edits without a container. The op's base is `inputs[dest_input]` (scratch when
/// `None`); actions apply in order; the changes form one output layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileOp {
    pub dest_input: Option<usize>,
    pub actions: Vec<FileAction>,
}

/// Owner of created files: user and optional group, by id or by name (names are resolved
/// against the destination's `/etc/passwd` and `/etc/group`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub user: IdSpec,
    pub group: Option<IdSpec>,
}

/// A user or group given by number or by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdSpec {
    Id(u32),
    Name(String),
}

/// `--chmod` value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Chmod {
    Octal(u32),
    /// Symbolic form such as `u+x,g-w` (applied per file at copy time).
    Symbolic(String),
}

/// One file action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum FileAction {
    Copy(CopyAction),
    Mkdir {
        path: String,
        mode: u32,
        make_parents: bool,
        owner: Option<Owner>,
    },
    Mkfile {
        path: String,
        mode: u32,
        data: Vec<u8>,
        owner: Option<Owner>,
    },
    Rm {
        path: String,
        allow_not_found: bool,
        allow_wildcard: bool,
    },
    Symlink {
        target: String,
        link: String,
        owner: Option<Owner>,
    },
}

/// Copy `src` (a path or wildcard pattern inside `inputs[src_input]`) to `dest`.
///
/// Docker semantics: when `dest` ends in `/` (or several sources are copied) it is a
/// directory; a directory source copies its contents when `dir_copy_contents`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyAction {
    pub src_input: usize,
    pub src: String,
    pub dest: String,
    pub owner: Option<Owner>,
    pub mode: Option<Chmod>,
    pub follow_symlinks: bool,
    pub dir_copy_contents: bool,
    pub attempt_unpack: bool,
    pub create_dest_path: bool,
    pub allow_wildcard: bool,
    pub allow_empty_wildcard: bool,
    pub exclude: Vec<String>,
    /// `COPY --parents`: recreate each source's path (below a `/./` pivot, if any) under
    /// `dest`. Omitted from the encoding when false, so existing digests are unchanged.
    #[serde(default, skip_serializing_if = "is_false")]
    pub parents: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Definition {
    /// Empty definition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a node and return its id. Inputs must refer to earlier nodes.
    pub fn push(&mut self, node: Node) -> Result<NodeId, GraphError> {
        let id = self.nodes.len();
        for input in &node.inputs {
            if input.0 >= id {
                return Err(GraphError::BadInput {
                    node: id,
                    input: input.0,
                });
            }
        }
        check_input_indexes(id, &node)?;
        self.nodes.push(node);
        Ok(NodeId(id))
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> Result<&Node, GraphError> {
        self.nodes.get(id.0).ok_or(GraphError::NoSuchNode(id.0))
    }

    /// Definition digests of every node, in node order. Each covers the op and its inputs'
    /// digests (a Merkle DAG), never metadata.
    pub fn digests(&self) -> Result<Vec<String>, GraphError> {
        let mut out: Vec<String> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let inputs: Vec<&str> = node.inputs.iter().map(|i| out[i.0].as_str()).collect();
            let op = crate::digest::canonical_json(&node.op, "op")?;
            let mut buf = Vec::with_capacity(op.len() + 80 * inputs.len());
            buf.extend_from_slice(b"rbuild-node-v1\n");
            buf.extend_from_slice(&op);
            for i in inputs {
                buf.push(b'\n');
                buf.extend_from_slice(i.as_bytes());
            }
            out.push(sha256_digest(&buf));
        }
        Ok(out)
    }

    /// Ids of the nodes reachable from `root` (including it), in topological order.
    pub fn reachable(&self, root: NodeId) -> Result<Vec<NodeId>, GraphError> {
        if root.0 >= self.nodes.len() {
            return Err(GraphError::NoSuchNode(root.0));
        }
        let mut seen = vec![false; self.nodes.len()];
        let mut stack = vec![root];
        while let Some(n) = stack.pop() {
            if seen[n.0] {
                continue;
            }
            seen[n.0] = true;
            stack.extend(self.nodes[n.0].inputs.iter().copied());
        }
        Ok((0..self.nodes.len())
            .filter(|i| seen[*i])
            .map(NodeId)
            .collect())
    }
}

fn check_input_indexes(id: usize, node: &Node) -> Result<(), GraphError> {
    let len = node.inputs.len();
    let check = |what: &'static str, index: usize| {
        if index >= len {
            Err(GraphError::BadInputIndex {
                node: id,
                what,
                index,
                len,
            })
        } else {
            Ok(())
        }
    };
    match &node.op {
        Op::Exec(e) => {
            for m in &e.mounts {
                if let Some(i) = m.input {
                    check("mount", i)?;
                }
            }
        }
        Op::File(f) => {
            if let Some(i) = f.dest_input {
                check("dest_input", i)?;
            }
            for a in &f.actions {
                if let FileAction::Copy(c) = a {
                    check("copy source", c.src_input)?;
                }
            }
        }
        Op::Source(_) | Op::Merge => {}
    }
    Ok(())
}
