//! Admission into a shard's delivery window: stage "read the queue" of the delivery loop, the
//! per-recipient share.
//!
//! The window (`delivery.window` messages in memory) is shared by every recipient of the shard;
//! no recipient may take more than `delivery.max_window_per_recipient` of it, so one recipient
//! with a deep backlog that is rate-limited or backing off cannot fill the window and stall the
//! others. The loop's read cursor walks on past a recipient at its cap: that recipient's surplus
//! stays on disk, and [`Admission`] remembers, per recipient, the lowest seq that may be unread.
//! When the recipient drains to half its cap, the loop reads its surplus again from there (a
//! range scan up to the cursor that admits only that recipient's messages, in seq order, so its
//! FIFO keeps send order).
//!
//! Invariants (written as absences):
//! - No recipient has more than its cap of messages in memory.
//! - No message of a recipient with a surplus on disk is admitted by the forward scan: only the
//!   refill (from the lowest unread seq, in order) admits them, so none overtakes an older one.
//! - No low watermark passes an unread message: [`Admission::floor`] (the lowest unread seq of
//!   any recipient) bounds it, with the loaded messages and the cursor.
//!
//! [`Admission`] is pure bookkeeping; the reads are the loop's (`load_from_queue` below): a
//! cursor walks the queue forward from the shard's low watermark, each scan bounded by the room
//! left in the window and by the committed `next_seq`, so the loop never rescans. Reads per turn
//! are bounded too ([`READ_BUDGET_PER_TURN`]). Released held messages (paced templates) enter the
//! queue under their original, usually older, seq: the shard hands the loop their seqs
//! (`Shard::take_released`) and the loop point-reads those below its cursor (the scan reads the
//! others), within the same window. They join the back of their recipient's FIFO.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use ferry_model::{MessageId, MessageKey};
use ferry_shard::QueueRecord;

use crate::engine::{Loaded, Phase, RecipientKey, ShardLoop, recipient_key};
use crate::upstream::Upstream;

/// Most messages read from the queue in one scan.
const SCAN_CHUNK: usize = 1024;
/// Most queue records read in one turn of the loop (forward scan and refills together), so a
/// long stretch of one capped recipient's surplus does not hold up answers and acks.
const READ_BUDGET_PER_TURN: usize = 4 * SCAN_CHUNK;

/// A recipient's key (`sender ++ 0 ++ wa_id`), as the loop keys its FIFOs.
type Key = String;

/// Per-recipient counts of the window and the surplus left on disk.
#[derive(Debug)]
pub(crate) struct Admission {
    cap: usize,
    /// Messages of each recipient in memory (admitted, not yet removed after settling).
    loaded: HashMap<Key, usize>,
    /// Recipients with messages left on disk: the lowest seq of theirs that may be unread.
    surplus_from: HashMap<Key, u64>,
    /// `surplus_from` ordered by seq: its first entry is the floor of the low watermark.
    surplus_order: BTreeSet<(u64, Key)>,
    /// Recipients whose surplus should be read again now (drained to half their cap).
    refill: VecDeque<Key>,
    refill_queued: HashSet<Key>,
}

impl Admission {
    /// `cap` is the most messages of one recipient in memory (at least 1).
    pub(crate) fn new(cap: usize) -> Admission {
        Admission {
            cap: cap.max(1),
            loaded: HashMap::new(),
            surplus_from: HashMap::new(),
            surplus_order: BTreeSet::new(),
            refill: VecDeque::new(),
            refill_queued: HashSet::new(),
        }
    }

    /// The forward scan (or a released message) offers `seq` of recipient `key`: true to admit it
    /// (the caller then loads it and calls [`Admission::admitted`]); false when the recipient is
    /// at its cap or already has a surplus on disk: `seq` joins the surplus, read again later.
    pub(crate) fn offer(&mut self, key: &str, seq: u64) -> bool {
        if !self.surplus_from.contains_key(key) && self.loaded_of(key) < self.cap {
            return true;
        }
        self.add_surplus(key, seq);
        false
    }

    /// The refill offers `seq` of its recipient: true to admit it (room under the cap).
    pub(crate) fn has_room(&self, key: &str) -> bool {
        self.loaded_of(key) < self.cap
    }

    /// A message of `key` entered memory.
    pub(crate) fn admitted(&mut self, key: &str) {
        *self.loaded.entry(key.to_owned()).or_default() += 1;
    }

    /// A message of `key` left memory (settled durably).
    pub(crate) fn removed(&mut self, key: &str) {
        let Some(n) = self.loaded.get_mut(key) else { return };
        *n = n.saturating_sub(1);
        let left = *n;
        if left == 0 {
            self.loaded.remove(key);
        }
        if left <= self.cap / 2 && self.surplus_from.contains_key(key) && self.refill_queued.insert(key.to_owned()) {
            self.refill.push_back(key.to_owned());
        }
    }

    /// The next recipient whose surplus should be read, and the seq to read from.
    pub(crate) fn next_refill(&mut self) -> Option<(Key, u64)> {
        while let Some(key) = self.refill.pop_front() {
            self.refill_queued.remove(&key);
            if let Some(&from) = self.surplus_from.get(&key) {
                return Some((key, from));
            }
        }
        None
    }

    /// A refill of `key` could not finish now (the window is full or the turn's read budget is
    /// spent): it runs again first next time.
    pub(crate) fn retry_refill(&mut self, key: Key) {
        if self.refill_queued.insert(key.clone()) {
            self.refill.push_front(key);
        }
    }

    /// A refill of `key` read up to `next` (`None`: up to the cursor, nothing of theirs is left on
    /// disk below it).
    pub(crate) fn refilled(&mut self, key: &str, next: Option<u64>) {
        let Some(from) = self.surplus_from.remove(key) else { return };
        self.surplus_order.remove(&(from, key.to_owned()));
        if let Some(next) = next {
            self.add_surplus(key, next);
        }
    }

    /// The lowest seq left on disk for any recipient (unread, below the cursor).
    pub(crate) fn floor(&self) -> Option<u64> {
        self.surplus_order.first().map(|(seq, _)| *seq)
    }

    /// Recipients with a surplus on disk (a gauge).
    pub(crate) fn recipients_with_surplus(&self) -> usize {
        self.surplus_from.len()
    }

    fn loaded_of(&self, key: &str) -> usize {
        self.loaded.get(key).copied().unwrap_or(0)
    }

    fn add_surplus(&mut self, key: &str, seq: u64) {
        match self.surplus_from.get_mut(key) {
            Some(from) if *from <= seq => {}
            Some(from) => {
                self.surplus_order.remove(&(*from, key.to_owned()));
                *from = seq;
                self.surplus_order.insert((seq, key.to_owned()));
            }
            None => {
                self.surplus_from.insert(key.to_owned(), seq);
                self.surplus_order.insert((seq, key.to_owned()));
                // Nothing of theirs may be in memory to drain (all settled already): read at once.
                if self.loaded_of(key) <= self.cap / 2 && self.refill_queued.insert(key.to_owned()) {
                    self.refill.push_back(key.to_owned());
                }
            }
        }
    }
}

/// Most records a scan may return and still run inline on the tokio worker (see [`off_worker`]).
const INLINE_SCAN_RECORDS: u64 = 64;

/// Runs a queue scan of at most `records` records where it cannot stall the other tasks of this
/// tokio worker, unless it is small ([`INLINE_SCAN_RECORDS`]). A 1,024-record `scan_queue_range`
/// takes p50 1.46 ms, p99 13.9 ms on a loaded machine (the ignored test `queue_reads_cost`): on
/// the multi-thread runtime (`ferry serve`) `block_in_place` hands the worker's other tasks
/// (accepts among them) to another thread for the scan's duration. A small scan runs inline: the
/// hand-off costs more than it (a thread wake-up, often a new blocking thread). Under unary sends
/// each commit wakes the delivery loop for a scan of a few records; handing each off made tokio
/// run 250 threads and put ms on the accept path. On a current-thread runtime (unit tests) the
/// scan just runs.
pub(crate) fn off_worker_if_large<T>(records: u64, scan: impl FnOnce() -> T) -> T {
    if records <= INLINE_SCAN_RECORDS { scan() } else { off_worker(scan) }
}

/// Runs `scan` where it cannot stall the other tasks of this tokio worker (`block_in_place` on the
/// multi-thread runtime, inline on a current-thread one). Point reads (`get_queued`, p99 39 µs)
/// stay inline: the hand-off would cost about as much.
pub(crate) fn off_worker<T>(scan: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(scan),
        _ => scan(),
    }
}

impl<U: Upstream> ShardLoop<U> {
    /// Reads released held messages below the cursor (point reads), while the window has room.
    fn load_released(&mut self) {
        self.late.extend(self.shard.take_released(usize::MAX));
        while self.messages.len() < self.config.window
            && let Some(seq) = self.late.pop_front()
        {
            // At or past the cursor the scan reads it; loaded already (or settled: then it is no
            // longer in the queue) needs nothing.
            if seq >= self.cursor || self.messages.contains_key(&seq) {
                continue;
            }
            match self.shard.get_queued(seq) {
                Ok(Some(record)) => self.offer(seq, record),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(shard = %self.shard.id(), seq, error = %e, "cannot read a released message; retrying");
                    self.late.push_front(seq);
                    return;
                }
            }
        }
    }

    /// Reads the next messages of the queue into memory while the window has room: first the
    /// surplus of recipients that drained, then forward from the cursor. At most
    /// [`READ_BUDGET_PER_TURN`] records per call; `more_to_read` says when some are left.
    pub(crate) fn load_from_queue(&mut self) {
        self.load_released();
        self.more_to_read = false;
        let mut budget = READ_BUDGET_PER_TURN;
        self.refill_surplus(&mut budget);
        loop {
            let room = self.config.window.saturating_sub(self.messages.len());
            let until = self.shard.committed_next_seq();
            if room == 0 || self.cursor >= until {
                return;
            }
            if budget == 0 {
                self.more_to_read = true;
                return;
            }
            let limit = room.min(SCAN_CHUNK).min(budget);
            budget -= limit;
            let (shard, cursor) = (&self.shard, self.cursor);
            let at_most = (until - cursor).min(limit as u64);
            let chunk = match off_worker_if_large(at_most, || shard.scan_queue_range(cursor, until, limit)) {
                Ok(chunk) => chunk,
                Err(e) => {
                    tracing::error!(shard = %self.shard.id(), error = %e, "cannot read the queue; retrying");
                    return;
                }
            };
            let full = chunk.len() == limit;
            let last = chunk.last().map(|(seq, _)| *seq);
            for (seq, record) in chunk {
                self.offer(seq, record);
            }
            // Everything in [cursor, until) that was not returned is deleted (or returned):
            // continue after the last read one, or at `until` when the range is exhausted.
            if let (true, Some(last)) = (full, last) {
                self.cursor = self.cursor.max(last + 1);
            } else {
                self.cursor = until;
                return;
            }
        }
    }

    /// Reads again, below the cursor, the messages left on disk of recipients that drained to half
    /// their cap: only theirs, in seq order, until the cap, the window or `budget` is reached.
    fn refill_surplus(&mut self, budget: &mut usize) {
        while let Some((key, from)) = self.admission.next_refill() {
            let mut next = from;
            loop {
                if next >= self.cursor {
                    self.admission.refilled(&key, None);
                    break;
                }
                if !self.admission.has_room(&key) {
                    self.admission.refilled(&key, Some(next));
                    break;
                }
                if self.messages.len() >= self.config.window || *budget == 0 {
                    self.admission.refilled(&key, Some(next));
                    self.admission.retry_refill(key);
                    self.more_to_read |= *budget == 0;
                    return;
                }
                let limit = SCAN_CHUNK.min(*budget);
                *budget -= limit;
                let (shard, cursor) = (&self.shard, self.cursor);
                let chunk = match off_worker(|| shard.scan_queue_range(next, cursor, limit)) {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        tracing::error!(shard = %self.shard.id(), error = %e, "cannot read the queue; retrying");
                        self.admission.refilled(&key, Some(next));
                        self.admission.retry_refill(key);
                        return;
                    }
                };
                let exhausted = chunk.len() < limit;
                let mut stopped = false;
                for (seq, record) in chunk {
                    if self.messages.contains_key(&seq) || recipient_key(&record.sender, &record.wa_id) != key {
                        next = seq + 1;
                        continue;
                    }
                    if !self.admission.has_room(&key) || self.messages.len() >= self.config.window {
                        next = seq;
                        stopped = true;
                        break;
                    }
                    self.admit(seq, record, key.clone());
                    next = seq + 1;
                }
                if exhausted && !stopped {
                    next = self.cursor;
                }
            }
        }
    }

    /// Admits a message read from the queue, or leaves it on disk when its recipient is at its
    /// cap (`window.rs`).
    fn offer(&mut self, seq: u64, record: QueueRecord) {
        let key = recipient_key(&record.sender, &record.wa_id);
        if self.admission.offer(&key, seq) {
            self.admit(seq, record, key);
        }
    }

    fn admit(&mut self, seq: u64, record: QueueRecord, key: RecipientKey) {
        let message_id = MessageId::encode(MessageKey { shard: self.shard.id(), space: self.shard.id_space(), seq });
        self.admission.admitted(&key);
        let recipient = self.recipients.entry(key.clone()).or_default();
        recipient.waiting.push_back(seq);
        if recipient.waiting.len() == 1 {
            self.ready.push_back(key.clone());
        }
        self.messages.insert(
            seq,
            Loaded {
                record,
                message_id,
                key,
                phase: Phase::Waiting,
                attempts: 0,
                failures: 0,
                marketing_refusals: 0,
                ack_timer: None,
                unanswered: 0,
            },
        );
        self.stats.loaded_max.fetch_max(self.messages.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipient_at_its_cap_leaves_its_surplus_on_disk_and_refills_at_half() {
        let mut a = Admission::new(4);
        for seq in 1..=4 {
            assert!(a.offer("r", seq));
            a.admitted("r");
        }
        assert!(!a.offer("r", 5), "at the cap");
        assert!(a.offer("other", 6), "others are not held up");
        a.admitted("other");
        assert!(!a.offer("r", 7), "a surplus on disk: later seqs wait behind it");
        assert_eq!(a.floor(), Some(5));
        a.removed("r");
        assert_eq!(a.next_refill(), None, "3 of 4 loaded: not drained to half yet");
        a.removed("r");
        assert_eq!(a.next_refill(), Some(("r".to_owned(), 5)));
        // The refill admitted 5 and 7 and stopped at the cap with 9 unread.
        a.admitted("r");
        a.admitted("r");
        a.refilled("r", Some(9));
        assert_eq!(a.floor(), Some(9));
        for _ in 0..4 {
            a.removed("r");
        }
        assert_eq!(a.next_refill(), Some(("r".to_owned(), 9)));
        a.refilled("r", None);
        assert_eq!(a.floor(), None);
        assert!(a.offer("r", 20), "no surplus left: admitted by the scan again");
    }

    #[test]
    fn the_floor_is_the_lowest_unread_seq_of_any_recipient() {
        let mut a = Admission::new(1);
        assert!(a.offer("a", 1));
        a.admitted("a");
        assert!(a.offer("b", 2));
        a.admitted("b");
        assert!(!a.offer("b", 4));
        assert!(!a.offer("a", 3));
        assert_eq!(a.floor(), Some(3));
        // A released (older) message joins the surplus below its recipient's first unread seq.
        assert!(!a.offer("b", 0));
        assert_eq!(a.floor(), Some(0));
        a.refilled("b", None);
        assert_eq!(a.floor(), Some(3));
        assert_eq!(a.recipients_with_surplus(), 1);
    }

    #[test]
    fn a_surplus_with_nothing_in_memory_is_read_at_once() {
        let mut a = Admission::new(2);
        a.admitted("r");
        a.admitted("r");
        assert!(!a.offer("r", 10));
        a.removed("r");
        assert_eq!(a.next_refill(), Some(("r".to_owned(), 10)));
        a.retry_refill("r".to_owned());
        assert_eq!(a.next_refill(), Some(("r".to_owned(), 10)), "a retried refill runs again");
    }
}
