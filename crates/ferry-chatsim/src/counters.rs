//! The reference chat server's counters: one relaxed atomic per `StatsResponse` field, bumped on
//! the hot path without locks and read by `ChatAdmin/Stats` and [`crate::ChatSim::stats`].

use std::sync::atomic::{AtomicU64, Ordering};

use ferry_proto::chat::v1::StatsResponse;

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Every counter `StatsResponse` reports.
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> StatsResponse {
                StatsResponse { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters!(
    unique_messages,
    duplicate_messages,
    decrypt_failures,
    envelopes_received,
    bundles_served,
    sessions_established,
    recipient_invalid,
    rate_limited,
    temporarily_unavailable,
    receipts_sent,
    receipts_acked,
    connections,
    session_unknown,
    receipts_dropped,
    disconnects_injected,
    inbound_sent,
    inbound_acked,
    marketing_limited,
    envelopes_unanswered,
    stale_term_refused,
    stale_term_envelopes,
);

/// `counter += by` (relaxed: counters order nothing).
pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}
