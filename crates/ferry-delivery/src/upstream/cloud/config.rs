//! `[cloud]` and `[[cloud.numbers]]` of `ferry.toml`: the WhatsApp Cloud API upstream
//! (`upstream_kind = "cloud"`).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// What becomes of an in-doubt message (a POST that timed out or lost its connection after the
/// body was written) when no webhook status named it within `reconcile_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnresolved {
    /// Sent again (it may then reach the user twice; counted in `ferry_cloud_in_doubt_resent_total`).
    #[default]
    Resend,
    /// Failed (131000, "in doubt: not resent") rather than risk a duplicate.
    Fail,
}

/// `[cloud]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudConfig {
    /// The Graph API's base URL (`https://graph.facebook.com`; `http://` for `ferry cloudsim`).
    pub base_url: String,
    /// The Graph API version of the send path, `/{api_version}/{phone_number_id}/messages`.
    pub api_version: String,
    /// The app secret: `X-Hub-Signature-256` of Meta's webhooks is checked with it. Required in
    /// cloud mode (env `FERRY_CLOUD_APP_SECRET`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_secret: Option<String>,
    /// The verify token of the webhook subscription handshake. Required in cloud mode (env
    /// `FERRY_CLOUD_VERIFY_TOKEN`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_token: Option<String>,
    /// Longest wait for the answer of one send request (ms); past it the message is in doubt.
    pub request_timeout_ms: u64,
    /// How long an in-doubt message waits for a webhook status naming it before `on_unresolved`.
    pub reconcile_secs: u64,
    pub on_unresolved: OnUnresolved,
    /// A number Meta refused at number level (190, 10, 200, 131048, 131031, 368, 131042, 131045)
    /// is tried again after at least this many seconds (one probe; then 4^X backoff).
    pub blocked_probe_secs: u64,
    /// Speak HTTP/2 to an `http://` base URL without asking first (h2c "prior knowledge"), as
    /// `ferry cloudsim` accepts. Off: `http://` is HTTP/1.1, and `https://` negotiates HTTP/2 by
    /// ALPN (as graph.facebook.com offers) either way. HTTP/2 multiplexes the requests over few
    /// connections instead of one connection per request in flight.
    pub http2_prior_knowledge: bool,
    /// The business numbers ferry sends from.
    pub numbers: Vec<CloudNumber>,
}

/// Default of `[[cloud.numbers]] throughput_per_sec`: Meta's default throughput per number.
pub const DEFAULT_THROUGHPUT_PER_SEC: u32 = 80;

/// `[[cloud.numbers]]`: one business number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudNumber {
    /// The business phone number: ferry's sender (`sender` of a send, or `default_sender`).
    pub phone_number: String,
    /// Meta's phone number id (digits) of the send path.
    pub phone_number_id: String,
    /// The access token (bearer). Exactly one of `token` and `token_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The environment variable holding the access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// Requests per second ferry sends from this number at most (its pacer).
    #[serde(default = "default_throughput")]
    pub throughput_per_sec: u32,
}

fn default_throughput() -> u32 {
    DEFAULT_THROUGHPUT_PER_SEC
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            base_url: "https://graph.facebook.com".into(),
            api_version: "v23.0".into(),
            app_secret: None,
            verify_token: None,
            request_timeout_ms: 10_000,
            reconcile_secs: 60,
            on_unresolved: OnUnresolved::Resend,
            blocked_probe_secs: 60,
            http2_prior_knowledge: false,
            numbers: Vec::new(),
        }
    }
}

/// A number ready to send from: its token read, its phone number normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedNumber {
    /// Normalized (the wa_id form ferry stores as a message's sender).
    pub phone_number: String,
    pub phone_number_id: String,
    pub token: String,
    pub throughput_per_sec: u32,
}

impl CloudConfig {
    /// Checks the section for cloud mode and resolves every number (tokens from the environment,
    /// phone numbers normalized with `country_code`). Errors name the key and what is expected.
    pub fn resolve(&self, country_code: &str) -> Result<Vec<ResolvedNumber>, String> {
        let base = self.base_url.trim_end_matches('/');
        if !(base.starts_with("https://") || base.starts_with("http://")) || base.parse::<hyper::Uri>().is_err() {
            return Err(format!(
                "cloud.base_url `{}`: expected an http(s) URL such as https://graph.facebook.com",
                self.base_url
            ));
        }
        if self.api_version.is_empty() || !self.api_version.starts_with('v') || self.api_version.contains('/') {
            return Err(format!("cloud.api_version `{}`: expected a Graph version such as v23.0", self.api_version));
        }
        if self.app_secret.as_deref().is_none_or(str::is_empty) {
            return Err("cloud.app_secret is not set: expected Meta's app secret (FERRY_CLOUD_APP_SECRET or \
                        --cloud-app-secret); webhooks are verified with it"
                .into());
        }
        if self.verify_token.as_deref().is_none_or(str::is_empty) {
            return Err("cloud.verify_token is not set: expected the verify token registered with the webhook \
                        (FERRY_CLOUD_VERIFY_TOKEN or --cloud-verify-token)"
                .into());
        }
        if !(1..=600_000).contains(&self.request_timeout_ms) {
            return Err(format!("cloud.request_timeout_ms = {}: expected 1 to 600000", self.request_timeout_ms));
        }
        if !(1..=86_400).contains(&self.reconcile_secs) {
            return Err(format!("cloud.reconcile_secs = {}: expected 1 to 86400", self.reconcile_secs));
        }
        if !(1..=86_400).contains(&self.blocked_probe_secs) {
            return Err(format!("cloud.blocked_probe_secs = {}: expected 1 to 86400", self.blocked_probe_secs));
        }
        if self.numbers.is_empty() {
            return Err("upstream_kind = cloud without a business number: expected at least one [[cloud.numbers]] \
                        (or --cloud-phone-number-id with --cloud-token for the default sender)"
                .into());
        }
        let mut phones = HashSet::new();
        let mut ids = HashSet::new();
        let mut out = Vec::with_capacity(self.numbers.len());
        for (i, n) in self.numbers.iter().enumerate() {
            let at = format!("cloud.numbers[{i}]");
            let phone = ferry_model::phone::normalize(&n.phone_number, country_code)
                .map_err(|e| format!("{at}.phone_number `{}`: {}", n.phone_number, e.details))?;
            if n.phone_number_id.is_empty() || !n.phone_number_id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "{at}.phone_number_id `{}`: expected Meta's phone number id (digits)",
                    n.phone_number_id
                ));
            }
            let token = match (&n.token, &n.token_env) {
                (Some(_), Some(_)) => return Err(format!("{at}: token and token_env are both set: expected one")),
                (None, None) => return Err(format!("{at}: no token: expected token or token_env")),
                (Some(t), None) => t.clone(),
                (None, Some(var)) => std::env::var(var)
                    .map_err(|_| format!("{at}.token_env `{var}`: the environment variable is not set"))?,
            };
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!("{at}: the token is empty or not printable ASCII"));
            }
            if !(1..=100_000).contains(&n.throughput_per_sec) {
                return Err(format!("{at}.throughput_per_sec = {}: expected 1 to 100000", n.throughput_per_sec));
            }
            if !phones.insert(phone.as_str().to_owned()) {
                return Err(format!("{at}.phone_number `{}`: configured twice", n.phone_number));
            }
            if !ids.insert(n.phone_number_id.clone()) {
                return Err(format!("{at}.phone_number_id `{}`: configured twice", n.phone_number_id));
            }
            out.push(ResolvedNumber {
                phone_number: phone.as_str().to_owned(),
                phone_number_id: n.phone_number_id.clone(),
                token,
                throughput_per_sec: n.throughput_per_sec,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> CloudConfig {
        CloudConfig {
            app_secret: Some("s".into()),
            verify_token: Some("v".into()),
            numbers: vec![CloudNumber {
                phone_number: "+15550100000".into(),
                phone_number_id: "106540352242922".into(),
                token: Some("T".into()),
                token_env: None,
                throughput_per_sec: 80,
            }],
            ..CloudConfig::default()
        }
    }

    #[test]
    fn resolves_a_valid_section_and_refuses_each_mistake_by_name() {
        let n = valid().resolve("1").unwrap();
        assert_eq!(n[0].phone_number, "15550100000");
        let err = |c: CloudConfig| c.resolve("1").unwrap_err();
        assert!(err(CloudConfig { numbers: vec![], ..valid() }).contains("[[cloud.numbers]]"));
        assert!(err(CloudConfig { app_secret: None, ..valid() }).contains("cloud.app_secret"));
        assert!(err(CloudConfig { verify_token: Some(String::new()), ..valid() }).contains("cloud.verify_token"));
        assert!(err(CloudConfig { base_url: "graph.facebook.com".into(), ..valid() }).contains("cloud.base_url"));
        let mut both = valid();
        both.numbers[0].token_env = Some("X".into());
        assert!(err(both).contains("token and token_env are both set"));
        let mut none = valid();
        none.numbers[0].token = None;
        assert!(err(none).contains("expected token or token_env"));
        let mut unset = valid();
        unset.numbers[0].token = None;
        unset.numbers[0].token_env = Some("FERRY_TEST_SURELY_UNSET_TOKEN_VAR".into());
        assert!(err(unset).contains("FERRY_TEST_SURELY_UNSET_TOKEN_VAR"));
        let mut twice = valid();
        twice.numbers.push(CloudNumber { phone_number_id: "2".into(), ..twice.numbers[0].clone() });
        assert!(err(twice).contains("configured twice"));
        let mut bad_id = valid();
        bad_id.numbers[0].phone_number_id = "abc".into();
        assert!(err(bad_id).contains("phone_number_id"));
    }

    #[test]
    fn numbers_parse_with_the_default_throughput() {
        let c: CloudConfig = toml_like(r#"{"numbers":[{"phone_number":"+1555","phone_number_id":"1","token":"t"}]}"#);
        assert_eq!(c.numbers[0].throughput_per_sec, DEFAULT_THROUGHPUT_PER_SEC);
        assert_eq!(c.on_unresolved, OnUnresolved::Resend);
    }

    fn toml_like(json: &str) -> CloudConfig {
        serde_json::from_str(json).unwrap()
    }
}
