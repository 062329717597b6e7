//! ferry's load generator: drives a ferry node over gRPC and reports what it sustained.
//!
//! Sends messages (`--types text=8,template=1,...`: text, image, template, interactive, location)
//! with unary `Send` (`--batch 1`), `SendBatch`, or a mix (`--unary-share`), over `--connections`
//! channels with at most `--concurrency` calls in flight, either open loop at `--rate` msg/s
//! (latency measured from each call's *scheduled* time, so a slow server cannot hide behind a
//! slowed-down client) or as fast as possible, for `--duration` or `--count`. With `--chatsim`, it
//! polls the chat server's `ChatAdmin/Stats` (`unique_messages`, minus a baseline taken before the
//! run) for end-to-end acks.
//!
//! Flow: [`args`] (the flags) → [`driver`] (scheduler, in-flight calls, sampler, progress bar) →
//! [`client`] (connections and one call) → [`report`] (percentiles, timeline, JSON) → [`plot`] (SVG).
//!
//! The `--json` keys (`accepted_per_sec`, `acked_per_sec`, `accept_latency_ms` {p50, p90, p99,
//! p999, max}, `errors`, `config`) and the flag names are public contract. The loadgen never
//! retries: a rejected message is counted under its error code and not sent again.

pub mod args;
pub mod client;
pub mod driver;
pub mod plot;
pub mod report;

pub use args::LoadgenArgs;
pub use driver::run;
pub use report::{Percentiles, Report};
