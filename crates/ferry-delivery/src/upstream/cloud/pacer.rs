//! A business number's pacing at `throughput_per_sec`, shared by every shard's upstream.
//!
//! Meta counts the requests that *arrive*; what leaves ferry has to be evenly spaced at the
//! moment it leaves, not at some step before. A request goes through two stages:
//!
//! - **Reservation** ([`Pacer::reserve`]) before the durable dispatch mark: at most a fifth of a
//!   second of the number's requests (at least 4) may be marked and not yet posted. The mark's
//!   synced write runs ahead of the request's send slot (its latency is hidden), and a crash
//!   leaves at most that many never-posted messages in doubt per number.
//! - **Send slot** ([`Pacer::slot`]) after the mark, right before the POST: slots are handed out
//!   first come, first served, one interval (`1 / throughput_per_sec`) apart, and a request
//!   sleeps until its own. Marks that one group-commit sync finished together still leave one
//!   interval apart (the bunches they left in before were past Meta's burst: 130429).
//!
//! **Slow-down** ([`Pacer::refused`], on 130429): the next free slot moves a pause away (4
//! intervals, doubling for each refusal in a row up to 1 s; an acceptance starts again), so
//! Meta's bucket drains while the number's requests keep their order. A refusal of a request
//! whose slot was handed out before the latest pause began does not lengthen it (it was sent
//! before ferry knew).
//!
//! Why not `governor` for the slots: a slot has to be a place in a queue that a refusal can push
//! back; governor's limiter is a check that waiters race for, with no way to pause it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The first pause after a 130429, in send intervals.
const FIRST_PAUSE_INTERVALS: u32 = 4;
/// The longest pause after refusals in a row.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// A number's pacer (see the module docs).
pub(super) struct Pacer {
    interval: Duration,
    reservations: Arc<Semaphore>,
    clock: Mutex<SendClock>,
}

#[derive(Debug)]
struct SendClock {
    /// The next free slot.
    next: Instant,
    /// 130429s in a row (reset by an acceptance).
    refusals: u32,
    /// Slots before this one were handed out before the latest pause began.
    paused_from: Option<Instant>,
}

/// A request's place between its reservation and its POST.
pub(super) struct Reservation {
    _permit: OwnedSemaphorePermit,
}

impl Pacer {
    pub(super) fn new(per_sec: u32) -> Pacer {
        let per_sec = per_sec.max(1);
        // A fifth of a second of requests (at least 4): enough to cover a slow sync.
        let lead = (per_sec as usize).div_ceil(5).max(4);
        Pacer {
            interval: Duration::from_secs(1) / per_sec,
            reservations: Arc::new(Semaphore::new(lead)),
            clock: Mutex::new(SendClock { next: Instant::now(), refusals: 0, paused_from: None }),
        }
    }

    fn clock(&self) -> MutexGuard<'_, SendClock> {
        // Nothing panics while holding it; a poisoned clock is still a clock.
        self.clock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many more requests of the number may be marked and not yet sent.
    #[cfg(test)]
    pub(super) fn lead(&self) -> usize {
        self.reservations.available_permits()
    }

    /// Waits for a reservation (first come, first served). Hold it until the request has its
    /// slot.
    pub(super) async fn reserve(&self) -> Reservation {
        let permit = self.reservations.clone().acquire_owned().await.expect("the pacer's semaphore is never closed");
        Reservation { _permit: permit }
    }

    /// Waits for the request's send slot; returns the slot (give it to [`Pacer::refused`]).
    /// Dropping the future gives up the slot (the ones after it do not move).
    pub(super) async fn slot(&self, reservation: Reservation) -> Instant {
        let slot = {
            let mut c = self.clock();
            let slot = c.next.max(Instant::now());
            c.next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
        // Only now: a request waiting for its slot counts as marked and not sent.
        drop(reservation);
        slot
    }

    /// A request sent at `slot` was refused 130429: pause the number (see the module docs).
    /// Returns the pause (zero: the refusal was of a request sent before the latest pause).
    pub(super) fn refused(&self, slot: Instant) -> Duration {
        let mut c = self.clock();
        if c.paused_from.is_some_and(|from| slot < from) {
            return Duration::ZERO;
        }
        c.refusals = c.refusals.saturating_add(1);
        let doublings = (c.refusals - 1).min(16);
        let pause = (self.interval * FIRST_PAUSE_INTERVALS).saturating_mul(1 << doublings).min(MAX_PAUSE);
        let from = c.next.max(Instant::now() + pause);
        c.next = from;
        c.paused_from = Some(from);
        pause
    }

    /// A request of the number was accepted: the next refusal pauses the shortest again.
    pub(super) fn accepted(&self) {
        self.clock().refusals = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_marked_together_leave_one_interval_apart() {
        let pacer = Arc::new(Pacer::new(100));
        let start = Instant::now();
        // Twenty requests whose marks finished at the same instant (one sync).
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let pacer = pacer.clone();
            let r = pacer.reserve().await;
            tasks.push(tokio::spawn(async move { pacer.slot(r).await }));
        }
        let mut slots = Vec::new();
        for t in tasks {
            slots.push(t.await.unwrap());
        }
        slots.sort();
        for (i, s) in slots.iter().enumerate() {
            assert_eq!(*s - start, Duration::from_millis(10) * i as u32, "slot {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_bound_the_requests_marked_and_not_sent() {
        let pacer = Pacer::new(100);
        assert_eq!(pacer.lead(), 20);
        let mut held = Vec::new();
        for _ in 0..pacer.lead() {
            held.push(pacer.reserve().await);
        }
        let more = tokio::time::timeout(Duration::from_secs(1), pacer.reserve()).await;
        assert!(more.is_err(), "a reservation past the lead waits");
        held.pop();
        assert!(tokio::time::timeout(Duration::from_millis(1), pacer.reserve()).await.is_ok());
        assert_eq!(Pacer::new(5).lead(), 4, "at least four");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_pauses_the_number_and_refusals_in_a_row_pause_longer() {
        let pacer = Pacer::new(100);
        let first = pacer.slot(pacer.reserve().await).await;
        let second = pacer.slot(pacer.reserve().await).await;
        assert_eq!(second - first, Duration::from_millis(10));
        // `second` was refused: the next slot is 4 intervals away.
        assert_eq!(pacer.refused(second), Duration::from_millis(40));
        // `first` was refused too, but it left before that pause: nothing more.
        assert_eq!(pacer.refused(first), Duration::ZERO);
        let at = Instant::now();
        let third = pacer.slot(pacer.reserve().await).await;
        assert_eq!(third - at, Duration::from_millis(40));
        // Refused again, no acceptance between: twice as long, then up to the cap.
        assert_eq!(pacer.refused(third), Duration::from_millis(80));
        let fourth = pacer.slot(pacer.reserve().await).await;
        assert_eq!(pacer.refused(fourth), Duration::from_millis(160));
        for _ in 0..10 {
            let s = pacer.slot(pacer.reserve().await).await;
            pacer.refused(s);
        }
        let s = pacer.slot(pacer.reserve().await).await;
        assert_eq!(pacer.refused(s), MAX_PAUSE);
        // An acceptance: the shortest pause again.
        pacer.accepted();
        let s = pacer.slot(pacer.reserve().await).await;
        assert_eq!(pacer.refused(s), Duration::from_millis(40));
    }
}
