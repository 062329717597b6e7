//! The knobs of the reference Cloud API server: business numbers and their tokens, Meta's limits
//! (per-number throughput, per-pair rate), status timing, the webhook target, and fault injection.
//! Each knob is a field of [`CloudSimConfig`] (serde, with defaults) and a `ferry cloudsim` flag
//! (clap).

use std::str::FromStr;

use anyhow::bail;

/// Seed used when none is given (fault rolls and wamids are derived from it).
pub const DEFAULT_SEED: u64 = 0x6665_7272_7963_6c64; // "ferrycld"
/// The token of every number when no `--number` is given.
pub const DEFAULT_TOKEN: &str = "cloudsim-token";

/// One business number: `--number ID=TOKEN[:RATE[:PHONE]]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberSpec {
    /// The phone number id of the send path (`/{version}/{phone_number_id}/messages`).
    pub phone_number_id: String,
    /// The bearer token it accepts.
    pub token: String,
    /// Messages per second it takes (over it: 130429); `None`: `throughput_per_sec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_per_sec: Option<u32>,
    /// The business phone number (digits; `metadata.display_phone_number` of its webhooks, and a
    /// send to it is 131021). `None`: the phone number id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
}

impl FromStr for NumberSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<NumberSpec, String> {
        let expected = "expected ID=TOKEN[:RATE[:PHONE]], e.g. 106540352242922=secret:80:15550100000";
        let (id, rest) = s.split_once('=').ok_or_else(|| format!("number `{s}` has no `=`: {expected}"))?;
        let mut parts = rest.splitn(3, ':');
        let token = parts.next().unwrap_or_default();
        let rate = parts.next().filter(|r| !r.is_empty());
        let phone = parts.next().filter(|p| !p.is_empty());
        if id.is_empty() || token.is_empty() {
            return Err(format!("number `{s}` has an empty id or token: {expected}"));
        }
        let throughput_per_sec = rate
            .map(|r| {
                r.parse::<u32>().map_err(|_| format!("number `{s}`: rate `{r}` is not a whole number: {expected}"))
            })
            .transpose()?;
        Ok(NumberSpec {
            phone_number_id: id.to_owned(),
            token: token.to_owned(),
            throughput_per_sec,
            phone_number: phone.map(str::to_owned),
        })
    }
}

/// A recipient prefix and a Graph error code: `--refuse PREFIX=CODE`, `--fail PREFIX=CODE`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeRule {
    /// wa_ids starting with these digits match.
    pub prefix: String,
    pub code: u32,
}

impl FromStr for CodeRule {
    type Err = String;

    fn from_str(s: &str) -> Result<CodeRule, String> {
        let expected = "expected PREFIX=CODE, e.g. 1555013=131047";
        let (prefix, code) = s.split_once('=').ok_or_else(|| format!("rule `{s}` has no `=`: {expected}"))?;
        let code = code.parse::<u32>().map_err(|_| format!("rule `{s}`: code `{code}` is not a number: {expected}"))?;
        Ok(CodeRule { prefix: prefix.to_owned(), code })
    }
}

/// The reference Cloud API server's configuration. `Default` is a healthy Cloud API with Meta's
/// default limits, serving any phone number id with [`DEFAULT_TOKEN`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct CloudSimConfig {
    /// Where status and inbound webhooks are POSTed (`http://HOST:PORT/PATH`). Unset: none are sent.
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// App secret signing every webhook (`X-Hub-Signature-256: sha256=<hex HMAC-SHA256>`).
    #[arg(long, default_value = "")]
    pub app_secret: String,
    /// `entry[].id` of the webhooks (the WhatsApp Business Account id).
    #[arg(long, default_value = "100000000000000")]
    pub business_account_id: String,
    /// A business number it serves, `ID=TOKEN[:RATE[:PHONE]]` (repeatable). None given: every
    /// phone number id is served with the token of `--token` at `--throughput-per-sec`.
    #[arg(long = "number", value_name = "ID=TOKEN[:RATE[:PHONE]]")]
    pub numbers: Vec<NumberSpec>,
    /// The token of every phone number id when no `--number` is given.
    #[arg(long, default_value = DEFAULT_TOKEN)]
    pub token: String,
    /// Messages per second a number takes unless its `--number` says otherwise (over it: 130429).
    #[arg(long, default_value_t = 80)]
    pub throughput_per_sec: u32,
    /// Messages a number may send at once above its rate (GCRA burst); 0: a tenth of its rate
    /// (at least 1).
    #[arg(long, default_value_t = 0)]
    pub throughput_burst: u32,
    /// Pair rate limit: one message per this many ms from a number to one recipient, on average
    /// (over it: 131056); 0 turns the limit off. Meta: about one per 6 s.
    #[arg(long, default_value_t = 6_000)]
    pub pair_interval_ms: u64,
    /// Messages a pair may send at once before the pair interval applies (Meta: bursts borrow
    /// against later quota).
    #[arg(long, default_value_t = 45)]
    pub pair_burst: u32,
    /// A phone number id whose token has expired: every send is 190 (repeatable).
    #[arg(long = "expired-number", value_name = "ID")]
    pub expired_numbers: Vec<String>,
    /// Country calling code prepended to a `to` without a leading `+`.
    #[arg(long, default_value = "1")]
    pub default_country_code: String,
    /// Milliseconds from taking a message to its `sent` webhook.
    #[arg(long, default_value_t = 0)]
    pub sent_after_ms: u64,
    /// Milliseconds from taking a message to its `delivered` webhook.
    #[arg(long, default_value_t = 50)]
    pub delivered_after_ms: u64,
    /// Milliseconds from taking a message to its `read` webhook (never before `delivered`).
    #[arg(long, default_value_t = 200)]
    pub read_after_ms: u64,
    /// Whether recipients send `read` statuses at all.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub read_receipts: bool,
    /// Share (0..=1) of taken messages whose recipient writes back (an inbound text webhook after
    /// the `read`), decided by the message's marker (or wamid), so a resend does not roll again.
    #[arg(long, default_value_t = 0.0)]
    pub reply_rate: f64,
    /// Fraction (0..=1) of sends answered 500 with Graph error 131000 (not taken).
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Fraction (0..=1) of sends answered 502 with an HTML body, no Graph error (not taken).
    #[arg(long, default_value_t = 0.0)]
    pub server_error_rate: f64,
    /// Fraction (0..=1) of sends whose connection is closed without an answer before the message
    /// is taken.
    #[arg(long, default_value_t = 0.0)]
    pub drop_before_rate: f64,
    /// Fraction (0..=1) of sends whose connection is closed without an answer after the message
    /// was taken (statuses follow): the in-doubt case.
    #[arg(long, default_value_t = 0.0)]
    pub drop_after_rate: f64,
    /// Fraction (0..=1) of sends taken at once and answered `slow_ms` later (past the client's
    /// timeout): the in-doubt case.
    #[arg(long, default_value_t = 0.0)]
    pub slow_rate: f64,
    /// How long a slow answer waits (ms).
    #[arg(long, default_value_t = 30_000)]
    pub slow_ms: u64,
    /// Recipients whose wa_id starts with these digits are not WhatsApp users: the send is taken
    /// (200) and a `failed` webhook with 131026 follows, as Meta does.
    #[arg(long, value_name = "DIGITS")]
    pub invalid_prefix: Option<String>,
    /// Sends to wa_ids starting with PREFIX are refused synchronously with Graph error CODE
    /// (repeatable; e.g. `1555013=131047`).
    #[arg(long = "refuse", value_name = "PREFIX=CODE")]
    pub refuse: Vec<CodeRule>,
    /// Sends to wa_ids starting with PREFIX are taken, then `failed` with CODE in a webhook
    /// (repeatable; e.g. `1555014=131049`).
    #[arg(long = "fail", value_name = "PREFIX=CODE")]
    pub fail: Vec<CodeRule>,
    /// Extra milliseconds added to every webhook's time.
    #[arg(long, default_value_t = 0)]
    pub webhook_delay_ms: u64,
    /// Fraction (0..=1) of messages whose statuses are posted in reverse order (`read` first,
    /// `sent` last).
    #[arg(long, default_value_t = 0.0)]
    pub webhook_reorder_rate: f64,
    /// Fraction (0..=1) of webhook statuses posted a second time (20 ms later).
    #[arg(long, default_value_t = 0.0)]
    pub webhook_duplicate_rate: f64,
    /// Statuses (of one number) per webhook POST at most; Meta sends one.
    #[arg(long, default_value_t = 1)]
    pub webhook_batch: usize,
    /// Webhook POSTs in flight at once.
    #[arg(long, default_value_t = 32)]
    pub webhook_concurrency: usize,
    /// A webhook POST with no answer after this long (ms) failed; it is retried.
    #[arg(long, default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,
    /// First retry delay of a failed webhook POST (ms); it doubles up to 60 s, and retries go on
    /// until the server stops.
    #[arg(long, default_value_t = 500)]
    pub webhook_retry_ms: u64,
    /// Seed of the fault rolls.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
}

impl Default for CloudSimConfig {
    fn default() -> Self {
        CloudSimConfig {
            webhook_url: None,
            app_secret: String::new(),
            business_account_id: "100000000000000".into(),
            numbers: Vec::new(),
            token: DEFAULT_TOKEN.into(),
            throughput_per_sec: 80,
            throughput_burst: 0,
            pair_interval_ms: 6_000,
            pair_burst: 45,
            expired_numbers: Vec::new(),
            default_country_code: "1".into(),
            sent_after_ms: 0,
            delivered_after_ms: 50,
            read_after_ms: 200,
            read_receipts: true,
            reply_rate: 0.0,
            error_rate: 0.0,
            server_error_rate: 0.0,
            drop_before_rate: 0.0,
            drop_after_rate: 0.0,
            slow_rate: 0.0,
            slow_ms: 30_000,
            invalid_prefix: None,
            refuse: Vec::new(),
            fail: Vec::new(),
            webhook_delay_ms: 0,
            webhook_reorder_rate: 0.0,
            webhook_duplicate_rate: 0.0,
            webhook_batch: 1,
            webhook_concurrency: 32,
            webhook_timeout_ms: 10_000,
            webhook_retry_ms: 500,
            seed: DEFAULT_SEED,
        }
    }
}

impl CloudSimConfig {
    /// A healthy server with fast statuses (delivered after 10 ms, read after 30 ms), for tests.
    pub fn for_test() -> Self {
        CloudSimConfig { delivered_after_ms: 10, read_after_ms: 30, webhook_retry_ms: 50, ..CloudSimConfig::default() }
    }

    /// The burst of a number taking `rate` messages per second.
    pub(crate) fn burst_for(&self, rate: u32) -> u32 {
        if self.throughput_burst > 0 { self.throughput_burst } else { rate.div_ceil(10).max(1) }
    }

    /// Checks every knob's range.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("server_error_rate", self.server_error_rate),
            ("drop_before_rate", self.drop_before_rate),
            ("drop_after_rate", self.drop_after_rate),
            ("slow_rate", self.slow_rate),
            ("reply_rate", self.reply_rate),
            ("webhook_reorder_rate", self.webhook_reorder_rate),
            ("webhook_duplicate_rate", self.webhook_duplicate_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                bail!("cloudsim {name} is {rate}; expected a fraction between 0 and 1");
            }
        }
        if let Some(url) = &self.webhook_url {
            if !url.starts_with("http://") || url.parse::<hyper::Uri>().is_err() {
                bail!("cloudsim webhook_url is {url:?}; expected an http://HOST:PORT/PATH url");
            }
            if self.app_secret.is_empty() {
                bail!(
                    "cloudsim app_secret is empty while webhook_url is set; expected the app secret that signs webhooks"
                );
            }
        }
        if self.throughput_per_sec == 0 {
            bail!("cloudsim throughput_per_sec is 0; expected at least 1 message per second");
        }
        if self.pair_interval_ms > 0 && self.pair_burst == 0 {
            bail!("cloudsim pair_burst is 0; expected at least 1 (or pair_interval_ms 0 to turn the pair limit off)");
        }
        if self.numbers.is_empty() && self.token.is_empty() {
            bail!("cloudsim token is empty and no number is given; expected a token or at least one --number");
        }
        for (i, n) in self.numbers.iter().enumerate() {
            if n.phone_number_id.is_empty() || n.token.is_empty() {
                bail!("cloudsim numbers[{i}] has an empty phone_number_id or token; expected both");
            }
            if n.throughput_per_sec == Some(0) {
                bail!("cloudsim number {} has throughput 0; expected at least 1", n.phone_number_id);
            }
            if self.numbers[..i].iter().any(|o| o.phone_number_id == n.phone_number_id) {
                bail!("cloudsim number {} is given twice; expected each phone_number_id once", n.phone_number_id);
            }
        }
        for id in &self.expired_numbers {
            if !self.numbers.is_empty() && !self.numbers.iter().any(|n| &n.phone_number_id == id) {
                bail!("cloudsim expired number {id} is not one of the --number ids; expected one of them");
            }
        }
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if let Some(p) = &self.invalid_prefix
            && !digits(p)
        {
            bail!("cloudsim invalid_prefix is {p:?}; expected digits");
        }
        for rule in self.refuse.iter().chain(&self.fail) {
            if !digits(&rule.prefix) {
                bail!("cloudsim rule prefix {:?} (code {}); expected digits", rule.prefix, rule.code);
            }
        }
        if !digits(&self.default_country_code) {
            bail!("cloudsim default_country_code is {:?}; expected digits", self.default_country_code);
        }
        if self.webhook_batch == 0 || self.webhook_concurrency == 0 {
            bail!("cloudsim webhook_batch and webhook_concurrency must be at least 1");
        }
        if self.webhook_retry_ms == 0 || self.webhook_timeout_ms == 0 {
            bail!("cloudsim webhook_retry_ms and webhook_timeout_ms must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_spec_parses_every_form() {
        let n: NumberSpec = "106540352242922=secret".parse().unwrap();
        assert_eq!((n.phone_number_id.as_str(), n.token.as_str()), ("106540352242922", "secret"));
        assert_eq!((n.throughput_per_sec, n.phone_number), (None, None));
        let n: NumberSpec = "1=t:250:15550100000".parse().unwrap();
        assert_eq!(n.throughput_per_sec, Some(250));
        assert_eq!(n.phone_number.as_deref(), Some("15550100000"));
        let n: NumberSpec = "1=t::15550100000".parse().unwrap();
        assert_eq!((n.throughput_per_sec, n.phone_number.as_deref()), (None, Some("15550100000")));
        for bad in ["1", "=t", "1=", "1=t:fast"] {
            let e = bad.parse::<NumberSpec>().unwrap_err();
            assert!(e.contains("expected ID=TOKEN"), "{bad}: {e}");
        }
    }

    #[test]
    fn code_rules_and_validation() {
        assert_eq!("1555=131047".parse::<CodeRule>().unwrap(), CodeRule { prefix: "1555".into(), code: 131047 });
        assert!("1555".parse::<CodeRule>().is_err());
        assert!(CloudSimConfig::default().validate().is_ok());
        let no_secret =
            CloudSimConfig { webhook_url: Some("http://127.0.0.1:1/w".into()), ..CloudSimConfig::default() };
        assert!(no_secret.validate().unwrap_err().to_string().contains("app_secret"));
        let https =
            CloudSimConfig { webhook_url: Some("https://x/w".into()), app_secret: "s".into(), ..Default::default() };
        assert!(https.validate().is_err());
        let bad_rate = CloudSimConfig { slow_rate: 1.5, ..CloudSimConfig::default() };
        assert!(bad_rate.validate().unwrap_err().to_string().contains("slow_rate"));
        let twice = CloudSimConfig {
            numbers: vec!["1=a".parse().unwrap(), "1=b".parse().unwrap()],
            ..CloudSimConfig::default()
        };
        assert!(twice.validate().unwrap_err().to_string().contains("twice"));
        assert_eq!(CloudSimConfig::default().burst_for(80), 8);
        assert_eq!(CloudSimConfig::default().burst_for(5), 1);
    }
}
