//! Receipts of the reference chat server, per channel (`Hello.client_id`, `Hello.channel`): each
//! receipt is scheduled at ack time, pushed when due to the channel's current stream, and kept until
//! a `ReceiptAck` names it. A new stream with the same `Hello` takes the channel over and gets every
//! pushed-but-unacked receipt again. Memory is bounded: at most `max_pending` receipts per channel,
//! the rest dropped and counted.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_proto::chat::v1::{Receipt, ServerFrame, server_frame};
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

#[derive(Default)]
struct ChannelState {
    /// Every receipt not acked yet, by id.
    pending: HashMap<u64, Receipt>,
    /// Receipts not pushed to the current stream yet, by due time (acked ids are skipped lazily).
    schedule: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Receipts pushed (to this or an earlier stream) and not acked.
    pushed: BTreeSet<u64>,
    /// Bumped by every stream that takes the channel over; older pushers stop.
    generation: u64,
}

/// A receipt to schedule.
pub(crate) struct ScheduledReceipt {
    pub due: Instant,
    pub receipt: Receipt,
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
            state.schedule.push(Reverse((due, receipt.receipt_id)));
            state.pending.insert(receipt.receipt_id, receipt);
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

    /// Forgets acked receipts; returns how many were pending.
    pub(crate) fn ack(&self, receipt_ids: &[u64]) -> u64 {
        let mut state = self.state.lock();
        let mut acked = 0;
        for id in receipt_ids {
            if state.pending.remove(id).is_some() {
                state.pushed.remove(id);
                acked += 1;
            }
        }
        acked
    }

    /// A new stream takes the channel over: every pushed-but-unacked receipt is due again now.
    /// Returns the stream's generation for [`push_receipts`].
    pub(crate) fn take_over(&self) -> u64 {
        let mut state = self.state.lock();
        state.generation += 1;
        let now = Instant::now();
        let repush: Vec<u64> = std::mem::take(&mut state.pushed).into_iter().collect();
        for id in repush {
            state.schedule.push(Reverse((now, id)));
        }
        let generation = state.generation;
        drop(state);
        self.wake.notify_waiters();
        generation
    }

    /// Due receipts (marked pushed) and the next due time, or `None` if `generation` lost the channel.
    fn take_due(&self, generation: u64) -> Option<(Vec<Receipt>, Option<Instant>)> {
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
            if let Some(receipt) = state.pending.get(&id).cloned() {
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
    next_receipt_id: AtomicU64,
}

impl ChannelDirectory {
    pub(crate) fn channel(&self, client_id: &str, channel: u32) -> Arc<Channel> {
        self.channels.lock().entry((client_id.to_owned(), channel)).or_default().clone()
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
        let pushed = due.len() as u64;
        for receipt in due {
            let frame = ServerFrame { frame: Some(server_frame::Frame::Receipt(receipt)) };
            if out.send(Ok(frame)).await.is_err() {
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
