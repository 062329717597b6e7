//! The node's users and API tokens: a small RocksDB of its own in `<data_dir>/auth/`, apart from
//! the shards (whose databases only their writer thread writes).
//!
//! | CF | key | value |
//! |---|---|---|
//! | `users` | user name (UTF-8) | `[1u8] ++ UserRecord` (protobuf) |
//! | `tokens` | SHA-256 of the token (32 bytes) | `[1u8] ++ TokenRecord` (protobuf) |
//!
//! `UserRecord.senders` (tag 4) was added after the first release: a record written before it
//! decodes with an empty list, which means "unrestricted", as it was then.
//!
//! Invariants (written as absences):
//! - No token is stored in clear: callers hand in its SHA-256, never the token.
//! - No password is stored in clear: callers hand in a PHC hash string (argon2).
//! - No write is reported done before it is on disk: every write is one synced `WriteBatch`, so
//!   a revocation (delete) or a deleted user holds across a crash.
//!
//! The store does not judge: hashing, expiry and roles are the caller's (`ferry-auth`).

use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions};

use crate::ShardError;
use crate::storage::VALUE_VERSION;

const CF_USERS: &str = "users";
const CF_TOKENS: &str = "tokens";
/// Shard index used in [`ShardError`]s of this store (it belongs to no shard).
const NO_SHARD: u16 = u16::MAX;

/// A user: name (the key), password hash and role.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserRecord {
    /// PHC string (argon2id).
    #[prost(string, tag = "1")]
    pub password_hash: String,
    /// `admin` or `user`.
    #[prost(string, tag = "2")]
    pub role: String,
    #[prost(int64, tag = "3")]
    pub created_at_ms: i64,
    /// The business numbers (normalized wa_ids) the user may send as and read the messages of;
    /// empty: unrestricted (also every record written before this field existed).
    #[prost(string, repeated, tag = "4")]
    pub senders: Vec<String>,
}

/// An issued token (keyed by its SHA-256).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TokenRecord {
    #[prost(string, tag = "1")]
    pub username: String,
    /// The user's role when the token was issued.
    #[prost(string, tag = "2")]
    pub role: String,
    #[prost(int64, tag = "3")]
    pub issued_at_ms: i64,
    #[prost(int64, tag = "4")]
    pub expires_at_ms: i64,
}

/// The opened auth database.
pub struct AuthDb {
    db: DB,
}

fn rocks(source: rocksdb::Error) -> ShardError {
    ShardError::Rocks { shard: NO_SHARD, source }
}

fn corrupt(what: String) -> ShardError {
    ShardError::Corrupt { shard: NO_SHARD, what }
}

fn encode<M: prost::Message>(m: &M) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + m.encoded_len());
    v.push(VALUE_VERSION);
    m.encode(&mut v).expect("a Vec grows");
    v
}

fn decode<M: prost::Message + Default>(bytes: &[u8], what: &str) -> Result<M, ShardError> {
    match bytes.split_first() {
        Some((&VALUE_VERSION, rest)) => M::decode(rest).map_err(|e| corrupt(format!("auth {what}: {e}"))),
        Some((v, _)) => Err(corrupt(format!("auth {what}: unknown value version {v}"))),
        None => Err(corrupt(format!("auth {what}: empty value"))),
    }
}

fn synced() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

impl AuthDb {
    /// Opens (creating if needed) the auth database in `dir` (usually `<data_dir>/auth`).
    pub fn open(dir: &Path) -> Result<AuthDb, ShardError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ShardError::Layout(format!("cannot create auth dir {}: {e}", dir.display())))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = [CF_USERS, CF_TOKENS].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(rocks)?;
        Ok(AuthDb { db })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family created at open")
    }

    pub fn user(&self, name: &str) -> Result<Option<UserRecord>, ShardError> {
        match self.db.get_cf(self.cf(CF_USERS), name.as_bytes()).map_err(rocks)? {
            Some(v) => Ok(Some(decode(&v, "user")?)),
            None => Ok(None),
        }
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<(String, UserRecord)>, ShardError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_USERS), IteratorMode::Start) {
            let (k, v) = item.map_err(rocks)?;
            let name = String::from_utf8(k.to_vec()).map_err(|_| corrupt("auth user name: not UTF-8".into()))?;
            out.push((name, decode(&v, "user")?));
        }
        Ok(out)
    }

    /// Writes (creates or replaces) a user; synced.
    pub fn put_user(&self, name: &str, user: &UserRecord) -> Result<(), ShardError> {
        self.db.put_cf_opt(self.cf(CF_USERS), name.as_bytes(), encode(user), &synced()).map_err(rocks)
    }

    /// Deletes a user and every token issued to it, in one synced batch. Returns the hashes of
    /// the deleted tokens.
    pub fn delete_user(&self, name: &str) -> Result<Vec<[u8; 32]>, ShardError> {
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_USERS), name.as_bytes());
        let mut revoked = Vec::new();
        for (hash, t) in self.tokens()? {
            if t.username == name {
                batch.delete_cf(self.cf(CF_TOKENS), hash);
                revoked.push(hash);
            }
        }
        self.db.write_opt(batch, &synced()).map_err(rocks)?;
        Ok(revoked)
    }

    /// Every stored token, by hash.
    pub fn tokens(&self) -> Result<Vec<([u8; 32], TokenRecord)>, ShardError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_TOKENS), IteratorMode::Start) {
            let (k, v) = item.map_err(rocks)?;
            let hash: [u8; 32] =
                k.as_ref().try_into().map_err(|_| corrupt(format!("auth token key of {} bytes", k.len())))?;
            out.push((hash, decode(&v, "token")?));
        }
        Ok(out)
    }

    /// Stores a token by its hash; synced.
    pub fn put_token(&self, hash: &[u8; 32], token: &TokenRecord) -> Result<(), ShardError> {
        self.db.put_cf_opt(self.cf(CF_TOKENS), hash, encode(token), &synced()).map_err(rocks)
    }

    /// Deletes tokens by hash (revocation, expiry clean-up); one synced batch.
    pub fn delete_tokens(&self, hashes: &[[u8; 32]]) -> Result<(), ShardError> {
        let mut batch = WriteBatch::default();
        for h in hashes {
            batch.delete_cf(self.cf(CF_TOKENS), h);
        }
        self.db.write_opt(batch, &synced()).map_err(rocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(user: &str, expires_at_ms: i64) -> TokenRecord {
        TokenRecord { username: user.into(), role: "user".into(), issued_at_ms: 1, expires_at_ms }
    }

    #[test]
    fn users_and_tokens_survive_reopen_and_deleting_a_user_revokes_its_tokens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = AuthDb::open(dir.path()).unwrap();
            let u = UserRecord {
                password_hash: "$argon2id$x".into(),
                role: "admin".into(),
                created_at_ms: 5,
                senders: vec![],
            };
            db.put_user("alice", &u).unwrap();
            db.put_user("bob", &UserRecord { role: "user".into(), ..u }).unwrap();
            db.put_token(&[1; 32], &token("alice", 10)).unwrap();
            db.put_token(&[2; 32], &token("bob", 20)).unwrap();
            db.put_token(&[3; 32], &token("bob", 30)).unwrap();
            db.delete_tokens(&[[3; 32]]).unwrap();
        }
        let db = AuthDb::open(dir.path()).unwrap();
        assert_eq!(db.user("alice").unwrap().unwrap().role, "admin");
        assert_eq!(db.users().unwrap().len(), 2);
        let hashes: Vec<_> = db.tokens().unwrap().into_iter().map(|(h, _)| h).collect();
        assert_eq!(hashes, vec![[1; 32], [2; 32]]);
        assert_eq!(db.delete_user("bob").unwrap(), vec![[2; 32]]);
        assert!(db.user("bob").unwrap().is_none());
        assert_eq!(db.tokens().unwrap().len(), 1);
    }

    /// A user written before `senders` existed (tags 1-3 only) loads, unrestricted.
    #[test]
    fn a_user_record_without_senders_loads() {
        #[derive(Clone, PartialEq, prost::Message)]
        struct UserRecordV0 {
            #[prost(string, tag = "1")]
            password_hash: String,
            #[prost(string, tag = "2")]
            role: String,
            #[prost(int64, tag = "3")]
            created_at_ms: i64,
        }
        let dir = tempfile::tempdir().unwrap();
        let db = AuthDb::open(dir.path()).unwrap();
        let old = UserRecordV0 { password_hash: "$argon2id$x".into(), role: "user".into(), created_at_ms: 7 };
        db.db.put_cf(db.cf(CF_USERS), b"old", encode(&old)).unwrap();
        let loaded = db.user("old").unwrap().unwrap();
        assert_eq!((loaded.role.as_str(), loaded.created_at_ms, loaded.senders.len()), ("user", 7, 0));
        let with = UserRecord { senders: vec!["15550100000".into()], ..loaded };
        db.put_user("new", &with).unwrap();
        assert_eq!(db.user("new").unwrap().unwrap().senders, vec!["15550100000".to_owned()]);
    }

    #[test]
    fn a_value_of_an_unknown_version_is_reported_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let db = AuthDb::open(dir.path()).unwrap();
        db.db.put_cf(db.cf(CF_USERS), b"x", [9u8, 0]).unwrap();
        assert!(db.user("x").unwrap_err().to_string().contains("unknown value version 9"));
    }
}
