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
//! Pure bookkeeping: the loop does the reads (`shard_loop.rs`, `load_from_queue`).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

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
