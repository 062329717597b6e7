//! Model check of a shard's durable queue: random sequences of append / read / remove / settle /
//! hold / release / reopen / crash against a `VecDeque` model (and a map of held messages).
//!
//! Reopen closes the shard (everything submitted is committed) and opens it again from disk.
//! Crash submits a few appends and a settle without waiting for them, then stops the shard the
//! way a crash would (`Shard::crash_for_test`: the writer abandons what it has not committed;
//! the in-memory state is lost) and opens it again. An op answered before the crash must be on
//! disk; an unanswered one may be or not, but all of it or none of it.
//!
//! So the model checks that what was acknowledged survives, that sequence numbers are never
//! reused, that a held message stays out of the queue until released under its seq, that a
//! settled message leaves the queue with its status written (in one batch), and that the
//! persisted low watermark never passes a queued message (a restart's scan, which starts there,
//! finds every one).

use std::collections::{BTreeMap, VecDeque};

use ferry_model::{MessageStatus, ShardId};
use ferry_shard::settle::status_base;
use ferry_shard::test_support::resources;
use ferry_shard::{HeldAction, NewMessage, QueueRecord, Settlement, Shard, ShardConfig, SharedResources};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    AppendBatch(u8),
    ReadHead(u8),
    /// Remove the i-th queued message (modulo the queue length).
    Remove(u8),
    /// Remove the first n queued messages (head truncation, as acks usually arrive).
    RemoveHead(u8),
    /// Settle (ack) the i-th queued message, with the low watermark the delivery loop would ask
    /// for: the lowest seq still queued after it (or the next seq).
    Settle(u8),
    /// Append a held (paced template) message.
    Hold(Vec<u8>),
    /// Release the i-th held message into the queue (modulo the held count).
    Release(u8),
    Reopen,
    /// Submit `appends` single appends and (if `settle`) a settle of the queue's head without
    /// waiting, then crash and reopen.
    Crash {
        appends: u8,
        settle: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Op::Append),
        2 => (1u8..20).prop_map(Op::AppendBatch),
        3 => (0u8..30).prop_map(Op::ReadHead),
        2 => any::<u8>().prop_map(Op::Remove),
        1 => (0u8..10).prop_map(Op::RemoveHead),
        2 => any::<u8>().prop_map(Op::Settle),
        2 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(Op::Hold),
        2 => any::<u8>().prop_map(Op::Release),
        1 => Just(Op::Reopen),
        1 => (0u8..6, any::<bool>()).prop_map(|(appends, settle)| Op::Crash { appends, settle }),
    ]
}

fn record(payload: Vec<u8>) -> NewMessage {
    NewMessage {
        record: QueueRecord { wa_id: "16315551234".into(), payload, expires_at_ms: i64::MAX, ..QueueRecord::default() },
        idempotency: None,
        held_template: None,
    }
}

fn held(payload: Vec<u8>) -> NewMessage {
    let mut m = record(payload);
    m.record.held_at_ms = 1_000;
    m.held_template = Some("promo".into());
    m
}

fn open(dir: &std::path::Path, resources: &SharedResources) -> Shard {
    Shard::open(dir, ShardId(0), 1, 42, resources, &ShardConfig::default()).unwrap()
}

/// The payload of the `n`-th append left in flight by a crash: no other op writes one this long
/// (`Append` payloads are under 64 bytes, `AppendBatch` ones under 20).
fn in_flight_payload(n: u64) -> Vec<u8> {
    let mut p = b"in flight at a crash #".to_vec();
    p.extend_from_slice(&n.to_be_bytes());
    p.resize(80, b'.');
    p
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn queue_behaves_like_a_vecdeque(ops in proptest::collection::vec(op(), 1..48)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let resources = resources();
        let mut shard = open(dir.path(), &resources);
        // Queued messages in seq order (released ones go back to their place).
        let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
        let mut held_model: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut settled: Vec<u64> = Vec::new();
        let mut highest_seq = 0u64;
        let mut in_flight_appends = 0u64;

        for op in ops {
            match op {
                Op::Append(payload) => {
                    let out = rt.block_on(shard.append_durably(vec![record(payload.clone())]).unwrap()).unwrap();
                    prop_assert!(out[0].seq > highest_seq, "sequence numbers only grow");
                    highest_seq = out[0].seq;
                    model.push_back((out[0].seq, payload));
                }
                Op::AppendBatch(n) => {
                    let payloads: Vec<Vec<u8>> = (0..n).map(|i| vec![i; i as usize]).collect();
                    let out = rt.block_on(shard.append_durably(payloads.iter().cloned().map(record).collect()).unwrap()).unwrap();
                    prop_assert_eq!(out.len(), n as usize);
                    for (o, p) in out.into_iter().zip(payloads) {
                        prop_assert!(o.seq > highest_seq);
                        highest_seq = o.seq;
                        model.push_back((o.seq, p));
                    }
                }
                Op::ReadHead(limit) => {
                    let got: Vec<(u64, Vec<u8>)> = shard.scan_queue(0, limit as usize).unwrap()
                        .into_iter().map(|(seq, r)| (seq, r.payload)).collect();
                    let want: Vec<(u64, Vec<u8>)> = model.iter().take(limit as usize).cloned().collect();
                    prop_assert_eq!(got, want);
                }
                Op::Remove(i) => {
                    if !model.is_empty() {
                        let (seq, _) = model.remove(i as usize % model.len()).unwrap();
                        rt.block_on(shard.remove_durably(vec![seq]).unwrap()).unwrap();
                        prop_assert!(shard.get_queued(seq).unwrap().is_none());
                    }
                }
                Op::RemoveHead(n) => {
                    let seqs: Vec<u64> = (0..n).filter_map(|_| model.pop_front()).map(|(s, _)| s).collect();
                    rt.block_on(shard.remove_durably(seqs).unwrap()).unwrap();
                }
                Op::Settle(i) => {
                    if !model.is_empty() {
                        let (seq, _) = model.remove(i as usize % model.len()).unwrap();
                        let base = status_base(&shard.get_queued(seq).unwrap().unwrap());
                        let mark = model.front().map_or(highest_seq + 1, |(s, _)| *s);
                        let change = Settlement::Sent { seq, message: base, at_ms: ferry_shard::storage::now_ms() };
                        rt.block_on(shard.settle_durably(vec![change], Some(mark)).unwrap()).unwrap();
                        prop_assert!(shard.get_queued(seq).unwrap().is_none(), "a settled message left the queue");
                        settled.push(seq);
                    }
                }
                Op::Hold(payload) => {
                    let out = rt.block_on(shard.append_durably(vec![held(payload.clone())]).unwrap()).unwrap();
                    prop_assert!(out[0].seq > highest_seq && out[0].held);
                    highest_seq = out[0].seq;
                    prop_assert!(shard.get_queued(out[0].seq).unwrap().is_none(), "a held message is not queued");
                    held_model.insert(out[0].seq, payload);
                }
                Op::Release(i) => {
                    if let Some(&seq) = held_model.keys().nth(i as usize % held_model.len().max(1)) {
                        let payload = held_model.remove(&seq).unwrap();
                        let out = rt.block_on(shard.resolve_held_durably(vec![seq], HeldAction::Release, 2_000).unwrap()).unwrap();
                        prop_assert_eq!(out.released, vec![seq]);
                        let at = model.iter().position(|(s, _)| *s > seq).unwrap_or(model.len());
                        model.insert(at, (seq, payload));
                        // The delivery loop takes released messages apart from its scan; the
                        // model does not run one, so take them here (as the loop would).
                        shard.take_released(usize::MAX);
                    }
                }
                Op::Reopen => {
                    shard.close();
                    drop(shard);
                    shard = open(dir.path(), &resources);
                }
                Op::Crash { appends, settle } => {
                    let mut appending = Vec::new();
                    for _ in 0..appends {
                        in_flight_appends += 1;
                        let payload = in_flight_payload(in_flight_appends);
                        appending.push((payload.clone(), shard.append_durably(vec![record(payload)]).unwrap()));
                    }
                    let settling = match model.front() {
                        Some(&(seq, _)) if settle => {
                            let base = status_base(&shard.get_queued(seq).unwrap().unwrap());
                            let mark = model.get(1).map_or(highest_seq + 1, |(s, _)| *s);
                            let change = Settlement::Sent { seq, message: base, at_ms: ferry_shard::storage::now_ms() };
                            Some((seq, shard.settle_durably(vec![change], Some(mark)).unwrap()))
                        }
                        _ => None,
                    };
                    shard.crash_for_test();
                    drop(shard);
                    let answers: Vec<(Vec<u8>, Option<u64>)> = appending.into_iter()
                        .map(|(payload, wait)| (payload, rt.block_on(wait).ok().map(|out| out[0].seq)))
                        .collect();
                    let settle_answer = settling.map(|(seq, wait)| (seq, rt.block_on(wait).is_ok()));
                    shard = open(dir.path(), &resources);
                    // An in-flight append is on disk if it was answered, and may be if it was not.
                    let on_disk = shard.scan_queue(0, usize::MAX).unwrap();
                    for (payload, answered) in answers {
                        let found: Vec<u64> = on_disk.iter().filter(|(_, r)| r.payload == payload).map(|(s, _)| *s).collect();
                        prop_assert!(found.len() <= 1, "an append was written twice: {:?}", found);
                        if let Some(seq) = answered {
                            prop_assert_eq!(&found, &vec![seq], "an answered append was lost in the crash");
                        }
                        if let Some(&seq) = found.first() {
                            prop_assert!(seq > highest_seq, "seq {} reused (highest before: {})", seq, highest_seq);
                            let at = model.iter().position(|(s, _)| *s > seq).unwrap_or(model.len());
                            model.insert(at, (seq, payload));
                        }
                    }
                    highest_seq = highest_seq.max(model.back().map_or(0, |(s, _)| *s));
                    // An in-flight settle took effect whole (left the queue and has its status) or
                    // not at all; if it was answered, it took effect.
                    if let Some((seq, answered)) = settle_answer {
                        let queued = shard.get_queued(seq).unwrap().is_some();
                        let status = shard.get_status(seq).unwrap().map(|r| r.status);
                        if queued {
                            prop_assert!(!answered, "an answered settle of {} was lost in the crash", seq);
                            prop_assert_eq!(status, None, "{} is queued and has a status: half a batch", seq);
                        } else {
                            prop_assert_eq!(status, Some(MessageStatus::Sent.code()), "{} left the queue without its status", seq);
                            model.retain(|(s, _)| *s != seq);
                            settled.push(seq);
                        }
                    }
                }
            }
            // The persisted low watermark never passes a queued message.
            let mark = shard.queue_low_watermark();
            if let Some((head, _)) = model.front() {
                prop_assert!(mark <= *head, "low watermark {} passed queued seq {}", mark, head);
            }
        }
        // Everything the model holds is on disk, in order, and nothing else; a scan from the low
        // watermark (a restart's) finds all of it; held messages are still held; settled ones
        // have their status.
        let all: Vec<u64> = shard.scan_queue(0, usize::MAX).unwrap().into_iter().map(|(s, _)| s).collect();
        let want: Vec<u64> = model.iter().map(|(s, _)| *s).collect();
        prop_assert_eq!(&all, &want);
        let from_mark: Vec<u64> =
            shard.scan_queue(shard.queue_low_watermark(), usize::MAX).unwrap().into_iter().map(|(s, _)| s).collect();
        prop_assert_eq!(from_mark, want);
        for (seq, payload) in &held_model {
            let h = shard.get_held(*seq).unwrap().and_then(|h| h.record);
            prop_assert_eq!(h.map(|r| r.payload), Some(payload.clone()));
        }
        for seq in settled {
            let status = shard.get_status(seq).unwrap().map(|r| r.status);
            prop_assert_eq!(status, Some(MessageStatus::Sent.code()));
        }
        // Sequence numbers are not reused after the last reopen either.
        let out = rt.block_on(shard.append_durably(vec![record(Vec::new())]).unwrap()).unwrap();
        prop_assert!(out[0].seq > highest_seq, "seq {} reused (highest: {})", out[0].seq, highest_seq);
    }
}
