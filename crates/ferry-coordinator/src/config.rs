//! Configuration of a node's coordinator and shards (the `[node]`-level keys of `ferry.toml`).

use std::path::PathBuf;

use ferry_model::MAX_SHARDS;
use ferry_shard::{ShardConfig, StorageTuning};
use serde::{Deserialize, Serialize};

/// Whether a non-template message needs the recipient to have written within 24 hours (config
/// `customer_service_window`, flag `--customer-service-window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowPolicy {
    /// Refuse such sends with 470 (On-Prem) / 131047 (Cloud).
    #[default]
    Enforce,
    /// Accept them (the upstream enforces the window itself, or tests and demos).
    Off,
}

impl std::str::FromStr for WindowPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "enforce" => Ok(WindowPolicy::Enforce),
            "off" => Ok(WindowPolicy::Off),
            other => Err(format!("customer-service window `{other}`: expected `enforce` or `off`")),
        }
    }
}

impl std::fmt::Display for WindowPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WindowPolicy::Enforce => "enforce",
            WindowPolicy::Off => "off",
        })
    }
}

/// What the pacing rule does with a held message once `pacing.hold_secs` have passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterHold {
    /// Into the delivery queue (the template passed its quality assessment).
    #[default]
    Release,
    /// Failed with 132015 "Template is paused".
    Drop,
}

/// Paced templates (config `[pacing]`): a send of one of `templates` is answered
/// `held_for_quality_assessment` and held (not delivered) until the rule or an admin
/// `ResolveHeld` call releases or drops it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PacingConfig {
    /// Names of the paced templates (exact, case-sensitive). Empty: nothing is held.
    pub templates: Vec<String>,
    /// The rule: a held message is released or dropped (`after_hold`) this many seconds after it
    /// was accepted. Checked every second.
    pub hold_secs: u64,
    pub after_hold: AfterHold,
}

impl Default for PacingConfig {
    fn default() -> Self {
        PacingConfig { templates: Vec::new(), hold_secs: 600, after_hold: AfterHold::Release }
    }
}

impl PacingConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.hold_secs == 0 {
            return Err("pacing.hold_secs = 0: expected at least 1 second of hold".into());
        }
        if let Some(bad) = self.templates.iter().find(|t| t.trim().is_empty() || t.trim() != t.as_str()) {
            return Err(format!(
                "pacing.templates: `{bad}` is not a template name (expected a non-empty name without surrounding spaces)"
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Where the node keeps its shards.
    pub data_dir: PathBuf,
    /// Number of shards, 1..=32. Fixed when the data dir is created.
    pub shards: u16,
    /// Country calling code of the business number, prepended to recipients written without `+`.
    pub country_code: String,
    /// The business number messages are sent from when a request names none.
    pub default_sender: String,
    /// The 24-hour customer-service window: non-template messages only to users who wrote within
    /// 24 hours.
    pub customer_service_window: WindowPolicy,
    pub shard: ShardConfig,
    pub storage: StorageTuning,
    pub pacing: PacingConfig,
    /// The only business numbers a send may come from (the Cloud upstream: its configured
    /// `[[cloud.numbers]]`); a send from any other is refused at accept time (1009, field
    /// `sender`) and writes nothing. `None`: any sender. Not a config key of its own.
    #[serde(skip)]
    pub allowed_senders: Option<Vec<String>>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            data_dir: PathBuf::from("./data"),
            shards: 8,
            country_code: "1".into(),
            default_sender: "+15550100000".into(),
            customer_service_window: WindowPolicy::Enforce,
            shard: ShardConfig::default(),
            storage: StorageTuning::default(),
            pacing: PacingConfig::default(),
            allowed_senders: None,
        }
    }
}

impl CoordinatorConfig {
    /// A config for tests: `shards` shards in `data_dir`, small memory budgets, the
    /// customer-service window off (tests of the window turn it on).
    pub fn for_test(data_dir: impl Into<PathBuf>, shards: u16) -> Self {
        CoordinatorConfig {
            data_dir: data_dir.into(),
            shards,
            customer_service_window: WindowPolicy::Off,
            storage: StorageTuning { block_cache_mib: 16, write_buffer_total_mib: 32, ..StorageTuning::default() },
            ..CoordinatorConfig::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return Err(format!("shards is {}: expected 1 to {MAX_SHARDS}", self.shards));
        }
        ferry_model::phone::validate_country_code(&self.country_code)
            .map_err(|e| format!("country_code `{}`: {e}", self.country_code))?;
        self.shard.validate()?;
        self.pacing.validate()?;
        self.storage.validate()
    }
}
