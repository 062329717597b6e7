//! Per-recipient state of the reference chat server: each simulated recipient's keys, its receiving
//! sessions, the message ids already acked (dedup) and its rate-limit window. Sharded by a hash of the
//! recipient into mutex-protected maps, so concurrent streams only contend when they hit the same
//! shard; decryption runs inline under the shard lock (a few microseconds).

use std::collections::{HashMap, VecDeque};

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
                    state.acked.insert(message_id.to_owned(), AckedDigests { first: digest, latest: digest, order });
                    Reception::Delivered { session_established }
                }
            },
        }
    }
}
