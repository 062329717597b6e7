//! Per-recipient state of the reference chat server: each simulated recipient's keys, its receiving
//! sessions, the message ids already acked (dedup) and its rate-limit window. Sharded by a hash of the
//! recipient into mutex-protected maps, so concurrent streams only contend when they hit the same
//! shard; decryption runs inline under the shard lock (a few microseconds).

use std::collections::{HashMap, VecDeque};

use ferry_proto::chat::v1::RecipientHistory;
use ferry_session::{Header, ReceivingSession, RecipientKeys, SessionError};
use parking_lot::Mutex;

/// Receiving sessions kept per recipient (the oldest is forgotten beyond it; its sender re-keys).
const MAX_SESSIONS_PER_RECIPIENT: usize = 16;

/// One recipient's state.
pub(crate) struct RecipientState {
    keys: RecipientKeys,
    sessions: HashMap<[u8; 32], ReceivingSession>,
    session_order: VecDeque<[u8; 32]>,
    /// Message id → digests of the first and the latest envelope acked for it.
    acked: HashMap<String, AckedDigests>,
    rate_window_second: u64,
    rate_window_count: u32,
    /// Unique messages delivered to this recipient so far (numbers the deliveries in order).
    delivered: u64,
    /// The senders that delivered to this recipient (usually one business number), indexed by
    /// [`AckedDigests::sender`].
    senders: Vec<String>,
}

/// A 64-bit digest of an envelope's sender, header and ciphertext. A byte-identical resend of an
/// acked envelope is recognised by it and acked as a duplicate without decrypting (decrypting would
/// fail: its counter has been used). Not a security boundary: at worst a forgery gets a duplicate
/// ack for an id that was already delivered, and nothing is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EnvelopeDigest(pub(crate) u64);

/// The envelopes acked for one message id, recognised when resent byte for byte.
struct AckedDigests {
    first: EnvelopeDigest,
    latest: EnvelopeDigest,
    /// Position of this message among the recipient's deliveries (0 = first).
    order: u64,
    /// Its sender: an index into [`RecipientState::senders`].
    sender: u32,
}

/// What the recipient side made of one envelope.
pub(crate) enum Reception {
    /// Decrypted; first ack of this id (`sessions_established` says whether a session was set up).
    Delivered {
        session_established: bool,
    },
    /// This id was acked before: ack again, deliver nothing.
    Duplicate {
        session_established: bool,
    },
    RateLimited {
        retry_after_ms: u64,
    },
    Failed(SessionError),
}

pub(crate) struct RecipientDirectory {
    key_seed: [u8; 32],
    shards: Box<[Mutex<HashMap<String, RecipientState>>]>,
}

impl RecipientDirectory {
    pub(crate) fn new(key_seed: [u8; 32], shard_count: usize) -> Self {
        let shards = (0..shard_count.max(1)).map(|_| Mutex::new(HashMap::new())).collect();
        RecipientDirectory { key_seed, shards }
    }

    fn shard(&self, recipient: &str) -> &Mutex<HashMap<String, RecipientState>> {
        let hash = xxhash_rust::xxh3::xxh3_64(recipient.as_bytes());
        &self.shards[(hash % self.shards.len() as u64) as usize]
    }

    /// Makes sure the recipient's state exists; derives its keys outside the shard lock (tens of
    /// microseconds of curve arithmetic that should not stall the shard).
    fn ensure(&self, recipient: &str) {
        if self.shard(recipient).lock().contains_key(recipient) {
            return;
        }
        let keys = RecipientKeys::derive(&self.key_seed, recipient);
        self.shard(recipient).lock().entry(recipient.to_owned()).or_insert_with(|| RecipientState {
            keys,
            sessions: HashMap::new(),
            session_order: VecDeque::new(),
            acked: HashMap::new(),
            rate_window_second: 0,
            rate_window_count: 0,
            delivered: 0,
            senders: Vec::new(),
        });
    }

    /// The message ids delivered to `recipient`, in the order they were first acked.
    pub(crate) fn delivery_order(&self, recipient: &str) -> Vec<String> {
        let shard = self.shard(recipient).lock();
        let Some(state) = shard.get(recipient) else { return Vec::new() };
        let mut ids: Vec<(u64, &String)> = state.acked.iter().map(|(id, d)| (d.order, id)).collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id.clone()).collect()
    }

    /// Every (sender, recipient)'s delivered message ids in first-ack order, ordered by (sender,
    /// recipient), listing at most `budget` ids in all (see `HistoryResponse`). Locks one state
    /// shard at a time; meant for tests and small runs, not for a million-message sink.
    pub(crate) fn history(&self, budget: usize) -> (Vec<RecipientHistory>, bool) {
        let mut all = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock();
            for (recipient, state) in shard.iter() {
                let mut ids: Vec<(u32, u64, &String)> =
                    state.acked.iter().map(|(id, d)| (d.sender, d.order, id)).collect();
                ids.sort_unstable();
                for (index, sender) in state.senders.iter().enumerate() {
                    let mine: Vec<String> =
                        ids.iter().filter(|(s, _, _)| *s as usize == index).map(|(_, _, id)| (*id).clone()).collect();
                    all.push(RecipientHistory {
                        sender: sender.clone(),
                        recipient: recipient.clone(),
                        delivered: mine.len() as u64,
                        message_ids: mine,
                        truncated: false,
                    });
                }
            }
        }
        all.sort_unstable_by(|a, b| (&a.sender, &a.recipient).cmp(&(&b.sender, &b.recipient)));
        truncate_history(all, budget)
    }

    /// The recipient's next pre-key bundle (a never-handed-out one-time pre-key).
    pub(crate) fn next_bundle(&self, recipient: &str) -> ferry_session::PreKeyBundle {
        self.ensure(recipient);
        let mut shard = self.shard(recipient).lock();
        shard.get_mut(recipient).expect("ensured above").keys.next_bundle()
    }

    /// Dedups, rate-limits, then decrypts and authenticates one envelope for `recipient`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn receive(
        &self,
        message_id: &str,
        sender: &str,
        recipient: &str,
        header: &Header,
        ciphertext: &[u8],
        digest: EnvelopeDigest,
        now_ms: u64,
        rate_limit_per_second: u32,
    ) -> Reception {
        self.ensure(recipient);
        let mut shard = self.shard(recipient).lock();
        let state = shard.get_mut(recipient).expect("ensured above");
        if state.acked.get(message_id).is_some_and(|acked| acked.first == digest || acked.latest == digest) {
            return Reception::Duplicate { session_established: false };
        }
        if rate_limit_per_second > 0 {
            let second = now_ms / 1000;
            if state.rate_window_second != second {
                state.rate_window_second = second;
                state.rate_window_count = 0;
            }
            if state.rate_window_count >= rate_limit_per_second {
                return Reception::RateLimited { retry_after_ms: ((second + 1) * 1000 - now_ms).max(1) };
            }
            state.rate_window_count += 1;
        }
        let mut session_established = false;
        let decrypted = match state.sessions.get_mut(&header.ephemeral_key) {
            Some(session) => session.decrypt(message_id, sender, recipient, header, ciphertext),
            None => {
                let accepted = ReceivingSession::accept_first_message(
                    &mut state.keys,
                    message_id,
                    sender,
                    recipient,
                    header,
                    ciphertext,
                );
                accepted.map(|(session, plaintext)| {
                    session_established = true;
                    if state.session_order.len() >= MAX_SESSIONS_PER_RECIPIENT
                        && let Some(oldest) = state.session_order.pop_front()
                    {
                        state.sessions.remove(&oldest);
                    }
                    state.session_order.push_back(header.ephemeral_key);
                    state.sessions.insert(header.ephemeral_key, session);
                    plaintext
                })
            }
        };
        match decrypted {
            Err(error) => Reception::Failed(error),
            Ok(_plaintext) => match state.acked.get_mut(message_id) {
                Some(digests) => {
                    digests.latest = digest;
                    Reception::Duplicate { session_established }
                }
                None => {
                    let order = state.delivered;
                    state.delivered += 1;
                    let sender = sender_index(&mut state.senders, sender);
                    let digests = AckedDigests { first: digest, latest: digest, order, sender };
                    state.acked.insert(message_id.to_owned(), digests);
                    Reception::Delivered { session_established }
                }
            },
        }
    }
}

/// `sender`'s index in a recipient's senders, added at the end if new (a linear scan: a recipient
/// hears from a handful of business numbers).
fn sender_index(senders: &mut Vec<String>, sender: &str) -> u32 {
    match senders.iter().position(|s| s == sender) {
        Some(index) => index as u32,
        None => {
            senders.push(sender.to_owned());
            (senders.len() - 1) as u32
        }
    }
}

/// Keeps at most `budget` ids in all, in order: a list cut short is `truncated`, the lists after
/// the budget ran out are left out (the `bool`: some were).
fn truncate_history(all: Vec<RecipientHistory>, mut budget: usize) -> (Vec<RecipientHistory>, bool) {
    let mut kept = Vec::new();
    let total = all.len();
    for mut history in all {
        if budget == 0 {
            break;
        }
        if history.message_ids.len() > budget {
            history.message_ids.truncate(budget);
            history.truncated = true;
        }
        budget -= history.message_ids.len();
        kept.push(history);
    }
    let left_out = kept.len() < total;
    (kept, left_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(recipient: &str, ids: usize) -> RecipientHistory {
        RecipientHistory {
            sender: "15550001111".into(),
            recipient: recipient.into(),
            message_ids: (0..ids).map(|n| format!("wamid.{recipient}.{n}")).collect(),
            delivered: ids as u64,
            truncated: false,
        }
    }

    #[test]
    fn the_id_budget_cuts_a_list_short_and_leaves_the_rest_out() {
        let (kept, left_out) = truncate_history(vec![history("a", 3), history("b", 3), history("c", 3)], 5);
        assert!(left_out, "c was left out");
        assert_eq!(kept.len(), 2);
        assert_eq!((kept[0].message_ids.len(), kept[0].truncated), (3, false));
        assert_eq!((kept[1].message_ids.len(), kept[1].truncated, kept[1].delivered), (2, true, 3));
        assert_eq!(kept[1].message_ids, ["wamid.b.0", "wamid.b.1"], "the first ids are kept, in order");

        let (kept, left_out) = truncate_history(vec![history("a", 3), history("b", 2)], 5);
        assert!(!left_out);
        assert!(kept.iter().all(|h| !h.truncated));
    }

    #[test]
    fn senders_are_indexed_once_each() {
        let mut senders = Vec::new();
        assert_eq!(sender_index(&mut senders, "1"), 0);
        assert_eq!(sender_index(&mut senders, "2"), 1);
        assert_eq!(sender_index(&mut senders, "1"), 0);
        assert_eq!(senders, ["1", "2"]);
    }
}
