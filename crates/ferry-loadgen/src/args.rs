//! The loadgen's command-line contract: [`LoadgenArgs`] (flag names are public, see the crate doc)
//! and the duration parser behind `--duration`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Every knob of one load run. Embeddable in another CLI with `#[command(flatten)]`.
#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct LoadgenArgs {
    /// ferry's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// The chat server's gRPC address (`ChatAdmin/Stats`), for end-to-end acks; without it acked is
    /// not reported.
    #[arg(long)]
    pub chatsim: Option<String>,
    /// How long to send, e.g. `10s`, `500ms`, `2m` (default 10s unless --count is given).
    #[arg(long, value_parser = parse_duration, conflicts_with = "count")]
    #[serde(serialize_with = "serialize_opt_duration")]
    pub duration: Option<Duration>,
    /// Send this many messages in all instead of running for a duration.
    #[arg(long)]
    pub count: Option<u64>,
    /// Calls in flight at most.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// gRPC connections (HTTP/2 channels) the calls are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Messages per call: 1 = unary `Send`, more = `SendBatch`.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Share (0..=1) of calls sent as unary `Send`s instead of one `SendBatch` (with `--batch N`,
    /// such a call is N concurrent unary sends): a mix of both APIs.
    #[arg(long, default_value_t = 0.0)]
    pub unary_share: f64,
    /// Message-type mix as `TYPE=WEIGHT,...` from text, image, template, interactive, location
    /// (e.g. `text=8,template=1,image=1`; a bare `TYPE` weighs 1).
    #[arg(long, value_parser = crate::client::TypeMix::parse, default_value = "text")]
    pub types: crate::client::TypeMix,
    /// Messages per second, sent open loop at fixed intervals (omit = as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Text body size in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Distinct known recipients the messages are spread over.
    #[arg(long, default_value_t = 10_000)]
    pub recipients: u64,
    /// Share (0..=1) of messages sent to a recipient never used before.
    #[arg(long, default_value_t = 0.0)]
    pub new_recipients: f64,
    /// Business number to send from (`SendRequest.sender`); default: ferry's default sender. A
    /// comma-separated list spreads the messages over several numbers in turn (message `n` from
    /// the `n mod len`th), e.g. for a Cloud upstream with many numbers.
    #[arg(long, value_delimiter = ',')]
    pub sender: Vec<String>,
    /// Before sending, have every known recipient write to the business through chatsim's
    /// `SimulateInbound` (needs `--chatsim`), so text messages pass a ferry that enforces the
    /// 24-hour customer-service window. Messages to new recipients (`--new-recipients`) still need
    /// `--types template`.
    #[arg(long)]
    pub open_windows: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw accepted/s, acked/s and accept p99 per second to this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Connect with TLS (also implied by an `https://` target).
    #[arg(long)]
    pub tls: bool,
    /// PEM CA certificate to trust for TLS (default: the webpki roots).
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Bearer token sent as `authorization: Bearer T` on every call.
    #[arg(long, env = "FERRY_TOKEN")]
    #[serde(skip)]
    pub token: Option<String>,
    /// After sending, wait at most this long for the chat server to ack what was accepted.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    #[serde(serialize_with = "serialize_duration")]
    pub ack_timeout: Duration,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl LoadgenArgs {
    /// Defaults of every flag, pointed at `target`: for tests and embedding.
    pub fn for_target(target: impl Into<String>) -> Self {
        LoadgenArgs {
            target: target.into(),
            chatsim: None,
            duration: None,
            count: None,
            concurrency: 64,
            connections: 4,
            batch: 1,
            unary_share: 0.0,
            types: crate::client::TypeMix::default(),
            rate: None,
            payload: 100,
            recipients: 10_000,
            new_recipients: 0.0,
            sender: Vec::new(),
            open_windows: false,
            json: None,
            plot: None,
            tls: false,
            ca_cert: None,
            token: None,
            ack_timeout: Duration::from_secs(30),
            quiet: false,
        }
    }

    /// Checks the values clap cannot: ranges and combinations.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.concurrency >= 1, "--concurrency must be at least 1");
        anyhow::ensure!(self.connections >= 1, "--connections must be at least 1");
        anyhow::ensure!((1..=1000).contains(&self.batch), "--batch must be 1..=1000 (ferry's SendBatch limit)");
        anyhow::ensure!(self.recipients >= 1, "--recipients must be at least 1");
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.new_recipients),
            "--new-recipients is a share: expected 0..=1, got {}",
            self.new_recipients
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.unary_share),
            "--unary-share is a share: expected 0..=1, got {}",
            self.unary_share
        );
        if let Some(rate) = self.rate {
            anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be a positive number of messages per second");
        }
        anyhow::ensure!(self.count != Some(0), "--count must be at least 1");
        anyhow::ensure!(!self.open_windows || self.chatsim.is_some(), "--open-windows needs --chatsim ADDR");
        anyhow::ensure!(
            !self.open_windows || self.sender.len() <= 1,
            "--open-windows opens the windows of one business: expected at most one --sender with it"
        );
        anyhow::ensure!(
            self.sender.iter().all(|s| !s.trim().is_empty()),
            "--sender has an empty entry: expected business numbers separated by commas"
        );
        Ok(())
    }

    /// How long to send when no `--count` is given.
    pub fn effective_duration(&self) -> Option<Duration> {
        match self.count {
            Some(_) => None,
            None => Some(self.duration.unwrap_or(Duration::from_secs(10))),
        }
    }
}

/// Parses `10s`, `250ms`, `2m`, `1h`, `1.5s`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("expected a duration like 10s or 500ms, got {s:?}"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} in {s:?}: expected ms, s, m or h")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn serialize_opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("10 parsecs").is_err());
    }
}
