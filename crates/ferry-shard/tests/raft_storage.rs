//! The Raft storage of a shard replica (`ferry_shard::raft`): openraft's own storage test suite
//! on the log store and state machine, a reopen test (the log, the vote, the committed id and the
//! applied state come back from disk), and the round trip of the log entry encoding over every
//! kind of op.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use ferry_model::{MessageStatus, ShardId};
use ferry_shard::apply::{EntryOp, ShardEntry};
use ferry_shard::raft::{
    LogStore, OpReply, PeerNode, ShardRaft, ShardResponse, StateMachine, decode_entry, decode_response, encode_entry,
    encode_response,
};
use ferry_shard::storage::{EventRetention, StatusEvent, Store};
use ferry_shard::test_support::{message, resources};
use ferry_shard::{
    AppendOutcome, FailureReason, HeldAction, IdempotencyPlacement, IdempotencyRecord, InboundRecord, NewMessage,
    QueueRecord, ResolvedHeld, Settlement, Shard, ShardConfig, SharedResources, StatusRecord,
};
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, StorageError, Vote};
use proptest::prelude::*;

/// Creates (first time) or reopens the replica stores in `dir`: the shard database the way a node
/// creates it (`Shard::open`: meta, id space), then the bare store with its log and state machine.
fn open_replica(dir: &Path, res: &SharedResources) -> (LogStore, StateMachine) {
    let db = dir.join("db");
    if !db.exists() {
        let shard = Shard::open(&db, ShardId(0), 1, 9, res, &ShardConfig::default()).unwrap();
        shard.close();
        drop(shard);
    }
    let events = EventRetention { retention_ms: i64::MAX, webhook_floor: Arc::new(AtomicU64::new(u64::MAX)) };
    let store = Arc::new(Store::open(&db, 0, res, i64::MAX, events).unwrap());
    let log = LogStore::open(store.clone()).unwrap();
    let sm = StateMachine::open(store, ShardId(0), dir.join("snapshots")).unwrap();
    (log, sm)
}

struct Builder {
    res: SharedResources,
}

impl StoreBuilder<ShardRaft, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().unwrap();
        let (log, sm) = open_replica(dir.path(), &self.res);
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder { res: resources() }).unwrap();
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// A comparable form of a log entry (`ShardEntry` has no `PartialEq`: its encoding stands in).
fn comparable(e: &Entry<ShardRaft>) -> (LogId<u64>, String) {
    let payload = match &e.payload {
        EntryPayload::Blank => "blank".to_owned(),
        EntryPayload::Normal(d) => format!("normal {:?}", encode_entry(d)),
        EntryPayload::Membership(m) => format!("membership {m:?}"),
    };
    (e.log_id, payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_vote_committed_and_applied_state_come_back_after_a_reopen() {
    let res = resources();
    let dir = tempfile::tempdir().unwrap();
    let (mut log, mut sm) = open_replica(dir.path(), &res);
    let next_seq = sm.shard_state().next_seq;
    let append = ShardEntry {
        at_ms: 5_000,
        first_seq: next_seq,
        ops: vec![EntryOp::Append { messages: vec![message(1), message(2)] }],
    };
    let voters: BTreeSet<u64> = [1, 2, 3].into();
    let nodes: std::collections::BTreeMap<u64, PeerNode> =
        voters.iter().map(|id| (*id, PeerNode { addr: format!("127.0.0.1:71{id:02}") })).collect();
    let entries = vec![
        Entry::<ShardRaft> { log_id: log_id(1, 1), payload: EntryPayload::Blank },
        Entry { log_id: log_id(1, 2), payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)) },
        Entry { log_id: log_id(1, 3), payload: EntryPayload::Normal(append) },
    ];
    log.blocking_append(entries.clone()).await.unwrap();
    let vote = Vote::new(2, 1);
    log.save_vote(&vote).await.unwrap();
    log.save_committed(Some(log_id(1, 3))).await.unwrap();
    let replies = sm.apply(entries.clone()).await.unwrap();
    assert_eq!(replies.len(), 3, "one reply per entry: {replies:?}");
    let OpReply::Appended(appended) = &replies[2].ops[0] else { panic!("append reply: {:?}", replies[2]) };
    let seqs: Vec<u64> = appended.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, vec![next_seq, next_seq + 1]);
    assert_eq!(replies[2].next_seq, next_seq + 2);

    let log_state = log.get_log_state().await.unwrap();
    assert_eq!(log_state.last_log_id, Some(log_id(1, 3)));
    let applied = sm.applied_state().await.unwrap();
    assert_eq!(applied.0, Some(log_id(1, 3)));
    let shard_state = sm.shard_state();
    drop((log, sm));

    let (mut log, mut sm) = open_replica(dir.path(), &res);
    assert_eq!(log.get_log_state().await.unwrap(), log_state, "log state after the reopen");
    let read: Vec<_> = log.try_get_log_entries(0..).await.unwrap().iter().map(comparable).collect();
    let written: Vec<_> = entries.iter().map(comparable).collect();
    assert_eq!(read, written, "log entries after the reopen");
    assert_eq!(log.read_vote().await.unwrap(), Some(vote), "vote after the reopen");
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 3)), "committed after the reopen");
    assert_eq!(sm.applied_state().await.unwrap(), applied, "applied log id and membership after the reopen");
    assert_eq!(sm.shard_state(), shard_state, "shard state after the reopen");
    let store = sm.store();
    for outcome in appended {
        let queued = store.get_queued(outcome.seq).unwrap();
        assert!(queued.is_some(), "message {} is queued after the reopen", outcome.seq);
    }
}

// ---- the entry encoding ----

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9 ]{0,8}"
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..12)
}

fn seqs() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(any::<u64>(), 0..4)
}

fn queue_record() -> impl Strategy<Value = QueueRecord> {
    (text(), text(), any::<i64>(), any::<i64>(), bytes(), text(), any::<i64>()).prop_map(
        |(wa_id, sender, accepted_at_ms, expires_at_ms, payload, key, held_at_ms)| QueueRecord {
            wa_id,
            sender,
            message_type: "text".into(),
            accepted_at_ms,
            expires_at_ms,
            payload,
            biz_opaque_callback_data: "cb".into(),
            idempotency_key: key,
            held_at_ms,
        },
    )
}

fn status_record() -> impl Strategy<Value = StatusRecord> {
    (0u32..6, text(), any::<i64>(), prop::collection::vec((0u32..6, any::<i64>()), 0..3), any::<u32>(), text())
        .prop_map(|(status, wa_id, updated_at_ms, history, error_code, upstream)| StatusRecord {
            status,
            wa_id,
            updated_at_ms,
            history: history.into_iter().map(|(status, at_ms)| StatusEvent { status, at_ms }).collect(),
            error_code,
            upstream_message_id: upstream,
            ..StatusRecord::default()
        })
}

fn reason() -> impl Strategy<Value = FailureReason> {
    (any::<u32>(), text(), text()).prop_map(|(code, title, details)| FailureReason { code, title, details })
}

fn new_message() -> impl Strategy<Value = NewMessage> {
    let placement = prop_oneof![
        Just(None),
        (bytes(), bytes()).prop_map(|(key, payload_hash)| Some(IdempotencyPlacement::Here { key, payload_hash })),
        (any::<u16>(), bytes(), bytes()).prop_map(|(key_shard, key, payload_hash)| Some(
            IdempotencyPlacement::Elsewhere { key_shard, key, payload_hash }
        )),
    ];
    (queue_record(), placement, prop::option::of(text())).prop_map(|(record, idempotency, held_template)| NewMessage {
        record,
        idempotency,
        held_template,
    })
}

fn settlement() -> impl Strategy<Value = Settlement> {
    prop_oneof![
        (any::<u64>(), status_record(), any::<i64>()).prop_map(|(seq, message, at_ms)| Settlement::Sent {
            seq,
            message,
            at_ms
        }),
        (any::<u64>(), status_record(), any::<i64>(), reason())
            .prop_map(|(seq, message, at_ms, reason)| Settlement::Failed { seq, message, at_ms, reason }),
        (any::<u64>(), prop::sample::select(MessageStatus::ALL.to_vec()), any::<i64>())
            .prop_map(|(seq, status, at_ms)| Settlement::Receipt { seq, status, at_ms }),
        (text(), text(), text(), any::<i64>(), text(), text()).prop_map(|(id, from, to, at_ms, text_body, name)| {
            Settlement::Inbound(InboundRecord {
                id,
                from,
                to,
                at_ms,
                message_type: "text".into(),
                text_body,
                profile_name: name,
            })
        }),
    ]
}

fn entry_op() -> impl Strategy<Value = EntryOp> {
    let idempotency = (bytes(), text(), text(), bytes(), any::<i64>()).prop_map(|(key, id, wa_id, hash, at)| {
        (key, IdempotencyRecord { message_id: id, wa_id, payload_hash: hash, created_at_ms: at })
    });
    prop_oneof![
        prop::collection::vec(new_message(), 0..3).prop_map(|messages| EntryOp::Append { messages }),
        prop::collection::vec(idempotency, 0..3).prop_map(|entries| EntryOp::PutIdempotency { entries }),
        seqs().prop_map(|seqs| EntryOp::ClearIntents { seqs }),
        seqs().prop_map(|seqs| EntryOp::Remove { seqs }),
        (prop::collection::vec(settlement(), 0..4), prop::option::of(any::<u64>()))
            .prop_map(|(entries, low_watermark)| EntryOp::Settle { entries, low_watermark }),
        (seqs(), prop::option::of(reason()), any::<i64>()).prop_map(|(seqs, drop, at_ms)| EntryOp::ResolveHeld {
            seqs,
            action: drop.map_or(HeldAction::Release, HeldAction::Drop),
            at_ms
        }),
        any::<u64>().prop_map(|next| EntryOp::SetWebhookCursor { next }),
        prop::collection::vec((bytes(), bytes()), 0..3).prop_map(|entries| EntryOp::PutSessions { entries }),
        (seqs(), any::<i64>()).prop_map(|(seqs, at_ms)| EntryOp::MarkDispatched { seqs, at_ms }),
        seqs().prop_map(|seqs| EntryOp::ClearDispatched { seqs }),
    ]
}

/// Everything of an entry, compared through the full `Debug` of its ops (the entry's own `Debug`
/// is short on purpose).
fn full(e: &ShardEntry) -> String {
    format!("{} {} {:?}", e.at_ms, e.first_seq, e.ops)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_entry_op_survives_the_encoding(
        at_ms in any::<i64>(),
        first_seq in any::<u64>(),
        ops in prop::collection::vec(entry_op(), 0..6),
    ) {
        let entry = ShardEntry { at_ms, first_seq, ops };
        let decoded = decode_entry(&encode_entry(&entry)).unwrap();
        prop_assert_eq!(full(&decoded), full(&entry));
        // The serde form openraft sees is the same encoding.
        let json = serde_json::to_vec(&entry).unwrap();
        let back: ShardEntry = serde_json::from_slice(&json).unwrap();
        prop_assert_eq!(full(&back), full(&entry));
        // The short Debug carries no payload bytes.
        let short = format!("{entry:?}");
        prop_assert!(!short.contains("payload"), "{}", short);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_entry(&bytes);
        let _ = decode_response(&bytes);
    }
}

#[test]
fn a_response_survives_the_encoding() {
    let response = ShardResponse {
        ops: vec![
            OpReply::Appended(vec![AppendOutcome {
                seq: 7,
                message_id: ferry_model::MessageId::encode(ferry_model::MessageKey {
                    shard: ShardId(3),
                    space: 9,
                    seq: 7,
                }),
                held: true,
            }]),
            OpReply::Done,
            OpReply::Resolved(ResolvedHeld { released: vec![1], dropped: vec![2, 3], expired: vec![4] }),
        ],
        rejected: None,
        next_seq: 8,
        next_outbox_seq: 5,
        low_watermark: Some(2),
        released: vec![1],
    };
    assert_eq!(decode_response(&encode_response(&response)).unwrap(), response);
    let rejected = ShardResponse { rejected: Some("below next_seq".into()), ..ShardResponse::default() };
    let json = serde_json::to_vec(&rejected).unwrap();
    assert_eq!(serde_json::from_slice::<ShardResponse>(&json).unwrap(), rejected);
}
