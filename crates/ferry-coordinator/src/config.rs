//! Configuration of a node's coordinator and shards (the `[node]`-level keys of `ferry.toml`).

use std::path::PathBuf;

use ferry_model::MAX_SHARDS;
use ferry_shard::{ShardConfig, StorageTuning};
use serde::{Deserialize, Serialize};

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
    pub shard: ShardConfig,
    pub storage: StorageTuning,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            data_dir: PathBuf::from("./data"),
            shards: 8,
            country_code: "1".into(),
            default_sender: "+15550100000".into(),
            shard: ShardConfig::default(),
            storage: StorageTuning::default(),
        }
    }
}

impl CoordinatorConfig {
    /// A config for tests: `shards` shards in `data_dir`, small memory budgets.
    pub fn for_test(data_dir: impl Into<PathBuf>, shards: u16) -> Self {
        CoordinatorConfig {
            data_dir: data_dir.into(),
            shards,
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
        self.storage.validate()
    }
}
