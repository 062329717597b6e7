//! The Raft storage of a shard replica (`ferry_shard::raft`): openraft's own storage test suite
//! on the log store and state machine, a reopen test (the log, the vote, the committed id and the
//! applied state come back from disk), the round trip of the log entry encoding over every kind of
//! op, and three replicas over an in-memory network (the same ids everywhere; after the leader is
//! gone, a new leader continues the seqs and reuses no id).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use ferry_model::{MessageStatus, ShardId};
use ferry_shard::apply::{EntryOp, ShardEntry, ShardState};
use ferry_shard::raft::{
    LogStore, OpReply, PeerNode, ShardRaft, ShardResponse, StateMachine, decode_entry, decode_response, encode_entry,
    encode_response,
};
use ferry_shard::storage::{EventRetention, StatusEvent, Store};
use ferry_shard::test_support::{message, resources};
use ferry_shard::{
    AppendAnswer, AppendOutcome, FailureReason, HeldAction, IdempotencyPlacement, IdempotencyRecord, InboundRecord,
    NewMessage, QueueRecord, ResolvedHeld, Settlement, Shard, ShardConfig, SharedResources, StatusRecord,
};
use openraft::error::{Fatal, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, Raft, RaftNetwork, RaftNetworkFactory, StorageError,
    Vote,
};
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
        ops: vec![EntryOp::Append { messages: vec![message(1), message(2)] }].into(),
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
        (any::<u64>(), any::<i64>(), reason()).prop_map(|(seq, at_ms, reason)| Settlement::LateFailure {
            seq,
            at_ms,
            reason
        }),
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
        let entry = ShardEntry { at_ms, first_seq, ops: ops.into() };
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
                answer: AppendAnswer::Replay,
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

// ---- three replicas in process ----

/// The replicas reachable in process: a node absent from the map is down (unreachable).
type Router = Arc<std::sync::Mutex<std::collections::BTreeMap<u64, Raft<ShardRaft>>>>;

struct Net {
    router: Router,
}

impl RaftNetworkFactory<ShardRaft> for Net {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, _node: &PeerNode) -> PeerClient {
        PeerClient { router: self.router.clone(), target }
    }
}

/// An in-memory "RPC": a direct call on the target's `Raft`.
struct PeerClient {
    router: Router,
    target: u64,
}

impl PeerClient {
    fn peer(&self) -> Result<Raft<ShardRaft>, Unreachable> {
        let peer = self.router.lock().unwrap().get(&self.target).cloned();
        peer.ok_or_else(|| Unreachable::new(&std::io::Error::other(format!("node {} is down", self.target))))
    }
}

impl RaftNetwork<ShardRaft> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<ShardRaft>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, PeerNode, RaftError<u64>>> {
        let peer = self.peer()?;
        peer.append_entries(rpc).await.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, PeerNode, RaftError<u64>>> {
        let peer = self.peer()?;
        peer.vote(rpc).await.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: openraft::Snapshot<ShardRaft>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<ShardRaft, Fatal<u64>>> {
        let peer = self.peer()?;
        peer.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e)))
    }
}

const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits (up to [`WAIT`]) until `raft`'s metrics satisfy `f`; fails with the last metrics seen.
async fn wait_for(
    raft: &Raft<ShardRaft>,
    what: &str,
    f: impl Fn(&openraft::RaftMetrics<u64, PeerNode>) -> bool + Send,
) -> openraft::RaftMetrics<u64, PeerNode> {
    match raft.wait(Some(WAIT)).metrics(f, what).await {
        Ok(m) => m,
        Err(e) => panic!("{what}: {e}; last metrics: {:?}", raft.metrics().borrow().clone()),
    }
}

/// Message `n` with its idempotency record written in its own shard (so every replica stores
/// the message id it got).
fn keyed(n: u32) -> (NewMessage, Vec<u8>) {
    let key = format!("15550100000\0key-{n}").into_bytes();
    let mut m = message(n);
    m.idempotency = Some(IdempotencyPlacement::Here { key: key.clone(), payload_hash: vec![n as u8] });
    (m, key)
}

/// Proposes one append of `ns` on `leader` (whose state machine is `store`) and returns the
/// answered (seq, id) pairs and the entry's log index. Planned the way the proposer will: the
/// first seq is the leader's applied `next_seq`.
async fn append_on(leader: &Raft<ShardRaft>, store: &Store, ns: &[u32]) -> (Vec<(u64, String)>, u64) {
    let first_seq = ShardState::load(store, ShardId(0)).unwrap().next_seq;
    let messages = ns.iter().map(|n| keyed(*n).0).collect();
    let entry = ShardEntry { at_ms: 10_000, first_seq, ops: vec![EntryOp::Append { messages }].into() };
    let written = leader.client_write(entry).await.expect("the leader commits the append");
    assert_eq!(written.data.rejected, None, "entry refused: {:?}", written.data);
    let OpReply::Appended(outcomes) = &written.data.ops[0] else { panic!("append reply: {:?}", written.data) };
    (outcomes.iter().map(|o| (o.seq, o.message_id.as_str().to_owned())).collect(), written.log_id.index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_agree_on_ids_and_a_new_leader_continues_the_seqs() {
    let res = resources();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let config = Arc::new(
        openraft::Config {
            cluster_name: "ferry-test".into(),
            heartbeat_interval: 100,
            election_timeout_min: 500,
            election_timeout_max: 1000,
            ..openraft::Config::default()
        }
        .validate()
        .unwrap(),
    );
    let router: Router = Arc::default();
    let mut stores = std::collections::BTreeMap::new();
    for (i, dir) in dirs.iter().enumerate() {
        let id = i as u64 + 1;
        let (log, sm) = open_replica(dir.path(), &res);
        stores.insert(id, sm.store());
        let raft = Raft::new(id, config.clone(), Net { router: router.clone() }, log, sm).await.unwrap();
        router.lock().unwrap().insert(id, raft);
    }
    let raft = |id: u64| router.lock().unwrap().get(&id).cloned().expect("replica is up");
    let nodes: std::collections::BTreeMap<u64, PeerNode> =
        (1..=3).map(|id| (id, PeerNode { addr: format!("in-process-{id}") })).collect();
    raft(1).initialize(nodes).await.unwrap();
    let m = wait_for(&raft(1), "a leader", |m| m.current_leader.is_some()).await;
    let leader = m.current_leader.unwrap();
    wait_for(&raft(leader), "the leader's blank entry applied", |m| {
        m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term)
    })
    .await;

    let (first, index) = append_on(&raft(leader), &stores[&leader], &[1, 2, 3]).await;
    for id in 1..=3 {
        wait_for(&raft(id), "the append applied", |m| m.last_applied.is_some_and(|l| l.index >= index)).await;
        for ((seq, answered), n) in first.iter().zip([1, 2, 3]) {
            let store = &stores[&id];
            assert!(store.get_queued(*seq).unwrap().is_some(), "replica {id}: message {seq} is queued");
            let record = store.get_idempotency(&keyed(n).1, 1_000).unwrap().expect("its idempotency record");
            assert_eq!(&record.message_id, answered, "replica {id} stores the id the leader answered");
        }
    }

    // The leader goes away (its `Raft` shut down, unreachable): the other two elect a new one,
    // which continues the seqs from its applied state.
    let gone = router.lock().unwrap().remove(&leader).unwrap();
    gone.shutdown().await.unwrap();
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    let m = wait_for(&raft(survivor), "a new leader", |m| m.current_leader.is_some_and(|l| l != leader)).await;
    let new_leader = m.current_leader.unwrap();
    wait_for(&raft(new_leader), "the new leader's blank entry applied", |m| {
        m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term)
    })
    .await;
    let (second, index) = append_on(&raft(new_leader), &stores[&new_leader], &[4, 5]).await;
    let last_first = first.last().unwrap().0;
    assert_eq!(second.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![last_first + 1, last_first + 2]);
    for (_, id) in &second {
        assert!(first.iter().all(|(_, old)| old != id), "id {id} was answered before");
    }
    for id in (1..=3).filter(|id| *id != leader) {
        wait_for(&raft(id), "the second append applied", |m| m.last_applied.is_some_and(|l| l.index >= index)).await;
        let record = stores[&id].get_idempotency(&keyed(5).1, 1_000).unwrap().expect("its idempotency record");
        assert_eq!(record.message_id, second[1].1, "replica {id} stores the new leader's id");
    }
    let rafts = std::mem::take(&mut *router.lock().unwrap());
    for (_, raft) in rafts {
        raft.shutdown().await.unwrap();
    }
}
