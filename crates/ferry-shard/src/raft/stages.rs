//! Per-stage timings of replicated writes, as Prometheus histograms (rendered as summaries by
//! ferry's recorder): which stage bounds a cluster's throughput (issue #12's benchmark reads them
//! from every node's `/metrics`, `benches/cluster.sh`). Labelled by shard; a node records the
//! stages it runs (the leader proposes, a follower forwards, every replica syncs its log and
//! applies).

use ferry_model::ShardId;
use metrics::Histogram;

/// Entry submitted (`client_write_ff`) → applied on this leader (commit on a majority + apply).
pub const PROPOSAL_SECONDS: &str = "ferry_raft_proposal_seconds";
/// Ops sent to the leader (`Forward`) → its answer back.
pub const FORWARD_SECONDS: &str = "ferry_raft_forward_seconds";
/// Messages (op weight) per proposed entry or forwarded batch.
pub const BATCH_MESSAGES: &str = "ferry_raft_batch_messages";
/// Time a batch waited for one of the `cluster.max_in_flight` slots.
pub const SLOT_WAIT_SECONDS: &str = "ferry_raft_slot_wait_seconds";
/// One WAL sync of the Raft log (the log thread's group commit).
pub const LOG_SYNC_SECONDS: &str = "ferry_raft_log_sync_seconds";
/// Appends (AppendEntries batches or proposals) made durable by one WAL sync.
pub const APPENDS_PER_SYNC: &str = "ferry_raft_appends_per_sync";
/// Applying a run of committed entries to the state machine (one unsynced write).
pub const APPLY_SECONDS: &str = "ferry_raft_apply_seconds";

/// Every stage name with its help text (for the exporter's HELP lines).
pub const DESCRIPTIONS: &[(&str, &str)] = &[
    (PROPOSAL_SECONDS, "Raft entry submitted to applied on the leader (commit on a majority, then apply)."),
    (FORWARD_SECONDS, "Ops forwarded to the shard's leader until its answer came back."),
    (BATCH_MESSAGES, "Messages per proposed Raft entry or forwarded batch."),
    (SLOT_WAIT_SECONDS, "Time a batch waited for an in-flight slot (cluster.max_in_flight)."),
    (LOG_SYNC_SECONDS, "One WAL sync of the shard's Raft log."),
    (APPENDS_PER_SYNC, "Raft log appends made durable by one WAL sync."),
    (APPLY_SECONDS, "Applying committed entries to the shard's state machine."),
];

/// The proposer's stages of one shard.
#[derive(Clone)]
pub(crate) struct ProposerStages {
    pub(crate) proposal: Histogram,
    pub(crate) forward: Histogram,
    pub(crate) batch: Histogram,
    pub(crate) slot_wait: Histogram,
}

impl ProposerStages {
    pub(crate) fn new(shard: ShardId) -> ProposerStages {
        let label = shard.0.to_string();
        ProposerStages {
            proposal: metrics::histogram!(PROPOSAL_SECONDS, "shard" => label.clone()),
            forward: metrics::histogram!(FORWARD_SECONDS, "shard" => label.clone()),
            batch: metrics::histogram!(BATCH_MESSAGES, "shard" => label.clone()),
            slot_wait: metrics::histogram!(SLOT_WAIT_SECONDS, "shard" => label),
        }
    }
}

/// The log thread's stages of one shard.
pub(crate) struct LogStages {
    pub(crate) sync: Histogram,
    pub(crate) appends_per_sync: Histogram,
}

impl LogStages {
    pub(crate) fn new(shard: u16) -> LogStages {
        let label = shard.to_string();
        LogStages {
            sync: metrics::histogram!(LOG_SYNC_SECONDS, "shard" => label.clone()),
            appends_per_sync: metrics::histogram!(APPENDS_PER_SYNC, "shard" => label),
        }
    }
}

/// The state machine's apply stage of one shard.
pub(crate) fn apply_histogram(shard: u16) -> Histogram {
    metrics::histogram!(APPLY_SECONDS, "shard" => shard.to_string())
}
