//! The coordinator's Prometheus series (through the `metrics` facade; `ferry serve` installs the
//! exporter, without one every call here is a no-op).
//!
//! Every send, gRPC or JSON, passes [`crate::Coordinator::send_many`], which counts it here; the
//! ingest layers call [`note_rejected`] only for requests refused before the coordinator saw them
//! (a malformed body, an oversized batch), so no rejection is counted twice.

use std::time::Duration;

use ferry_model::ApiError;

use crate::Accepted;

/// Counter: messages durably accepted (idempotent replays are not new messages: not counted).
pub const MESSAGES_ACCEPTED_TOTAL: &str = "ferry_messages_accepted_total";
/// Counter, label `code` (the ferry error code, e.g. `100`, `1013`, `131047`): refused sends.
pub const MESSAGES_REJECTED_TOTAL: &str = "ferry_messages_rejected_total";
/// Counter: answers that replayed the first id of an idempotency key.
pub const IDEMPOTENT_REPLAYS_TOTAL: &str = "ferry_idempotent_replays_total";
/// Histogram (seconds): from the coordinator receiving a send (or batch) to its durable answer,
/// recorded once per accepted message.
pub const ACCEPT_LATENCY_SECONDS: &str = "ferry_accept_latency_seconds";

/// Counts one send refused with `e`.
pub fn note_rejected(e: &ApiError) {
    metrics::counter!(MESSAGES_REJECTED_TOTAL, "code" => e.code.code().to_string()).increment(1);
}

/// Counts the outcomes of one `send_many` call that took `elapsed`.
pub(crate) fn note_outcomes(results: &[Result<Accepted, ApiError>], elapsed: Duration) {
    let (mut accepted, mut replays) = (0u64, 0u64);
    for r in results {
        match r {
            Ok(a) if a.idempotent_replay => replays += 1,
            Ok(_) => accepted += 1,
            Err(e) => note_rejected(e),
        }
    }
    if accepted > 0 {
        metrics::counter!(MESSAGES_ACCEPTED_TOTAL).increment(accepted);
        metrics::histogram!(ACCEPT_LATENCY_SECONDS).record_many(elapsed.as_secs_f64(), accepted as usize);
    }
    if replays > 0 {
        metrics::counter!(IDEMPOTENT_REPLAYS_TOTAL).increment(replays);
    }
}
