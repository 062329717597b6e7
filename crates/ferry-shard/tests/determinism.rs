//! Determinism of the state machine: two stores that apply the same random sequence of entries
//! (appends to the queue and to `held` with idempotency records or intents, settlements of every
//! kind with low watermarks (some with the upstream's id, some failing after `sent`), repeated
//! inbound ids, removals, held releases and drops, webhook cursors, sessions,
//! idempotency records, intent clears, dispatch marks set and cleared) hold the same bytes in every column family, and the same
//! in-memory state. Store A applies every entry in one go; store B is closed and opened again
//! (its in-memory state read back from disk, as a fresh replica or a restarted node has it) at
//! random points between entries. So apply may depend on nothing but the entry and what is on
//! disk: not on the wall clock, randomness, or memory a restart loses.
//!
//! Left out of the comparison: `meta/identity_key`, drawn at random when a shard is created
//! (`init_identity_key`; replicas will get it from a bootstrap entry). Nothing retention-dependent
//! differs here: the stores are opened with retention far beyond the test's timestamps.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use ferry_model::{MessageStatus, ShardId};
use ferry_shard::apply::{EntryOp, ShardEntry, ShardState, apply_and_write};
use ferry_shard::settle::status_base;
use ferry_shard::storage::{ALL_CFS, CF_META, EventRetention, META_IDENTITY_KEY, Store};
use ferry_shard::test_support::resources;
use ferry_shard::{
    FailureReason, HeldAction, IdempotencyPlacement, IdempotencyRecord, InboundRecord, NewMessage, QueueRecord,
    Settlement, Shard, ShardConfig, SharedResources,
};
use proptest::prelude::*;

/// One op of a generated entry; `pick` selects among the seqs appended so far (modulo).
#[derive(Debug, Clone)]
enum Op {
    /// (held, idempotency: 0 none, 1 here, 2 elsewhere) per message.
    Append(Vec<(bool, u8)>),
    Sent {
        pick: u8,
        watermark: Option<u8>,
    },
    Failed {
        pick: u8,
    },
    /// Sent with an upstream id (the Cloud API's wamid).
    SentWithUpstreamId {
        pick: u8,
    },
    LateFailure {
        pick: u8,
    },
    Receipt {
        pick: u8,
        read: bool,
    },
    Inbound {
        user: u8,
        at: u8,
    },
    Remove {
        pick: u8,
    },
    Resolve {
        picks: Vec<u8>,
        release: bool,
        expired: bool,
    },
    WebhookCursor(u8),
    Sessions(u8),
    Idempotency(u8),
    ClearIntents {
        pick: u8,
    },
    MarkDispatched {
        pick: u8,
    },
    ClearDispatched {
        pick: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec((any::<bool>(), 0u8..3), 1..4).prop_map(Op::Append),
        3 => (any::<u8>(), prop::option::of(any::<u8>())).prop_map(|(pick, watermark)| Op::Sent { pick, watermark }),
        1 => any::<u8>().prop_map(|pick| Op::Failed { pick }),
        1 => any::<u8>().prop_map(|pick| Op::SentWithUpstreamId { pick }),
        1 => any::<u8>().prop_map(|pick| Op::LateFailure { pick }),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(pick, read)| Op::Receipt { pick, read }),
        1 => (0u8..4, any::<u8>()).prop_map(|(user, at)| Op::Inbound { user, at }),
        1 => any::<u8>().prop_map(|pick| Op::Remove { pick }),
        2 => (prop::collection::vec(any::<u8>(), 1..3), any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(picks, release, expired)| Op::Resolve { picks, release, expired }),
        1 => any::<u8>().prop_map(Op::WebhookCursor),
        1 => any::<u8>().prop_map(Op::Sessions),
        1 => any::<u8>().prop_map(Op::Idempotency),
        1 => any::<u8>().prop_map(|pick| Op::ClearIntents { pick }),
        2 => any::<u8>().prop_map(|pick| Op::MarkDispatched { pick }),
        1 => any::<u8>().prop_map(|pick| Op::ClearDispatched { pick }),
    ]
}

/// Builds concrete entries from generated ops, tracking what was appended (the planner's part:
/// sequence numbers and the entry clock).
struct Builder {
    base_ms: i64,
    next_seq: u64,
    entries: u64,
    /// Every appended seq with its queue record.
    appended: BTreeMap<u64, QueueRecord>,
}

impl Builder {
    fn pick(&self, pick: u8) -> Option<(u64, &QueueRecord)> {
        let n = self.appended.len();
        (n > 0).then(|| self.appended.iter().nth(pick as usize % n).map(|(s, r)| (*s, r))).flatten()
    }

    fn entry(&mut self, ops: &[Op]) -> ShardEntry {
        self.entries += 1;
        let at_ms = self.base_ms + self.entries as i64 * 10;
        let first_seq = self.next_seq;
        let mut out = Vec::new();
        for op in ops {
            let op = match op {
                Op::Append(messages) => {
                    let messages = messages
                        .iter()
                        .map(|&(held, idem)| {
                            let seq = self.next_seq;
                            self.next_seq += 1;
                            let record = QueueRecord {
                                wa_id: format!("1631555{:04}", seq % 7),
                                sender: "15550100000".into(),
                                message_type: if held { "template" } else { "text" }.into(),
                                accepted_at_ms: at_ms,
                                expires_at_ms: at_ms + 1_000,
                                payload: format!("{{\"n\":{seq}}}").into_bytes(),
                                held_at_ms: if held { at_ms } else { 0 },
                                ..QueueRecord::default()
                            };
                            self.appended.insert(seq, record.clone());
                            let key = format!("15550100000\0key-{seq}").into_bytes();
                            let payload_hash = seq.to_be_bytes().to_vec();
                            NewMessage {
                                record,
                                idempotency: match idem {
                                    0 => None,
                                    1 => Some(IdempotencyPlacement::Here { key, payload_hash }),
                                    _ => Some(IdempotencyPlacement::Elsewhere { key_shard: 3, key, payload_hash }),
                                },
                                held_template: held.then(|| "promo".to_owned()),
                            }
                        })
                        .collect();
                    EntryOp::Append { messages }
                }
                Op::Sent { pick, watermark } => {
                    let Some((seq, record)) = self.pick(*pick) else { continue };
                    let settlement = Settlement::Sent { seq, message: status_base(record), at_ms };
                    let low_watermark = watermark.map(|w| seq + 1 - u64::from(w % 2));
                    EntryOp::Settle { entries: vec![settlement], low_watermark }
                }
                Op::Failed { pick } => {
                    let Some((seq, record)) = self.pick(*pick) else { continue };
                    let reason = FailureReason { code: 1013, title: "invalid".into(), details: "test".into() };
                    let settlement = Settlement::Failed { seq, message: status_base(record), at_ms, reason };
                    EntryOp::Settle { entries: vec![settlement], low_watermark: None }
                }
                Op::SentWithUpstreamId { pick } => {
                    let Some((seq, record)) = self.pick(*pick) else { continue };
                    let mut message = status_base(record);
                    message.upstream_message_id = format!("wamid.{seq}");
                    EntryOp::Settle { entries: vec![Settlement::Sent { seq, message, at_ms }], low_watermark: None }
                }
                Op::LateFailure { pick } => {
                    let Some((seq, _)) = self.pick(*pick) else { continue };
                    let reason = FailureReason { code: 131026, title: "undeliverable".into(), details: "t".into() };
                    EntryOp::Settle {
                        entries: vec![Settlement::LateFailure { seq, at_ms, reason }],
                        low_watermark: None,
                    }
                }
                Op::Receipt { pick, read } => {
                    let Some((seq, _)) = self.pick(*pick) else { continue };
                    let status = if *read { MessageStatus::Read } else { MessageStatus::Delivered };
                    EntryOp::Settle { entries: vec![Settlement::Receipt { seq, status, at_ms }], low_watermark: None }
                }
                Op::Inbound { user, at } => {
                    let inbound = InboundRecord {
                        // Repeats now and then: an upstream delivering the same message again.
                        id: format!("in-{user}-{}", at % 8),
                        from: format!("1631556{user:04}"),
                        to: "15550100000".into(),
                        // Sometimes older than the user's last message: the contact keeps the newest.
                        at_ms: self.base_ms + i64::from(*at) * 7,
                        message_type: "text".into(),
                        text_body: "hi".into(),
                        profile_name: format!("user {user}"),
                    };
                    EntryOp::Settle { entries: vec![Settlement::Inbound(inbound)], low_watermark: None }
                }
                Op::Remove { pick } => {
                    let Some((seq, _)) = self.pick(*pick) else { continue };
                    EntryOp::Remove { seqs: vec![seq] }
                }
                Op::Resolve { picks, release, expired } => {
                    let seqs: Vec<u64> = picks.iter().filter_map(|p| self.pick(*p).map(|(s, _)| s)).collect();
                    let action = if *release {
                        HeldAction::Release
                    } else {
                        HeldAction::Drop(FailureReason { code: 132015, title: "paused".into(), details: "t".into() })
                    };
                    EntryOp::ResolveHeld { seqs, action, at_ms: if *expired { at_ms + 1_000_000 } else { at_ms } }
                }
                Op::WebhookCursor(n) => EntryOp::SetWebhookCursor { next: u64::from(*n) },
                Op::Sessions(n) => EntryOp::PutSessions {
                    entries: vec![(format!("15550100000\01631555{n:04}").into_bytes(), vec![*n; 3])],
                },
                Op::Idempotency(n) => EntryOp::PutIdempotency {
                    entries: vec![(
                        format!("15550100000\0other-{n}").into_bytes(),
                        IdempotencyRecord {
                            message_id: format!("wamid.other{n}"),
                            wa_id: "16315550001".into(),
                            payload_hash: vec![*n],
                            created_at_ms: at_ms,
                        },
                    )],
                },
                Op::ClearIntents { pick } => {
                    let Some((seq, _)) = self.pick(*pick) else { continue };
                    EntryOp::ClearIntents { seqs: vec![seq] }
                }
                Op::MarkDispatched { pick } => {
                    let Some((seq, _)) = self.pick(*pick) else { continue };
                    EntryOp::MarkDispatched { seqs: vec![seq], at_ms }
                }
                Op::ClearDispatched { pick } => {
                    let Some((seq, _)) = self.pick(*pick) else { continue };
                    EntryOp::ClearDispatched { seqs: vec![seq] }
                }
            };
            out.push(op);
        }
        ShardEntry { at_ms, first_seq, ops: out.into() }
    }
}

/// Creates a shard's database the way a node does (`Shard::open`: meta, id space), closes it, and
/// opens the bare store with its state.
fn create(dir: &Path, res: &SharedResources) -> (Store, ShardState) {
    let shard = Shard::open(dir, ShardId(0), 1, 9, res, &ShardConfig::default()).unwrap();
    shard.close();
    drop(shard);
    reopen(dir, res)
}

fn reopen(dir: &Path, res: &SharedResources) -> (Store, ShardState) {
    let events = EventRetention { retention_ms: i64::MAX, webhook_floor: Arc::new(AtomicU64::new(u64::MAX)) };
    let store = Store::open(dir, 0, res, i64::MAX, events).unwrap();
    let state = ShardState::load(&store, ShardId(0)).unwrap();
    (store, state)
}

type Dump = Vec<(&'static str, Vec<(Vec<u8>, Vec<u8>)>)>;

fn dump(store: &Store) -> Dump {
    ALL_CFS
        .iter()
        .map(|cf| {
            let mut rows = store.dump_cf_for_test(cf);
            if *cf == CF_META {
                rows.retain(|(k, _)| k.as_slice() != META_IDENTITY_KEY);
            }
            (*cf, rows)
        })
        .collect()
}

fn first_difference(a: &Dump, b: &Dump) -> Option<String> {
    for ((cf, rows_a), (_, rows_b)) in a.iter().zip(b) {
        if rows_a != rows_b {
            let only_a: Vec<_> = rows_a.iter().filter(|r| !rows_b.contains(r)).take(3).collect();
            let only_b: Vec<_> = rows_b.iter().filter(|r| !rows_a.contains(r)).take(3).collect();
            return Some(format!("column family `{cf}` differs: only in A {only_a:?}; only in B {only_b:?}"));
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn two_stores_applying_the_same_entries_hold_the_same_bytes(
        entries in prop::collection::vec((prop::collection::vec(op(), 1..5), prop::bool::weighted(0.2)), 1..30),
    ) {
        let res = resources();
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (store_a, mut state_a) = create(dir_a.path(), &res);
        let (mut store_b, mut state_b) = create(dir_b.path(), &res);
        prop_assert_eq!(&state_a, &state_b);
        let base_ms = ferry_shard::storage::now_ms();
        let mut builder = Builder { base_ms, next_seq: state_a.next_seq, entries: 0, appended: BTreeMap::new() };
        for (i, (ops, restart_b)) in entries.iter().enumerate() {
            let entry = builder.entry(ops);
            let applied_a = apply_and_write(&store_a, &mut state_a, &entry, false).unwrap();
            if *restart_b {
                drop(store_b);
                (store_b, state_b) = reopen(dir_b.path(), &res);
            }
            let applied_b = apply_and_write(&store_b, &mut state_b, &entry, false).unwrap();
            prop_assert_eq!(format!("{:?}", applied_a.ops), format!("{:?}", applied_b.ops), "outcomes of entry {}", i);
            prop_assert!(applied_a.rejected.is_none(), "entry {} refused: {:?}", i, applied_a.rejected);
            // Bytes after every restart and at the end (each a full scan of both stores).
            if (*restart_b || i + 1 == entries.len())
                && let Some(diff) = first_difference(&dump(&store_a), &dump(&store_b))
            {
                prop_assert!(false, "after entry {}: {}", i, diff);
            }
            prop_assert_eq!(&state_a, &state_b, "in-memory state after entry {}", i);
        }
        // And what a restart reads back is the state apply kept.
        drop(store_b);
        let (_store_b, reloaded) = reopen(dir_b.path(), &res);
        prop_assert_eq!(&reloaded, &state_a, "state read back from disk");
    }
}
