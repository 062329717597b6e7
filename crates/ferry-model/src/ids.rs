//! Identifier newtypes: [`ShardId`], [`WaId`], [`MessageId`].
//!
//! A message id is `wamid.` followed by the URL-safe base64 (no padding) of 18 bytes:
//!
//! ```text
//! byte 0      id format version (1)
//! byte 1      shard index (0..=31)
//! bytes 2..10 id space: the shard's `meta/id_space` (big-endian u64)
//! bytes 10..18 the shard's queue sequence number (big-endian u64)
//! ```
//!
//! The id space of a single-node shard is its node id (a random u64 drawn when the data dir was
//! created): ids issued before the field was named so decode and resolve unchanged. It belongs to
//! the shard, not to whichever node writes it, so a replicated shard's ids survive its leader moving.
//!
//! So an id is unique across restarts (the sequence only grows and is persisted with every write),
//! across data dirs (id space), and a lookup goes straight to its shard and queue key. 30 characters.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// The largest shard count a node supports.
pub const MAX_SHARDS: u16 = 32;

/// Index of a shard of this node, `0..shard_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardId(pub u16);

impl ShardId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A normalized WhatsApp id: the recipient's phone number as digits only, country code first
/// (e.g. `16315551234`). Build one with [`crate::phone::normalize`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WaId(String);

impl WaId {
    /// Wraps an already-normalized id. Callers outside this crate go through
    /// [`crate::phone::normalize`]; this exists for values read back from storage.
    pub fn from_normalized(digits: String) -> Self {
        WaId(digits)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The decoded parts of a [`MessageId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageKey {
    pub shard: ShardId,
    /// The issuing shard's id space (see the module docs).
    pub space: u64,
    pub seq: u64,
}

const ID_PREFIX: &str = "wamid.";
const ID_VERSION: u8 = 1;
const ID_BYTES: usize = 18;

/// A `wamid.`-prefixed message id (≤ 128 characters; ferry's are 30).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(String);

impl MessageId {
    pub fn encode(key: MessageKey) -> Self {
        let mut raw = [0u8; ID_BYTES];
        raw[0] = ID_VERSION;
        raw[1] = key.shard.0 as u8;
        raw[2..10].copy_from_slice(&key.space.to_be_bytes());
        raw[10..18].copy_from_slice(&key.seq.to_be_bytes());
        MessageId(format!("{ID_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw)))
    }

    /// Parses an id this ferry node family issued. Returns `None` for anything else (including
    /// well-formed ids of other systems), which callers report as "not found".
    pub fn decode(id: &str) -> Option<MessageKey> {
        let body = id.strip_prefix(ID_PREFIX)?;
        let raw = URL_SAFE_NO_PAD.decode(body).ok()?;
        if raw.len() != ID_BYTES || raw[0] != ID_VERSION || raw[1] as u16 >= MAX_SHARDS {
            return None;
        }
        Some(MessageKey {
            shard: ShardId(raw[1] as u16),
            space: u64::from_be_bytes(raw[2..10].try_into().ok()?),
            seq: u64::from_be_bytes(raw[10..18].try_into().ok()?),
        })
    }

    /// Wraps an id read back from storage (it was produced by [`MessageId::encode`]).
    pub fn from_stored(id: String) -> Self {
        MessageId(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn id_has_fixed_layout() {
        let id = MessageId::encode(MessageKey { shard: ShardId(7), space: 0x0102030405060708, seq: 42 });
        assert_eq!(id.as_str(), "wamid.AQcBAgMEBQYHCAAAAAAAAAAq");
        assert!(id.as_str().len() <= 128);
    }

    #[test]
    fn foreign_ids_do_not_decode() {
        assert_eq!(MessageId::decode("wamid.HBgLMTY0NjcwNDM1OTUVAgARGBI4MjZGRDA0OUE2OTQ3RkEyMzcA"), None);
        assert_eq!(MessageId::decode("gBGGFlA5FpafAgkOuJbRq54qwbM"), None);
        assert_eq!(MessageId::decode("wamid."), None);
    }

    proptest! {
        #[test]
        fn id_round_trips(shard in 0u16..MAX_SHARDS, space: u64, seq: u64) {
            let key = MessageKey { shard: ShardId(shard), space, seq };
            prop_assert_eq!(MessageId::decode(MessageId::encode(key).as_str()), Some(key));
        }
    }
}
