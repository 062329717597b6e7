//! The data dir of a node, in one of two formats (`format_version` in `node.json`):
//!
//! ```text
//! format 2 (a single node's, by default; `storage.shared_wal`):
//! <data_dir>/node.json      {"format_version":2,"shard_count":8,"node_id":"...","created_at_ms":...}
//! <data_dir>/shards/        one RocksDB for every shard: shard N's column families are named
//!                           `shard-NN/<cf>` (format in `storage`), all of them share one WAL
//! <data_dir>/auth/          RocksDB of users and hashed tokens (format in `auth_store`)
//!
//! format 1 (a replicated node's; a single node's with `storage.shared_wal = false`, or created
//! before format 2):
//! <data_dir>/node.json      {"format_version":1,...}
//! <data_dir>/shard-00/      RocksDB of shard 0, its own WAL (format in `storage`)
//! <data_dir>/shard-01/      ...
//! <data_dir>/auth/          as above
//! ```
//!
//! Why format 2: each shard's writer makes one synced write per group commit. With a database
//! per shard that is one `fdatasync` (one device flush) per shard per commit; in one database,
//! RocksDB's write group makes the concurrent commits of all shards durable with one WAL write
//! and one sync. A replicated node keeps format 1: a Raft snapshot of a shard is a checkpoint of
//! its database.
//!
//! `node.json` is written once, when the data dir is created (temp file, fsync, rename, fsync of
//! the dir). A data dir keeps its format: nothing converts one into the other. A data dir created
//! with N shards refuses to open with M ≠ N: messages are placed by `hash(recipient)` over N
//! shards, and resharding is not supported yet.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ShardError;

/// The newest format of the data dir (`node.json`'s `format_version`); see the module docs.
pub const NODE_FORMAT_VERSION: u32 = 2;
const NODE_FILE: &str = "node.json";
/// Format 2's shared database, under the data dir.
const SHARED_DB_DIR: &str = "shards";

/// Where a node's shards keep their data (the data dir's format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageLayout {
    /// Format 1: `shard-NN/`, one RocksDB (and WAL) per shard.
    DatabasePerShard,
    /// Format 2: `shards/`, one RocksDB for all shards, one column-family set per shard.
    SharedDatabase,
}

impl StorageLayout {
    fn format_version(self) -> u32 {
        match self {
            StorageLayout::DatabasePerShard => 1,
            StorageLayout::SharedDatabase => 2,
        }
    }

    fn of_format(version: u32) -> Option<StorageLayout> {
        match version {
            1 => Some(StorageLayout::DatabasePerShard),
            2 => Some(StorageLayout::SharedDatabase),
            _ => None,
        }
    }
}

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
    /// Opens `root`, creating it for `shard_count` shards if it holds no node yet, in the layout
    /// `create_as` (an existing data dir keeps its own; see [`NodeLayout::storage`]).
    pub fn open_or_create(root: &Path, shard_count: u16, create_as: StorageLayout) -> Result<NodeLayout, ShardError> {
        let err = |what: String| ShardError::Layout(what);
        fs::create_dir_all(root).map_err(|e| err(format!("cannot create data dir {}: {e}", root.display())))?;
        let path = root.join(NODE_FILE);
        let meta = if path.exists() {
            let text = fs::read_to_string(&path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
            let meta: NodeMeta =
                serde_json::from_str(&text).map_err(|e| err(format!("corrupt {}: {e}", path.display())))?;
            if StorageLayout::of_format(meta.format_version).is_none() {
                return Err(err(format!(
                    "{} has format version {}, this ferry reads versions 1 and {NODE_FORMAT_VERSION}",
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
                format_version: create_as.format_version(),
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

    /// The data dir's layout (from its format version).
    pub fn storage(&self) -> StorageLayout {
        StorageLayout::of_format(self.meta.format_version).expect("checked at open")
    }

    /// Format 1: shard `shard`'s database.
    pub fn shard_dir(&self, shard: u16) -> PathBuf {
        self.root.join(format!("shard-{shard:02}"))
    }

    /// Format 2: the database of every shard.
    pub fn shared_db_dir(&self) -> PathBuf {
        self.root.join(SHARED_DB_DIR)
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

    use StorageLayout::{DatabasePerShard, SharedDatabase};

    #[test]
    fn reopening_with_another_shard_count_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = NodeLayout::open_or_create(dir.path(), 8, SharedDatabase).unwrap();
        let b = NodeLayout::open_or_create(dir.path(), 8, SharedDatabase).unwrap();
        assert_eq!(a.meta, b.meta, "node id survives reopening");
        let e = NodeLayout::open_or_create(dir.path(), 4, SharedDatabase).unwrap_err().to_string();
        assert!(e.contains("created with 8 shards but 4"), "{e}");
    }

    #[test]
    fn a_data_dir_keeps_the_layout_it_was_created_with() {
        for (first, then) in [(DatabasePerShard, SharedDatabase), (SharedDatabase, DatabasePerShard)] {
            let dir = tempfile::tempdir().unwrap();
            let created = NodeLayout::open_or_create(dir.path(), 2, first).unwrap();
            assert_eq!(created.storage(), first);
            assert_eq!(created.meta.format_version, first.format_version());
            let reopened = NodeLayout::open_or_create(dir.path(), 2, then).unwrap();
            assert_eq!(reopened.storage(), first, "the layout asked for applies to new data dirs only");
        }
    }

    #[test]
    fn an_unknown_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        NodeLayout::open_or_create(dir.path(), 2, SharedDatabase).unwrap();
        let path = dir.path().join(NODE_FILE);
        let text = fs::read_to_string(&path).unwrap().replace("\"format_version\": 2", "\"format_version\": 3");
        fs::write(&path, text).unwrap();
        let e = NodeLayout::open_or_create(dir.path(), 2, SharedDatabase).unwrap_err().to_string();
        assert!(e.contains("format version 3, this ferry reads versions 1 and 2"), "{e}");
    }
}
