//! Receipts and inbound user messages of the reference chat server, per channel (`Hello.client_id`,
//! `Hello.channel`): each is scheduled (a receipt at ack time, an inbound message when the user
//! writes), pushed when due to the channel's current stream, and kept until a `ReceiptAck` names it. A new stream with the same `Hello` takes the channel over and gets every
//! pushed-but-unacked receipt again. Memory is bounded: at most `max_pending` receipts per channel,
//! the rest dropped and counted.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_proto::chat::v1::{InboundMessage, Receipt, ServerFrame, server_frame};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tonic::Status;

use crate::counters::{Counters, bump};

/// Receipts pushed per wake-up before yielding the lock.
const PUSH_BATCH: usize = 1024;

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
