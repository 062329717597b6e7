//! The knobs of the reference chat server: receipt timing, fault injection (latency, errors,
//! disconnects, stalled streams, misrouted receipts, offline and invalid recipients, rate limits, the per-user marketing limit) and state sizing. Each knob is a field
//! of [`ChatSimConfig`] (serde, with defaults) and a `ferry chatsim` flag (clap).

use anyhow::bail;

/// Seed used when none is given: fixed, so recipients keep their keys across chatsim restarts.
pub const DEFAULT_SEED: u64 = 0x6665_7272_7963_6874; // "ferrycht"

/// The reference chat server's configuration. `Default` is the behaviour of a healthy chat server.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct ChatSimConfig {
    /// Seed of every simulated recipient's keys and of the fault injection; the same seed gives the
    /// same recipient keys after a restart.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Milliseconds from an ack to the recipient's `delivered` receipt.
    #[arg(long, default_value_t = 50)]
    pub delivered_after_ms: u64,
    /// Milliseconds from an ack to the recipient's `read` receipt (never before `delivered`).
    #[arg(long, default_value_t = 200)]
    pub read_after_ms: u64,
    /// Whether recipients send `read` receipts at all (`--read-receipts false` turns them off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub read_receipts: bool,
    /// Share (0..=1) of delivered messages whose recipient writes back (an inbound text message to
    /// the business, when the message is read), opening its 24-hour customer-service window.
    #[arg(long, default_value_t = 0.0)]
    pub reply_rate: f64,
    /// Milliseconds each ack (every envelope result) is held back; results stay pipelined and ordered.
    #[arg(long, default_value_t = 0)]
    pub ack_latency_ms: u64,
    /// Fraction (0..=1) of envelopes answered TEMPORARILY_UNAVAILABLE.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Probability (0..=1), per envelope, of ending the stream abruptly instead of answering.
    #[arg(long, default_value_t = 0.0)]
    pub disconnect_rate: f64,
    /// Recipients whose wa_id starts with this are offline: acked, but their receipts are held until
    /// `offline_for_ms` after the server started.
    #[arg(long)]
    pub offline_prefix: Option<String>,
    /// How long (ms since start) recipients matching `offline_prefix` stay offline.
    #[arg(long, default_value_t = 0)]
    pub offline_for_ms: u64,
    /// Recipients whose wa_id starts with this are not WhatsApp users: RECIPIENT_INVALID.
    #[arg(long)]
    pub invalid_prefix: Option<String>,
    /// Messages per second accepted per recipient (0 = unlimited); over it: RATE_LIMITED.
    #[arg(long, default_value_t = 0)]
    pub rate_limit_per_recipient: u32,
    /// Recipients whose wa_id starts with this have reached the per-user marketing limit: every
    /// envelope to them is refused MARKETING_LIMITED (reference code 131049, `retry_after_ms` 0).
    #[arg(long, value_name = "DIGITS")]
    pub marketing_limit_prefix: Option<String>,
    /// Envelopes each stream answers (0 = no limit): after that many, the stream stops answering
    /// (it reads and drops every further envelope) but stays open, like a server that hangs
    /// without closing the connection. A new stream answers again.
    #[arg(long, default_value_t = 0)]
    pub stall_after: u64,
    /// Push every receipt to the stream that said `Hello` last, instead of the stream its envelope
    /// came on (a server without stream affinity: receipts arrive on another shard's stream).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub misroute_receipts: bool,
    /// Receipts kept per (client_id, channel) until acked; beyond it new receipts are dropped and
    /// counted in `receipts_dropped`.
    #[arg(long, default_value_t = 100_000)]
    pub max_pending_receipts_per_channel: usize,
    /// Mutex-protected shards of the per-recipient state (keys, sessions, acked ids).
    #[arg(long, default_value_t = 64)]
    pub state_shards: usize,
}

impl Default for ChatSimConfig {
    fn default() -> Self {
        ChatSimConfig {
            seed: DEFAULT_SEED,
            delivered_after_ms: 50,
            read_after_ms: 200,
            read_receipts: true,
            reply_rate: 0.0,
            ack_latency_ms: 0,
            error_rate: 0.0,
            disconnect_rate: 0.0,
            offline_prefix: None,
            offline_for_ms: 0,
            invalid_prefix: None,
            rate_limit_per_recipient: 0,
            marketing_limit_prefix: None,
            stall_after: 0,
            misroute_receipts: false,
            max_pending_receipts_per_channel: 100_000,
            state_shards: 64,
        }
    }
}

impl ChatSimConfig {
    /// A healthy server with fast receipts (delivered after 10 ms, read after 30 ms), for tests.
    pub fn for_test() -> Self {
        ChatSimConfig { delivered_after_ms: 10, read_after_ms: 30, ..ChatSimConfig::default() }
    }

    /// Checks every knob's range.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("disconnect_rate", self.disconnect_rate),
            ("reply_rate", self.reply_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                bail!("chatsim {name} is {rate}; expected a fraction between 0 and 1");
            }
        }
        if self.state_shards == 0 {
            bail!("chatsim state_shards is 0; expected at least 1");
        }
        if self.max_pending_receipts_per_channel == 0 {
            bail!("chatsim max_pending_receipts_per_channel is 0; expected at least 1");
        }
        for (name, prefix) in [
            ("offline_prefix", &self.offline_prefix),
            ("invalid_prefix", &self.invalid_prefix),
            ("marketing_limit_prefix", &self.marketing_limit_prefix),
        ] {
            match prefix.as_deref() {
                Some("") => {
                    bail!("chatsim {name} is empty (it would match every recipient); expected digits or no prefix")
                }
                Some(p) if !p.bytes().all(|b| b.is_ascii_digit()) => {
                    bail!("chatsim {name} is {p:?} (it would match no wa_id); expected digits or no prefix")
                }
                _ => {}
            }
        }
        Ok(())
    }
}
