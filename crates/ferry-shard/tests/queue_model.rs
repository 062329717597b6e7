//! Model check of a shard's durable queue: random sequences of append / read / remove / reopen
//! against a `VecDeque` model. Reopen closes the shard and opens it again from disk, so the model
//! also checks that what was acknowledged survives and that sequence numbers are never reused.

use std::collections::VecDeque;

use ferry_model::ShardId;
use ferry_shard::{NewMessage, QueueRecord, Shard, ShardConfig, SharedResources, StorageTuning};
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
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Op::Append),
        2 => (1u8..20).prop_map(Op::AppendBatch),
        3 => (0u8..30).prop_map(Op::ReadHead),
        2 => any::<u8>().prop_map(Op::Remove),
        1 => (0u8..10).prop_map(Op::RemoveHead),
        1 => Just(Op::Reopen),
    ]
}

fn record(payload: Vec<u8>) -> NewMessage {
    NewMessage {
        record: QueueRecord { wa_id: "16315551234".into(), payload, ..QueueRecord::default() },
        idempotency: None,
        held_template: None,
    }
}

fn open(dir: &std::path::Path, resources: &SharedResources) -> Shard {
    Shard::open(dir, ShardId(0), 1, 42, resources, &ShardConfig::default()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn queue_behaves_like_a_vecdeque(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let resources = SharedResources::new(&StorageTuning { block_cache_mib: 8, write_buffer_total_mib: 16, ..StorageTuning::default() }).unwrap();
        let mut shard = open(dir.path(), &resources);
        let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
        let mut highest_seq = 0u64;

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
                Op::Reopen => {
                    shard.close();
                    drop(shard);
                    shard = open(dir.path(), &resources);
                }
            }
        }
        // Everything the model holds is on disk, in order, and nothing else.
        let all: Vec<u64> = shard.scan_queue(0, usize::MAX).unwrap().into_iter().map(|(s, _)| s).collect();
        let want: Vec<u64> = model.iter().map(|(s, _)| *s).collect();
        prop_assert_eq!(all, want);
    }
}
