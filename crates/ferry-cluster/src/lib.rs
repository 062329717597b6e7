//! ferry's cluster transport (issue #12, `docs/replication-design.md` §4): the internal gRPC
//! service `ferry.internal.v1.Cluster` (`proto/ferry/internal/v1/cluster.proto`) that carries every
//! shard group's Raft traffic between the nodes of a cluster.
//!
//! - **Server** ([`serve`]): one per node, on the cluster listen address. It dispatches on a
//!   [`Registry`] (`group -> (Raft, snapshot root)`), filled as the node opens its shards; a
//!   group that is not (yet) registered is answered `UNAVAILABLE`, never a panic. Forwarded op
//!   batches go to the node's [`ForwardTarget`].
//! - **Clients**: one [`Peers`] per node holds one lazily connected `tonic` channel per peer
//!   address, shared by every group (HTTP/2 multiplexes them). [`GroupNetwork`] is a group's
//!   `RaftNetworkFactory` over it; [`ClusterForwarder`] implements `ferry_shard::raft::Forwarder`.
//! - **Snapshots**: a group's snapshot (a RocksDB checkpoint directory) is streamed file by file in
//!   chunks of at most 1 MiB ([`network`], [`snapshot`]); every send races openraft's `cancel` and
//!   an idle deadline per chunk.
//! - [`detect_rejoin`] (design §6): a replica that comes up empty while a member of its group
//!   holds the group's log (a wiped disk) is *rejoining*: it neither votes nor campaigns until it
//!   applied the commit index of the first leader that replicated to it ([`rejoin`]).
//! - [`bootstrap`] (only the lowest member initializes a group, and only when every member
//!   answered `Status` "not initialized"), [`placement`] (which nodes host a shard) and
//!   [`RaftTimeouts`] (the design's Raft timing, building a validated `openraft::Config`).
//! - **Secret**: an optional shared `cluster.secret`, sent on every call as the metadata
//!   `x-ferry-cluster-secret` and compared in constant time by the server (missing or wrong:
//!   `UNAUTHENTICATED`).
//!
//! How a node wires it:
//!
//! ```ignore
//! let timeouts = RaftTimeouts::default();
//! let config = timeouts.openraft_config(&cluster_id)?;         // shared by every group
//! let peers = Peers::new(secret.as_deref())?;                  // once per node
//! let registry = Registry::new();
//! let server =
//!     serve(listener, node_id, registry.clone(), Some(forward_target), secret.as_deref(), &timeouts).await?;
//! for shard in hosted_shards {
//!     let net = GroupNetwork::new(shard, node_id, peers.clone(), timeouts.clone());
//!     let raft = Raft::new(node_id, config.clone(), net, log, sm).await?;
//!     registry.register(shard, raft.clone(), snapshot_root);
//!     tokio::spawn(detect_rejoin(shard, raft.clone(), members.clone(), node_id, peers.clone(), registry.clone(), cancel.clone()));
//!     tokio::spawn(bootstrap(shard, raft, members.clone(), node_id, peers.clone(), cancel));
//! }
//! let forwarder = ClusterForwarder::new(peers, addrs_by_node_id, timeouts.forward_timeout);
//! ```

pub mod bootstrap;
pub mod config;
pub mod forward;
pub mod network;
pub mod placement;
pub mod registry;
pub mod rejoin;
mod secret;
pub mod server;
pub mod snapshot;

/// Generated code of `proto/ferry/internal/v1/cluster.proto`.
pub mod pb {
    tonic::include_proto!("ferry.internal.v1");
}

pub use bootstrap::{BootstrapError, BootstrapOutcome, bootstrap, bootstrap_from, node_status};
pub use config::RaftTimeouts;
pub use forward::{ClusterForwarder, ForwardTarget};
pub use network::{GroupNetwork, PeerClient, Peers};
pub use placement::placement;
pub use registry::{Group, Registry, RejoinMode, RejoinState};
pub use rejoin::{RejoinOutcome, detect_rejoin};
pub use server::{ClusterServer, serve};

/// The metadata key carrying the cluster's shared secret.
pub const SECRET_HEADER: &str = "x-ferry-cluster-secret";

/// Largest gRPC message either side sends or accepts (an AppendEntries of up to
/// `max_payload_entries` group commits; a snapshot chunk is at most 1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Why the transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.secret: {0}")]
    Secret(String),
    #[error("the cluster server: {0}")]
    Server(String),
    #[error("raft config: {0}")]
    Config(Box<openraft::ConfigError>),
}
