//! A cluster node (`[cluster]`, issue #12): the internal server, every shard opened as a replica
//! of its Raft group, and the groups' bootstrap. Single-node mode never comes here.
//!
//! Order matters: the internal listener is bound and served first (the other nodes' Raft calls
//! and `Status` probes must find it while this node's groups start: an unregistered group is
//! answered `UNAVAILABLE` and retried), then the shards open and register, then each group is
//! bootstrapped (only its first member ever initializes it, and only when every member said it is
//! not initialized: `ferry_cluster::bootstrap`). Every group also runs `ferry_cluster::detect_rejoin`: a
//! replica that came up empty while a peer holds the group's log (a wiped disk) refuses votes until
//! it caught up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use ferry_cluster::{ClusterForwarder, ClusterServer, ForwardTarget, GroupNetwork, Peers, Registry};
use ferry_coordinator::Coordinator;
use ferry_shard::raft::{ForwardError, ForwardFuture, PeerNode};
use ferry_shard::{Replication, Shard};
use tokio::sync::watch;

use crate::cluster_config::ClusterConfig;
use crate::config::FerryConfig;

/// The running cluster part of a node.
pub struct ClusterNode {
    server: ClusterServer,
    stop_bootstrap: watch::Sender<bool>,
    shards: Vec<Arc<Shard>>,
}

impl ClusterNode {
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops every group of this node, then the internal server. After the coordinator's close
    /// (which lets the proposers finish what was submitted).
    pub async fn shutdown(self) {
        let _ = self.stop_bootstrap.send(true);
        for shard in &self.shards {
            if let Some(raft) = shard.raft()
                && let Err(e) = raft.shutdown().await
            {
                tracing::warn!(shard = %shard.id(), error = %e, "raft group did not stop cleanly");
            }
        }
        if let Err(e) = self.server.shutdown().await {
            tracing::warn!(error = %e, "cluster server did not stop cleanly");
        }
    }
}

/// Serves forwarded batches with this node's shards (set once they are open).
struct Shards {
    node_id: u64,
    shards: OnceLock<Vec<Arc<Shard>>>,
}

impl ForwardTarget for Shards {
    fn handle(&self, shard: u16, body: Vec<u8>) -> ForwardFuture {
        match self.shards.get().and_then(|s| s.get(usize::from(shard))) {
            Some(s) => s.serve_forwarded(body),
            None => {
                let node = self.node_id;
                Box::pin(async move {
                    Err(ForwardError::Refused { node, detail: format!("shard {shard} is not open on node {node}") })
                })
            }
        }
    }
}

/// Opens the node's shards as replicas and starts the internal server and the bootstraps.
pub async fn open(config: &FerryConfig, cluster: &ClusterConfig) -> anyhow::Result<(Coordinator, ClusterNode)> {
    let node_id = cluster.node_id;
    let addrs = cluster.peer_map()?;
    let timeouts = cluster.timeouts();
    let raft_config =
        timeouts.openraft_config(&cluster.cluster_id).map_err(|e| anyhow::anyhow!("cluster timeouts: {e}"))?;
    if cluster.secret.is_none() {
        tracing::warn!("cluster.secret is not set: the internal API is unauthenticated (use one outside loopback)");
    }
    let secret = cluster.secret.as_deref();
    let peers = Peers::new(secret).map_err(|e| anyhow::anyhow!("cluster.secret: {e}"))?;
    let listener = tokio::net::TcpListener::bind(&cluster.listen)
        .await
        .with_context(|| format!("cannot listen on {} (cluster.listen)", cluster.listen))?;
    let registry = Registry::new();
    let target = Arc::new(Shards { node_id, shards: OnceLock::new() });
    let server = ferry_cluster::serve(listener, node_id, registry.clone(), Some(target.clone()), secret, &timeouts)
        .await
        .map_err(|e| anyhow::anyhow!("cluster server: {e}"))?;
    let forwarder = Arc::new(ClusterForwarder::new(peers.clone(), addrs.clone(), timeouts.forward_timeout));
    let snapshots = config.data_dir.join("snapshots");
    let snapshot_root = |i: u16| snapshots.join(format!("shard-{i:02}"));
    let coordinator =
        Coordinator::open_replicated(&config.coordinator(), ferry_model::clock::system(), |i| Replication {
            node_id,
            raft_config: raft_config.clone(),
            network: GroupNetwork::new(i, node_id, peers.clone(), timeouts.clone()),
            forwarder: forwarder.clone(),
            leader_wait: Duration::from_millis(cluster.leader_wait_ms),
            max_in_flight: cluster.max_in_flight,
            id_space: cluster.id_space(i),
            identity_key: cluster.identity_key(i),
            snapshot_root: snapshot_root(i),
        })
        .await
        .with_context(|| format!("cannot open data dir {}", config.data_dir.display()))?;
    let shards = coordinator.shards().to_vec();
    for shard in &shards {
        let raft = shard.raft().expect("a cluster node's shards are replicated").clone();
        registry.register(shard.id().0, raft, snapshot_root(shard.id().0));
    }
    let _ = target.shards.set(shards.clone());

    let sorted: Vec<u64> = addrs.keys().copied().collect();
    let (stop_bootstrap, stopped) = watch::channel(false);
    for shard in &shards {
        let i = shard.id().0;
        let placed = ferry_cluster::placement(i, &sorted, cluster.replication_factor);
        // The first placed node (shard s: the s-th node) initializes the group, so leaders start
        // spread over the nodes.
        let first = placed[0];
        let members: BTreeMap<u64, PeerNode> =
            placed.into_iter().map(|id| (id, PeerNode { addr: addrs[&id].clone() })).collect();
        let raft = shard.raft().expect("replicated").clone();
        let (rejoin_raft, rejoin_members, rejoin_peers) = (raft.clone(), members.clone(), peers.clone());
        let (registry, mut rejoin_stopped) = (registry.clone(), stopped.clone());
        tokio::spawn(async move {
            let cancel = async move {
                let _ = rejoin_stopped.wait_for(|s| *s).await;
            };
            match ferry_cluster::detect_rejoin(i, rejoin_raft, rejoin_members, node_id, rejoin_peers, registry, cancel)
                .await
            {
                Ok(outcome) => tracing::info!(shard = i, ?outcome, "raft group votes"),
                Err(e) => tracing::warn!(shard = i, error = %e, "raft group rejoin check stopped"),
            }
        });
        let peers = peers.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let cancel = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            match ferry_cluster::bootstrap_from(i, raft, members, first, node_id, peers, cancel).await {
                Ok(outcome) => tracing::info!(shard = i, ?outcome, "raft group bootstrap"),
                Err(e) => tracing::warn!(shard = i, error = %e, "raft group bootstrap stopped"),
            }
        });
    }
    tracing::info!(node_id, peers = ?cluster.peers, shards = shards.len(), "cluster node: shards are raft groups");
    Ok((coordinator, ClusterNode { server, stop_bootstrap, shards }))
}
