//! ferry's users, roles and bearer tokens, shared by the HTTP API (`ferry-http`) and the gRPC API
//! (`ferry-ingest`): one [`Auth`] per node, one token works on both.
//!
//! - Users have a name, an argon2id password hash (PHC string) and a role: [`Role::Admin`] may do
//!   everything [`Role::User`] may, plus user management and settings.
//! - `login` (name + password) issues a token: 32 random bytes from the OS, base64url; it is
//!   valid for `token_ttl_secs` (7 days by default) or until `logout` revokes it, or until its
//!   user is deleted.
//! - Tenancy: a user may carry a list of business numbers, `senders`, set by an admin. Such a
//!   user may send only as those numbers (a send without a sender is checked as the node's
//!   `default_sender`), read only their messages (`GetMessage` answers any other message exactly
//!   like an unknown id), and watch only their status events. No list: unrestricted, as before
//!   lists existed. Admins are never restricted. [`Auth::check_sender`] and
//!   [`Principal::may_read`] are the checks; the surfaces call them once they know the sender.
//! - Who may call which endpoint at all is [`access::ACCESS_TABLE`] (deny by default).
//! - At first start (no user at all) the `admin` user is created with `admin_password` from the
//!   config (or `FERRY_ADMIN_PASSWORD`); without one a random password is generated and handed to
//!   the caller to print once.
//!
//! Storage is `ferry_shard::auth_store` (a small RocksDB in `<data_dir>/auth/`, synced writes);
//! every valid token is also kept in memory, so a request is checked without touching disk.
//!
//! Invariants (written as absences):
//! - No token and no password is stored or logged in clear: tokens only as SHA-256, passwords
//!   only as argon2id hashes.
//! - No token is accepted past its expiry (checked on every use against the node's clock) or
//!   after its revocation: the synced delete happens before `logout`/`delete_user` return, so it
//!   also holds after a restart.
//! - No built-in default password exists.

pub mod access;
mod config;
mod error;
mod password;
mod roles;
mod tenancy;
mod tokens;
mod users;
mod watch;

use std::path::Path;
use std::sync::Arc;

use ahash::AHashMap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ferry_model::clock::SharedClock;
use ferry_model::{ApiError, ErrorCode};
use ferry_shard::auth_store::{AuthDb, UserRecord};
use parking_lot::{Mutex, RwLock};
use rand::TryRngCore;

pub use config::{AuthConfig, AuthMode, DEFAULT_MAX_WATCH_STREAMS_PER_USER};
pub use error::AuthError;
pub use password::{MAX_PASSWORD_LEN, MIN_PASSWORD_LEN};
pub use roles::{Principal, Role};
pub use tenancy::{MAX_SENDERS, SenderRules};
pub use tokens::IssuedToken;
pub use users::UserInfo;
pub use watch::WatchStreamSlot;

use password::hash_password;
use roles::parse_role;
use tenancy::principal_senders;
use tokens::CachedToken;
use watch::WatchCounts;

/// The user created at first start.
pub const ADMIN_USER: &str = "admin";

/// What `open` found or did at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Users existed already.
    Existing,
    /// `admin` was created with the configured password.
    AdminFromConfig,
    /// `admin` was created with this generated password: print it once.
    AdminGenerated(String),
    /// Auth is disabled: nothing opened.
    Disabled,
}

/// The node's users and tokens. Cheap to share behind an `Arc`.
pub struct Auth {
    enabled: Option<Enabled>,
}

struct Enabled {
    db: AuthDb,
    clock: SharedClock,
    ttl_ms: i64,
    rules: SenderRules,
    max_watch_streams_per_user: usize,
    /// Open `WatchStatuses` streams per user name ([`Auth::open_watch_stream`]).
    watch_streams: WatchCounts,
    /// Every stored, unrevoked token by SHA-256 (expired ones are refused on use and purged at
    /// open and at login).
    tokens: RwLock<AHashMap<[u8; 32], CachedToken>>,
    /// Serialises "user exists → store token" against "delete user", so no token outlives its
    /// user.
    mutations: Mutex<()>,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.try_fill_bytes(&mut b).expect("the OS random generator works");
    b
}

impl Auth {
    /// No checks: every caller is an admin. For `--auth disabled` and in-process tests.
    pub fn disabled() -> Auth {
        Auth { enabled: None }
    }

    /// Opens the auth store under `data_dir` (enabled mode), creating the `admin` user if there
    /// is no user yet, and drops expired tokens.
    pub fn open(
        data_dir: &Path,
        config: &AuthConfig,
        clock: SharedClock,
        rules: SenderRules,
    ) -> Result<(Auth, Bootstrap), AuthError> {
        if config.mode == AuthMode::Disabled {
            return Ok((Auth::disabled(), Bootstrap::Disabled));
        }
        config.validate().map_err(|e| AuthError::Invalid(ApiError::new(ErrorCode::InvalidParameter, "auth", e)))?;
        let db = AuthDb::open(&data_dir.join("auth"))?;
        let now = clock.now_ms();
        let bootstrap = if db.users()?.is_empty() {
            let (password, bootstrap) = match &config.admin_password {
                Some(p) => (p.clone(), Bootstrap::AdminFromConfig),
                None => {
                    let p = URL_SAFE_NO_PAD.encode(random_bytes::<18>());
                    (p.clone(), Bootstrap::AdminGenerated(p))
                }
            };
            let user = UserRecord {
                password_hash: hash_password(&password)?,
                role: "admin".into(),
                created_at_ms: now,
                senders: Vec::new(),
            };
            db.put_user(ADMIN_USER, &user)?;
            bootstrap
        } else {
            Bootstrap::Existing
        };
        let users: AHashMap<String, UserRecord> = db.users()?.into_iter().collect();
        let mut tokens = AHashMap::new();
        let mut expired = Vec::new();
        for (hash, t) in db.tokens()? {
            if t.expires_at_ms <= now {
                expired.push(hash);
            } else {
                let role = parse_role(&t.role, "auth token role")?;
                let senders = users.get(&t.username).and_then(|u| principal_senders(role, &u.senders));
                let cached = CachedToken { username: t.username.into(), role, senders, expires_at_ms: t.expires_at_ms };
                tokens.insert(hash, cached);
            }
        }
        if !expired.is_empty() {
            db.delete_tokens(&expired)?;
        }
        let enabled = Enabled {
            db,
            clock,
            ttl_ms: (config.token_ttl_secs as i64).saturating_mul(1000),
            rules,
            max_watch_streams_per_user: config.max_watch_streams_per_user,
            watch_streams: Arc::default(),
            tokens: RwLock::new(tokens),
            mutations: Mutex::new(()),
        };
        Ok((Auth { enabled: Some(enabled) }, bootstrap))
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.is_some()
    }

    fn enabled_or_invalid(&self) -> Result<&Enabled, AuthError> {
        self.enabled.as_ref().ok_or_else(|| {
            AuthError::Invalid(ApiError::new(
                ErrorCode::InvalidParameter,
                "",
                "auth is disabled on this node (auth.mode = disabled): there are no users",
            ))
        })
    }
}

#[cfg(test)]
mod tests;
