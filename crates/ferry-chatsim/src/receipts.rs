//! Receipts and inbound user messages of the reference chat server, per channel (`Hello.client_id`,
//! `Hello.channel`): each is scheduled (a receipt at ack time, an inbound message when the user
//! writes), pushed when due to the channel's current stream, and kept until a `ReceiptAck` names it. A new stream with the same `Hello` takes the channel over and gets every
//! pushed-but-unacked receipt again. Memory is bounded: at most `max_pending` receipts per channel,
//! the rest dropped and counted.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_proto::chat::v1::{ChannelHistory, InboundMessage, Receipt, ServerFrame, TermHistory, server_frame};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tonic::Status;

use crate::counters::{Counters, bump};

/// Receipts pushed per wake-up before yielding the lock.
const PUSH_BATCH: usize = 1024;

/// (term, leader) entries kept per channel for `History`; older ones are dropped and counted.
pub(crate) const MAX_TERMS_PER_CHANNEL: usize = 256;

/// One channel's receipts and which stream currently owns the channel.
#[derive(Default)]
pub(crate) struct Channel {
    state: Mutex<ChannelState>,
    wake: Notify,
}

/// Something pushed to a channel until the client acknowledges its id.
#[derive(Clone)]
pub(crate) enum Push {
    Receipt(Receipt),
    Inbound(InboundMessage),
}

impl Push {
    fn id(&self) -> u64 {
        match self {
            Push::Receipt(r) => r.receipt_id,
            Push::Inbound(m) => m.receipt_id,
        }
    }

    fn into_frame(self) -> ServerFrame {
        ServerFrame {
            frame: Some(match self {
                Push::Receipt(r) => server_frame::Frame::Receipt(r),
                Push::Inbound(m) => server_frame::Frame::Inbound(m),
            }),
        }
    }
}

#[derive(Default)]
struct ChannelState {
    /// Every receipt and inbound message not acked yet, by id, with the time it was first due.
    pending: HashMap<u64, (Instant, Push)>,
    /// Receipts not pushed to the current stream yet, by due time (acked ids are skipped lazily).
    schedule: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Receipts pushed (to this or an earlier stream) and not acked.
    pushed: BTreeSet<u64>,
    /// Bumped by every stream that takes the channel over; older pushers stop.
    generation: u64,
    /// The highest fenced `Hello` (term, leader node) seen on this channel; (0, 0) until one.
    fence: (u64, u64),
    /// Every accepted (term, leader) pair in the order first seen, with its first acks (`History`).
    terms: VecDeque<TermHistory>,
    terms_dropped: u64,
}

/// A receipt (or inbound message) to schedule.
pub(crate) struct ScheduledReceipt {
    pub due: Instant,
    pub receipt: Push,
}

impl Channel {
    /// Schedules receipts (dropping those beyond `max_pending`).
    pub(crate) fn schedule(
        &self,
        receipts: impl IntoIterator<Item = ScheduledReceipt>,
        max_pending: usize,
        counters: &Counters,
    ) {
        let mut state = self.state.lock();
        let mut earliest_before = state.schedule.peek().map(|Reverse((due, _))| *due);
        let mut wake = false;
        for ScheduledReceipt { due, receipt } in receipts {
            if state.pending.len() >= max_pending {
                bump(&counters.receipts_dropped, 1);
                continue;
            }
            state.schedule.push(Reverse((due, receipt.id())));
            state.pending.insert(receipt.id(), (due, receipt));
            if earliest_before.is_none_or(|earliest| due < earliest) {
                earliest_before = Some(due);
                wake = true;
            }
        }
        drop(state);
        if wake {
            self.wake.notify_waiters();
        }
    }

    /// Forgets acked receipts and inbound messages; returns how many of each were pending.
    pub(crate) fn ack(&self, receipt_ids: &[u64]) -> (u64, u64) {
        let mut state = self.state.lock();
        let (mut receipts, mut inbound) = (0, 0);
        for id in receipt_ids {
            if let Some((_, push)) = state.pending.remove(id) {
                state.pushed.remove(id);
                match push {
                    Push::Receipt(_) => receipts += 1,
                    Push::Inbound(_) => inbound += 1,
                }
            }
        }
        (receipts, inbound)
    }

    /// A fenced `Hello` (`term > 0`): refused (`Err` with the channel's fence) when an earlier
    /// stream came from a newer (term, leader) pair; else that pair becomes the channel's fence.
    pub(crate) fn admit(&self, term: u64, leader: u64) -> Result<(), (u64, u64)> {
        let mut state = self.state.lock();
        if (term, leader) < state.fence {
            return Err(state.fence);
        }
        state.fence = (term, leader);
        Ok(())
    }

    /// An accepted `Hello` of (term, leader) ((0, 0) unfenced) at `now_ms`: counted as one more
    /// stream of its pair, or the pair's first.
    pub(crate) fn record_hello(&self, term: u64, leader: u64, now_ms: i64) {
        let mut state = self.state.lock();
        if let Some(entry) = state.terms.iter_mut().rev().find(|t| (t.term, t.leader_node) == (term, leader)) {
            entry.streams += 1;
            return;
        }
        if state.terms.len() >= MAX_TERMS_PER_CHANNEL {
            state.terms.pop_front();
            state.terms_dropped += 1;
        }
        state.terms.push_back(TermHistory {
            term,
            leader_node: leader,
            hello_unix_ms: now_ms,
            streams: 1,
            first_ack_unix_ms: 0,
            first_delivery_unix_ms: 0,
        });
    }

    /// An envelope acked at `at_ms` on a stream of (term, leader) (`delivery`: its id's first ack):
    /// sets the pair's first ack (and first delivery) if not set yet. A stream calls it only for
    /// its own first ack and first delivery ([`FirstAcks`]), so the lock is not on the hot path.
    pub(crate) fn record_ack(&self, term: u64, leader: u64, at_ms: i64, delivery: bool) {
        let mut state = self.state.lock();
        if let Some(entry) = state.terms.iter_mut().rev().find(|t| (t.term, t.leader_node) == (term, leader)) {
            if entry.first_ack_unix_ms == 0 {
                entry.first_ack_unix_ms = at_ms;
            }
            if delivery && entry.first_delivery_unix_ms == 0 {
                entry.first_delivery_unix_ms = at_ms;
            }
        }
    }

    /// This channel's (term, leader) history.
    fn history(&self, client_id: &str, channel: u32) -> ChannelHistory {
        let state = self.state.lock();
        ChannelHistory {
            client_id: client_id.to_owned(),
            channel,
            terms: state.terms.iter().cloned().collect(),
            terms_dropped: state.terms_dropped,
        }
    }

    /// The generation of the stream that owns the channel now.
    pub(crate) fn generation(&self) -> u64 {
        self.state.lock().generation
    }

    /// A new stream takes the channel over: every pushed-but-unacked receipt is due again, at the
    /// time it was first due, so receipts keep their order (a message's `delivered` before its
    /// `read`) relative to those not pushed yet. Returns the stream's generation for
    /// [`push_receipts`].
    pub(crate) fn take_over(&self) -> u64 {
        let mut state = self.state.lock();
        state.generation += 1;
        let repush: Vec<u64> = std::mem::take(&mut state.pushed).into_iter().collect();
        for id in repush {
            if let Some((due, _)) = state.pending.get(&id) {
                let due = *due;
                state.schedule.push(Reverse((due, id)));
            }
        }
        let generation = state.generation;
        drop(state);
        self.wake.notify_waiters();
        generation
    }

    /// Due receipts (marked pushed) and the next due time, or `None` if `generation` lost the channel.
    fn take_due(&self, generation: u64) -> Option<(Vec<Push>, Option<Instant>)> {
        let mut state = self.state.lock();
        if state.generation != generation {
            return None;
        }
        let now = Instant::now();
        let mut due = Vec::new();
        while due.len() < PUSH_BATCH {
            match state.schedule.peek() {
                Some(Reverse((at, _))) if *at <= now => {}
                _ => break,
            }
            let Reverse((_, id)) = state.schedule.pop().expect("peeked");
            if let Some((_, receipt)) = state.pending.get(&id).cloned() {
                state.pushed.insert(id);
                due.push(receipt);
            }
        }
        let next = if due.len() == PUSH_BATCH { Some(now) } else { state.schedule.peek().map(|Reverse((at, _))| *at) };
        Some((due, next))
    }
}

/// The channels by `(client_id, channel)`; touched once per stream (at `Hello`), not per envelope.
#[derive(Default)]
pub(crate) struct ChannelDirectory {
    channels: Mutex<HashMap<(String, u32), Arc<Channel>>>,
    /// The channel of the latest `Hello`: where inbound messages go (any stream of the client can
    /// take them; the client routes them to the user's shard itself).
    latest: Mutex<Option<Arc<Channel>>>,
    /// Inbound messages created before any client said `Hello`; handed to the first channel.
    orphans: Mutex<Vec<InboundMessage>>,
    next_receipt_id: AtomicU64,
}

impl ChannelDirectory {
    pub(crate) fn channel(&self, client_id: &str, channel: u32) -> Arc<Channel> {
        let channel = self.channels.lock().entry((client_id.to_owned(), channel)).or_default().clone();
        *self.latest.lock() = Some(channel.clone());
        channel
    }

    /// Every channel's (term, leader) history, ordered by (client_id, channel).
    pub(crate) fn history(&self) -> Vec<ChannelHistory> {
        let mut channels: Vec<((String, u32), Arc<Channel>)> =
            self.channels.lock().iter().map(|(k, c)| (k.clone(), c.clone())).collect();
        channels.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        channels.into_iter().map(|((client_id, number), c)| c.history(&client_id, number)).collect()
    }

    /// The channel of the latest `Hello`, if any stream said one.
    pub(crate) fn latest(&self) -> Option<Arc<Channel>> {
        self.latest.lock().clone()
    }

    /// Queues an inbound message on the latest channel (due now); returns whether a channel took it.
    pub(crate) fn push_inbound(&self, message: InboundMessage, max_pending: usize, counters: &Counters) -> bool {
        let latest = self.latest.lock().clone();
        match latest {
            Some(channel) => {
                let due = Instant::now();
                channel.schedule([ScheduledReceipt { due, receipt: Push::Inbound(message) }], max_pending, counters);
                true
            }
            None => {
                self.orphans.lock().push(message);
                false
            }
        }
    }

    /// Inbound messages waiting for a first channel.
    pub(crate) fn take_orphans(&self) -> Vec<InboundMessage> {
        std::mem::take(&mut *self.orphans.lock())
    }

    /// A fresh receipt id (unique across the server's life, starting at 1).
    pub(crate) fn next_receipt_id(&self) -> u64 {
        self.next_receipt_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// One stream's first ack and first delivery, recorded on its channel once each: after both, a
/// stream's acks cost one branch.
pub(crate) struct FirstAcks {
    term: u64,
    leader: u64,
    ack: bool,
    delivery: bool,
}

impl FirstAcks {
    pub(crate) fn new(term: u64, leader: u64) -> Self {
        FirstAcks { term, leader, ack: false, delivery: false }
    }

    /// An ack sent on this stream at `at_ms` (`duplicate`: of an id acked before).
    pub(crate) fn note(&mut self, channel: &Channel, at_ms: i64, duplicate: bool) {
        if self.delivery || (self.ack && duplicate) {
            return;
        }
        self.ack = true;
        self.delivery = !duplicate;
        channel.record_ack(self.term, self.leader, at_ms, !duplicate);
    }
}

/// Pushes the channel's receipts to one stream as they fall due, until the stream closes or a newer
/// stream takes the channel over. Cancel-safe (the caller aborts it when the stream ends): a receipt
/// taken but not sent stays pending and is re-pushed on the next stream.
pub(crate) async fn push_receipts(
    channel: Arc<Channel>,
    generation: u64,
    out: mpsc::Sender<Result<ServerFrame, Status>>,
    counters: Arc<Counters>,
) {
    loop {
        let notified = channel.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let Some((due, next)) = channel.take_due(generation) else { return };
        let pushed = due.iter().filter(|p| matches!(p, Push::Receipt(_))).count() as u64;
        for push in due {
            if out.send(Ok(push.into_frame())).await.is_err() {
                return;
            }
        }
        bump(&counters.receipts_sent, pushed);
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut notified => {}
            () = sleep => {}
            () = out.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_record_the_first_hello_and_the_first_acks_of_each_pair() {
        let channel = Channel::default();
        channel.record_hello(3, 1, 1_000);
        let mut first = FirstAcks::new(3, 1);
        first.note(&channel, 1_100, true); // a resend: the first ack, not a delivery
        first.note(&channel, 1_200, true);
        first.note(&channel, 1_300, false);
        first.note(&channel, 1_400, false);
        channel.record_hello(3, 1, 2_000); // the same leader reconnects
        let mut again = FirstAcks::new(3, 1);
        again.note(&channel, 2_100, false);
        channel.record_hello(4, 2, 3_000);
        let h = channel.history("space", 0);
        assert_eq!(h.terms.len(), 2, "{h:?}");
        let t3 = &h.terms[0];
        assert_eq!((t3.term, t3.leader_node, t3.hello_unix_ms, t3.streams), (3, 1, 1_000, 2));
        assert_eq!((t3.first_ack_unix_ms, t3.first_delivery_unix_ms), (1_100, 1_300));
        let t4 = &h.terms[1];
        assert_eq!(
            (t4.term, t4.leader_node, t4.streams, t4.first_ack_unix_ms, t4.first_delivery_unix_ms),
            (4, 2, 1, 0, 0)
        );
    }

    #[test]
    fn terms_beyond_the_cap_drop_the_oldest_and_count_them() {
        let channel = Channel::default();
        for term in 1..=(MAX_TERMS_PER_CHANNEL as u64 + 3) {
            channel.record_hello(term, 1, term as i64);
        }
        let h = channel.history("space", 0);
        assert_eq!(h.terms.len(), MAX_TERMS_PER_CHANNEL);
        assert_eq!(h.terms_dropped, 3);
        assert_eq!(h.terms[0].term, 4, "the oldest went first");
    }
}
