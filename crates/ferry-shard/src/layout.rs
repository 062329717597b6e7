//! The data dir of a node:
//!
//! ```text
//! <data_dir>/node.json      {"format_version":1,"shard_count":8,"node_id":"...","created_at_ms":...}
//! <data_dir>/shard-00/      RocksDB of shard 0 (format in `storage`)
//! <data_dir>/shard-01/      ...
//! <data_dir>/auth/          RocksDB of users and hashed tokens (format in `auth_store`)
//! ```
//!
//! `node.json` is written once, when the data dir is created (temp file, fsync, rename, fsync of
//! the dir). A data dir created with N shards refuses to open with M ≠ N: messages are placed by
//! `hash(recipient)` over N shards, and resharding is not supported yet.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ShardError;

pub const NODE_FORMAT_VERSION: u32 = 1;
const NODE_FILE: &str = "node.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    pub format_version: u32,
    pub shard_count: u16,
    /// Random id drawn at creation; part of every message id (hex in the file).
    #[serde(with = "hex_u64")]
    pub node_id: u64,
    pub created_at_ms: i64,
}

mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
    }
}

/// The opened data dir.
#[derive(Debug, Clone)]
pub struct NodeLayout {
    pub root: PathBuf,
    pub meta: NodeMeta,
}

impl NodeLayout {
    /// Opens `root`, creating it for `shard_count` shards if it holds no node yet.
    pub fn open_or_create(root: &Path, shard_count: u16) -> Result<NodeLayout, ShardError> {
        let err = |what: String| ShardError::Layout(what);
        fs::create_dir_all(root).map_err(|e| err(format!("cannot create data dir {}: {e}", root.display())))?;
        let path = root.join(NODE_FILE);
        let meta = if path.exists() {
            let text = fs::read_to_string(&path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
            let meta: NodeMeta =
                serde_json::from_str(&text).map_err(|e| err(format!("corrupt {}: {e}", path.display())))?;
            if meta.format_version != NODE_FORMAT_VERSION {
                return Err(err(format!(
                    "{} has format version {}, this ferry reads version {NODE_FORMAT_VERSION}",
                    path.display(),
                    meta.format_version
                )));
            }
            if meta.shard_count != shard_count {
                return Err(err(format!(
                    "data dir {} was created with {} shards but {shard_count} were configured; \
                     start with --shards {} (resharding is not supported yet)",
                    root.display(),
                    meta.shard_count,
                    meta.shard_count
                )));
            }
            meta
        } else {
            let meta = NodeMeta {
                format_version: NODE_FORMAT_VERSION,
                shard_count,
                node_id: rand::random(),
                created_at_ms: crate::storage::now_ms(),
            };
            write_durably(root, &path, serde_json::to_vec_pretty(&meta).expect("serializable").as_slice())
                .map_err(|e| err(format!("cannot write {}: {e}", path.display())))?;
            meta
        };
        Ok(NodeLayout { root: root.to_path_buf(), meta })
    }

    pub fn shard_dir(&self, shard: u16) -> PathBuf {
        self.root.join(format!("shard-{shard:02}"))
    }
}

/// Writes `bytes` to `path` atomically and durably: temp file, fsync, rename, fsync of the dir.
fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopening_with_another_shard_count_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = NodeLayout::open_or_create(dir.path(), 8).unwrap();
        let b = NodeLayout::open_or_create(dir.path(), 8).unwrap();
        assert_eq!(a.meta, b.meta, "node id survives reopening");
        let e = NodeLayout::open_or_create(dir.path(), 4).unwrap_err().to_string();
        assert!(e.contains("created with 8 shards but 4"), "{e}");
    }
}
