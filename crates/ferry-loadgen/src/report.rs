//! The result of a run: [`Report`] (serialized by `--json`, keys are public contract), its text
//! summary, and the arithmetic behind it: latency percentiles, the per-second timeline and the
//! accept→ack latency estimate from the sampled counters.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::LoadgenArgs;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn from_micros(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |v: u64| v as f64 / 1e3;
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// One second of the run (second `second` covers `[second - 1, second)` after the start).
#[derive(Debug, Clone, Serialize)]
pub struct SecondPoint {
    pub second: u64,
    pub accepted_per_sec: f64,
    pub acked_per_sec: Option<f64>,
    pub errors_per_sec: f64,
    /// p99 accept latency of the calls that completed in this second.
    pub accept_p99_ms: Option<f64>,
}

/// Counters sampled every [`crate::driver::SAMPLE_EVERY`], relative to the start of sending.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub t_secs: f64,
    pub accepted: u64,
    pub errors: u64,
    pub acked: Option<u64>,
}

/// What one run measured. `--json` writes exactly this.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Accepted messages per second of the sending phase (first send to last answer).
    pub accepted_per_sec: f64,
    /// Messages acked by the chat server per second, from the first send until the ack count reached
    /// its final value; `null` without `--chatsim`.
    pub acked_per_sec: Option<f64>,
    /// Accept latency per message, measured from the call's *scheduled* time (open loop) to its answer.
    pub accept_latency_ms: Percentiles,
    /// Estimated accept→ack latency; `null` without `--chatsim`. See `accept_to_ack_method`.
    pub accept_to_ack_latency_ms: Option<Percentiles>,
    /// Rejected messages by code: ferry's reference code (`ferry-error-code` metadata or a
    /// SendBatch result's `error.code`), else `grpc:<Code>`.
    pub errors: BTreeMap<String, u64>,
    pub errors_total: u64,
    pub sent: u64,
    pub accepted: u64,
    pub acked: Option<u64>,
    pub calls: u64,
    pub send_secs: f64,
    pub ack_secs: Option<f64>,
    pub accept_to_ack_method: &'static str,
    pub config: LoadgenArgs,
    pub timeline: Vec<SecondPoint>,
}

pub const ACCEPT_TO_ACK_METHOD: &str = "counters sampled every 50 ms: for 1,000 evenly spaced k up to the final ack count, \
     (first sample where chatsim's unique_messages - baseline >= k) - (first sample where accepted >= k); \
     assumes acks arrive in accept order; resolution 50 ms";

/// Accept→ack latency estimate from the sampled counters (see [`ACCEPT_TO_ACK_METHOD`]).
pub fn estimate_accept_to_ack(samples: &[Sample]) -> Option<Percentiles> {
    let accepted = samples.last()?.accepted;
    let acked = samples.iter().filter_map(|s| s.acked).max()?;
    let reach = acked.min(accepted);
    if reach == 0 {
        return None;
    }
    let mut h = Histogram::<u64>::new(3).ok()?;
    for i in 1..=1000u64 {
        let k = (reach * i).div_ceil(1000).max(1);
        let accepted_at = samples.iter().find(|s| s.accepted >= k)?.t_secs;
        let acked_at = samples.iter().find(|s| s.acked.is_some_and(|a| a >= k))?.t_secs;
        h.record(((acked_at - accepted_at).max(0.0) * 1e6) as u64).ok()?;
    }
    Some(Percentiles::from_micros(&h))
}

/// Per-second rates from the samples; `p99s[i]` is the accept histogram of second `i + 1`.
pub fn timeline(samples: &[Sample], p99s: &[Histogram<u64>]) -> Vec<SecondPoint> {
    let Some(last) = samples.last() else { return Vec::new() };
    let at = |t: f64| samples.iter().rev().find(|s| s.t_secs <= t).copied();
    let seconds = last.t_secs.ceil() as u64;
    let mut points = Vec::new();
    for second in 1..=seconds {
        let (Some(a), Some(b)) = (at(second as f64 - 1.0), at(second as f64)) else { continue };
        let span = (b.t_secs - a.t_secs).max(1e-3);
        let p99 =
            p99s.get(second as usize - 1).filter(|h| !h.is_empty()).map(|h| h.value_at_quantile(0.99) as f64 / 1e3);
        points.push(SecondPoint {
            second,
            accepted_per_sec: (b.accepted - a.accepted) as f64 / span,
            acked_per_sec: match (a.acked, b.acked) {
                (Some(x), Some(y)) => Some(y.saturating_sub(x) as f64 / span),
                _ => None,
            },
            errors_per_sec: (b.errors - a.errors) as f64 / span,
            accept_p99_ms: p99,
        });
    }
    points
}

impl Report {
    /// The human summary the binary prints.
    pub fn summary(&self) -> String {
        let mode = if self.config.batch == 1 {
            "unary Send".to_owned()
        } else {
            format!("SendBatch of {}", self.config.batch)
        };
        let rate = match self.config.rate {
            Some(r) => format!("open loop at {r} msg/s"),
            None => "as fast as possible".to_owned(),
        };
        let p = |p: &Percentiles| {
            format!("p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms", p.p50, p.p90, p.p99, p.p999, p.max)
        };
        let mut out = format!(
            "ferry-loadgen: {mode}, {rate}, {} in flight over {} connections, {} B text, {} recipients, {:.0}% new\n",
            self.config.concurrency,
            self.config.connections,
            self.config.payload,
            self.config.recipients,
            self.config.new_recipients * 100.0
        );
        out += &format!(
            "  sent {} in {} calls; accepted {} in {:.2} s = {:.0} msg/s\n",
            self.sent, self.calls, self.accepted, self.send_secs, self.accepted_per_sec
        );
        out += &format!("  accept latency (from scheduled time): {}\n", p(&self.accept_latency_ms));
        match (self.acked, self.acked_per_sec, self.ack_secs) {
            (Some(acked), Some(per_sec), Some(secs)) => {
                out += &format!("  acked by the chat server: {acked} in {secs:.2} s = {per_sec:.0} msg/s end to end\n");
                if let Some(l) = &self.accept_to_ack_latency_ms {
                    out += &format!("  accept→ack latency (estimated, 50 ms resolution): {}\n", p(l));
                }
            }
            _ => out += "  acked: not measured (no --chatsim)\n",
        }
        if self.errors.is_empty() {
            out += "  errors: none\n";
        } else {
            let list: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            out += &format!("  errors: {} ({})\n", self.errors_total, list.join(", "));
        }
        out
    }
}
