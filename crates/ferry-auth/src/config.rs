//! The `[auth]` config section.

use serde::{Deserialize, Serialize};

use crate::password::check_password;

/// `auth.mode`: whether requests need a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every API call needs a bearer token (except probes and `/metrics`).
    #[default]
    Enabled,
    /// No checks at all: for local experiments only (logged as a warning at start).
    Disabled,
}

impl std::str::FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "enabled" => Ok(AuthMode::Enabled),
            "disabled" => Ok(AuthMode::Disabled),
            other => Err(format!("auth mode `{other}`: expected `enabled` or `disabled`")),
        }
    }
}

/// The `[auth]` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Password of the `admin` user created at first start (a secret; used only then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_password: Option<String>,
    /// Lifetime of a token issued by login, in seconds.
    pub token_ttl_secs: u64,
    /// `WatchStatuses` streams one user may have open at once; one more is refused with
    /// RESOURCE_EXHAUSTED (1015).
    pub max_watch_streams_per_user: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Enabled,
            admin_password: None,
            token_ttl_secs: 7 * 24 * 60 * 60,
            max_watch_streams_per_user: DEFAULT_MAX_WATCH_STREAMS_PER_USER,
        }
    }
}

/// Default of `auth.max_watch_streams_per_user`.
pub const DEFAULT_MAX_WATCH_STREAMS_PER_USER: usize = 16;

impl AuthConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100_000).contains(&self.max_watch_streams_per_user) {
            return Err(format!(
                "auth.max_watch_streams_per_user = {}: expected 1 to 100000",
                self.max_watch_streams_per_user
            ));
        }
        if self.token_ttl_secs == 0 || self.token_ttl_secs > 366 * 24 * 60 * 60 {
            return Err(format!("auth.token_ttl_secs = {}: expected 1 to 31622400 (366 days)", self.token_ttl_secs));
        }
        if let Some(p) = &self.admin_password {
            check_password(p).map_err(|e| format!("auth.admin_password (FERRY_ADMIN_PASSWORD): {}", e.details))?;
        }
        Ok(())
    }
}
