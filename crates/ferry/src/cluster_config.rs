//! `[cluster]`: a node of a replicated cluster (issue #12). Absent: a single node, exactly as
//! before (no Raft, no internal port).

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// `[cluster]` (flags `--node-id`, `--cluster-listen`, `--peers`, `--replication-factor`, env
/// `FERRY_NODE_ID`, `FERRY_CLUSTER_LISTEN`, `FERRY_PEERS`, `FERRY_REPLICATION_FACTOR`,
/// `FERRY_CLUSTER_SECRET`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id, one of `peers` (1, 2, 3, ...).
    pub node_id: u64,
    /// Address of the internal gRPC API (Raft, forwarding): never the public ports.
    pub listen: String,
    /// Every node of the cluster, this one included: `"ID=HOST:PORT"` (the other nodes' `listen`,
    /// as reachable from here).
    pub peers: Vec<String>,
    /// Replicas per shard. This version places every shard on every node, so it must equal the
    /// number of peers (1 or 3 in practice; a 5-node cluster with 3 replicas is the next step).
    pub replication_factor: usize,
    /// Names the cluster: message ids carry a space derived from it (ids of two clusters with
    /// different names never collide). Fixed when the cluster is created.
    pub cluster_id: String,
    /// Shared secret of the internal API (header `x-ferry-cluster-secret`), also the key the
    /// shards' encryption identities are derived from. Prefer the env var. Unset: the internal
    /// API is unauthenticated (loopback and tests only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// How long a write waits for its shard to have a leader before it fails with 1011.
    pub leader_wait_ms: u64,
    /// Raft heartbeat interval.
    pub heartbeat_interval_ms: u64,
    /// Raft election timeout range: a follower that heard nothing from its leader for a random
    /// time in [min, max) (plus the leader's lease) starts an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Group commits of one shard proposed and not yet committed, at most (pipelining).
    pub max_in_flight: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: 0,
            listen: "127.0.0.1:7100".into(),
            peers: Vec::new(),
            replication_factor: 3,
            cluster_id: "ferry".into(),
            secret: None,
            leader_wait_ms: 3_000,
            heartbeat_interval_ms: 200,
            election_timeout_min_ms: 800,
            election_timeout_max_ms: 1_400,
            max_in_flight: 4,
        }
    }
}

impl ClusterConfig {
    /// `peers` as id → address.
    pub fn peer_map(&self) -> anyhow::Result<BTreeMap<u64, String>> {
        let mut map = BTreeMap::new();
        for p in &self.peers {
            let (id, addr) = p
                .split_once('=')
                .with_context(|| format!("cluster.peers entry `{p}`: expected ID=HOST:PORT, e.g. 2=10.0.0.2:7100"))?;
            let id: u64 = id
                .trim()
                .parse()
                .ok()
                .filter(|id| *id > 0)
                .with_context(|| format!("cluster.peers entry `{p}`: the id must be a number from 1"))?;
            let addr = addr.trim();
            if addr.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
                bail!("cluster.peers entry `{p}`: expected ID=HOST:PORT, e.g. 2=10.0.0.2:7100");
            }
            if map.values().any(|a: &String| a == addr) {
                bail!("cluster.peers: address {addr} is given twice: expected one address per node");
            }
            if map.insert(id, addr.to_owned()).is_some() {
                bail!("cluster.peers: node id {id} is given twice: expected unique ids");
            }
        }
        Ok(map)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let peers = self.peer_map()?;
        if self.node_id == 0 {
            bail!("cluster.node_id is not set (--node-id, FERRY_NODE_ID): expected this node's id from cluster.peers");
        }
        if peers.is_empty() {
            bail!(
                "cluster.peers is empty (--peers, FERRY_PEERS): expected every node, this one included, as ID=HOST:PORT"
            );
        }
        if !peers.contains_key(&self.node_id) {
            bail!(
                "cluster.node_id {} is not in cluster.peers ({}): expected this node among the peers",
                self.node_id,
                self.peers.join(", ")
            );
        }
        self.listen
            .parse::<std::net::SocketAddr>()
            .with_context(|| format!("cluster.listen `{}`: expected HOST:PORT, e.g. 0.0.0.0:7100", self.listen))?;
        if self.replication_factor != peers.len() {
            bail!(
                "cluster.replication_factor = {} with {} peers: this version places every shard on every node, so \
                 expected replication_factor = {} (the number of peers)",
                self.replication_factor,
                peers.len(),
                peers.len()
            );
        }
        if self.cluster_id.trim().is_empty() {
            bail!("cluster.cluster_id is empty: expected a name for the cluster, e.g. \"ferry-prod\"");
        }
        if self.heartbeat_interval_ms == 0
            || self.election_timeout_min_ms <= self.heartbeat_interval_ms
            || self.election_timeout_max_ms <= self.election_timeout_min_ms
        {
            bail!(
                "cluster timeouts: expected 0 < heartbeat_interval_ms ({}) < election_timeout_min_ms ({}) < \
                 election_timeout_max_ms ({})",
                self.heartbeat_interval_ms,
                self.election_timeout_min_ms,
                self.election_timeout_max_ms
            );
        }
        if self.leader_wait_ms == 0 || self.max_in_flight == 0 {
            bail!("cluster.leader_wait_ms and cluster.max_in_flight must be at least 1");
        }
        Ok(())
    }

    /// The Raft timing and transport deadlines of every group of this node.
    pub fn timeouts(&self) -> ferry_cluster::RaftTimeouts {
        ferry_cluster::RaftTimeouts {
            heartbeat_ms: self.heartbeat_interval_ms,
            election_timeout_min_ms: self.election_timeout_min_ms,
            election_timeout_max_ms: self.election_timeout_max_ms,
            ..ferry_cluster::RaftTimeouts::default()
        }
    }

    /// Shard `shard`'s id space: the same on every node of the cluster, different across
    /// cluster ids.
    pub fn id_space(&self, shard: u16) -> u64 {
        let digest = self.derive(b"ferry id space", shard);
        u64::from_be_bytes(digest[..8].try_into().expect("32 bytes"))
    }

    /// Shard `shard`'s encryption identity secret: the same on every replica (sessions survive a
    /// change of leader), derived from `secret` (or, without one, from the cluster id alone).
    pub fn identity_key(&self, shard: u16) -> [u8; 32] {
        self.derive(b"ferry shard identity", shard)
    }

    fn derive(&self, purpose: &[u8], shard: u16) -> [u8; 32] {
        use hmac::{KeyInit, Mac};
        let key = self.secret.as_deref().unwrap_or("").as_bytes();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
        mac.update(purpose);
        mac.update(&[0]);
        mac.update(self.cluster_id.as_bytes());
        mac.update(&[0]);
        mac.update(&shard.to_be_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> ClusterConfig {
        ClusterConfig {
            node_id: 2,
            peers: vec!["1=127.0.0.1:7101".into(), "2=127.0.0.1:7102".into(), "3=127.0.0.1:7103".into()],
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn a_three_node_config_is_valid_and_builds_its_raft_config() {
        let c = three();
        c.validate().unwrap();
        let raft = c.timeouts().openraft_config(&c.cluster_id).unwrap();
        assert_eq!((raft.heartbeat_interval, raft.election_timeout_min), (200, 800));
    }

    #[test]
    fn bad_peers_and_ids_are_refused_with_what_was_expected() {
        type Change = Box<dyn Fn(&mut ClusterConfig)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.node_id = 0), "cluster.node_id is not set"),
            (Box::new(|c| c.node_id = 9), "is not in cluster.peers"),
            (Box::new(|c| c.peers[1] = "2=127.0.0.1:7101".into()), "given twice"),
            (Box::new(|c| c.peers[1] = "1=127.0.0.1:7109".into()), "node id 1 is given twice"),
            (Box::new(|c| c.peers[1] = "127.0.0.1:7102".into()), "expected ID=HOST:PORT"),
            (Box::new(|c| c.peers[1] = "x=127.0.0.1:7102".into()), "the id must be a number"),
            (Box::new(|c| c.replication_factor = 2), "expected replication_factor = 3"),
            (Box::new(|c| c.election_timeout_min_ms = 100), "heartbeat_interval_ms"),
            (Box::new(|c| c.listen = "nowhere".into()), "cluster.listen"),
        ];
        for (change, expected) in cases {
            let mut c = three();
            change(&mut c);
            let e = format!("{:#}", c.validate().unwrap_err());
            assert!(e.contains(expected), "{e:?} should say {expected:?}");
        }
    }

    #[test]
    fn identities_are_stable_per_cluster_and_shard() {
        let a = three();
        let b = ClusterConfig { node_id: 3, ..three() };
        assert_eq!(a.id_space(4), b.id_space(4), "every node derives the same id space");
        assert_eq!(a.identity_key(4), b.identity_key(4));
        assert_ne!(a.id_space(4), a.id_space(5));
        let other = ClusterConfig { cluster_id: "other".into(), ..three() };
        assert_ne!(a.id_space(4), other.id_space(4));
        let secret = ClusterConfig { secret: Some("s3cret".into()), ..three() };
        assert_ne!(a.identity_key(4), secret.identity_key(4));
    }
}
