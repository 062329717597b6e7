//! Raft timing and transport deadlines, shared by the node and the tests (design §6).

use std::sync::Arc;
use std::time::Duration;

use openraft::SnapshotPolicy;

use crate::ClusterError;

/// Raft timing of every shard group and the transport's own deadlines. [`Default`] is the
/// design's (§6): heartbeat 200 ms, election timeout 800–1400 ms, 64 entries per AppendEntries,
/// a snapshot every 20 000 entries keeping 5 000 behind it, purges of 256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftTimeouts {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub max_payload_entries: u64,
    /// Snapshot policy `LogsSinceLast(n)`.
    pub snapshot_logs_since_last: u64,
    pub max_in_snapshot_log_to_keep: u64,
    pub purge_batch_size: u64,
    /// Longest wait for one snapshot frame to be taken by the stream (sender) or to arrive
    /// (receiver): a stalled peer fails the transfer instead of holding it forever (§8).
    pub snapshot_chunk_idle: Duration,
    /// Longest wait for the receiver's answer once the last chunk is sent (it installs the
    /// snapshot before answering).
    pub snapshot_install: Duration,
    /// Deadline of one forwarded batch (its end is `ForwardError::Indeterminate`).
    pub forward_timeout: Duration,
}

impl Default for RaftTimeouts {
    fn default() -> Self {
        RaftTimeouts {
            heartbeat_ms: 200,
            election_timeout_min_ms: 800,
            election_timeout_max_ms: 1400,
            max_payload_entries: 64,
            snapshot_logs_since_last: 20_000,
            max_in_snapshot_log_to_keep: 5_000,
            purge_batch_size: 256,
            snapshot_chunk_idle: Duration::from_secs(30),
            snapshot_install: Duration::from_secs(300),
            forward_timeout: Duration::from_secs(10),
        }
    }
}

impl RaftTimeouts {
    /// The validated `openraft::Config` of every group (`cluster_name`: the cluster id).
    /// `replication_lag_threshold` is above the snapshot interval (design §2).
    pub fn openraft_config(&self, cluster_name: &str) -> Result<Arc<openraft::Config>, ClusterError> {
        let default = openraft::Config::default();
        let config = openraft::Config {
            cluster_name: cluster_name.to_owned(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            max_payload_entries: self.max_payload_entries,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.max_in_snapshot_log_to_keep,
            purge_batch_size: self.purge_batch_size,
            replication_lag_threshold: default.replication_lag_threshold.max(self.snapshot_logs_since_last + 1),
            ..default
        };
        Ok(Arc::new(config.validate().map_err(|e| ClusterError::Config(Box::new(e)))?))
    }
}

#[cfg(test)]
mod tests {
    use super::RaftTimeouts;

    #[test]
    fn the_defaults_build_a_valid_config_and_a_bad_election_window_is_refused() {
        let config = RaftTimeouts::default().openraft_config("c1").unwrap();
        assert_eq!(
            (config.heartbeat_interval, config.election_timeout_min, config.election_timeout_max),
            (200, 800, 1400)
        );
        assert_eq!(config.max_payload_entries, 64);
        assert_eq!(config.snapshot_policy, openraft::SnapshotPolicy::LogsSinceLast(20_000));
        assert_eq!((config.max_in_snapshot_log_to_keep, config.purge_batch_size), (5_000, 256));
        assert!(config.replication_lag_threshold > 20_000);
        let bad =
            RaftTimeouts { election_timeout_min_ms: 1400, election_timeout_max_ms: 800, ..RaftTimeouts::default() };
        assert!(bad.openraft_config("c1").is_err(), "min above max is refused");
        let bad = RaftTimeouts { heartbeat_ms: 900, ..RaftTimeouts::default() };
        assert!(bad.openraft_config("c1").is_err(), "a heartbeat above the election timeout is refused");
    }
}
