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

use std::path::Path;
use std::sync::{Arc, OnceLock};

use ahash::AHashMap;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ferry_model::clock::SharedClock;
use ferry_model::{ApiError, ErrorCode, WaId, phone};
use ferry_shard::ShardError;
use ferry_shard::auth_store::{AuthDb, TokenRecord, UserRecord};
use parking_lot::{Mutex, RwLock};
use rand::TryRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The user created at first start.
pub const ADMIN_USER: &str = "admin";
/// Shortest password accepted (for created users and `admin_password`).
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest password accepted (argon2 hashes any length; this bounds the work per login).
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Most business numbers in one user's `senders`.
pub const MAX_SENDERS: usize = 1024;

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

/// A role; [`Role::Admin`] includes everything [`Role::User`] may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "user" => Ok(Role::User),
            "admin" => Ok(Role::Admin),
            other => Err(format!("role `{other}`: expected `admin` or `user`")),
        }
    }
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub username: String,
    pub role: Role,
    /// The business numbers this caller may send as and read; `None`: unrestricted (admins,
    /// users without a list, auth disabled).
    pub senders: Option<Arc<[WaId]>>,
}

impl Principal {
    /// Whether this caller may read a message sent as `sender` (a normalized wa_id, as stored).
    pub fn may_read(&self, sender: &str) -> bool {
        self.senders.as_ref().is_none_or(|list| list.iter().any(|s| s.as_str() == sender))
    }
}

/// How the node names its senders: what [`Auth::check_sender`] and the `senders` of users are
/// normalized with (the coordinator's values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderRules {
    /// `country_code`: prepended to numbers written without `+`.
    pub country_code: String,
    /// `default_sender`, normalized: the sender of a send that names none.
    pub default_sender: WaId,
}

/// A token handed out by [`Auth::login`]; the clear token exists only here.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at_ms: i64,
}

/// A user as management calls show it (never the hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub role: Role,
    pub created_at_ms: i64,
    /// `None`: unrestricted.
    pub senders: Option<Vec<WaId>>,
}

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

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No, malformed, unknown, expired or revoked credentials (401 / UNAUTHENTICATED).
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials, insufficient role (403 / PERMISSION_DENIED).
    #[error("{0}")]
    Forbidden(String),
    /// A bad request to a management call.
    #[error("{}", .0.details)]
    Invalid(ApiError),
    #[error("user `{0}` does not exist")]
    NoSuchUser(String),
    #[error("user `{0}` exists already")]
    UserExists(String),
    #[error("auth storage: {0}")]
    Storage(#[from] ShardError),
}

impl AuthError {
    /// The error as the one error table has it (code, HTTP and gRPC status).
    pub fn api_error(&self) -> ApiError {
        match self {
            AuthError::Unauthenticated(d) => ApiError::new(ErrorCode::Unauthenticated, "", d.clone()),
            AuthError::Forbidden(d) => ApiError::new(ErrorCode::AccessDenied, "", d.clone()),
            AuthError::Invalid(e) => e.clone(),
            AuthError::NoSuchUser(_) => ApiError::new(ErrorCode::NotFound, "username", self.to_string()),
            AuthError::UserExists(_) => ApiError::new(ErrorCode::InvalidParameter, "username", self.to_string()),
            AuthError::Storage(_) => ApiError::new(ErrorCode::Internal, "", self.to_string()),
        }
    }
}

#[derive(Debug, Clone)]
struct CachedToken {
    username: Arc<str>,
    role: Role,
    senders: Option<Arc<[WaId]>>,
    expires_at_ms: i64,
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

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.try_fill_bytes(&mut b).expect("the OS random generator works");
    b
}

fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).expect("16 bytes is a valid salt length");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Invalid(ApiError::invalid("password", format_args!("a hashable password ({e})"))))
}

fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A hash to verify against when the user does not exist, so a wrong user name takes as long as
/// a wrong password (no user enumeration by timing).
fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| hash_password("not a password of anyone").expect("hashing works"))
}

fn check_password(p: &str) -> Result<(), ApiError> {
    let n = p.chars().count();
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&n) {
        return Err(ApiError::invalid(
            "password",
            format_args!("{MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters, got {n}"),
        ));
    }
    Ok(())
}

fn check_username(u: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&u.len())
        && u.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid("username", "1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-', '@'"))
    }
}

fn parse_role(s: &str, what: &str) -> Result<Role, ShardError> {
    s.parse().map_err(|e| ShardError::Corrupt { shard: u16::MAX, what: format!("{what}: {e}") })
}

/// The stored `senders` of a user as a principal carries them (admins: unrestricted).
fn principal_senders(role: Role, stored: &[String]) -> Option<Arc<[WaId]>> {
    (role != Role::Admin && !stored.is_empty())
        .then(|| stored.iter().map(|s| WaId::from_normalized(s.clone())).collect())
}

/// `senders` as given to create/update: each normalized like a send's sender; duplicates
/// dropped, order kept. Empty is refused: `None` (JSON `null` or absent) lifts the restriction.
fn normalize_senders(raw: &[String], rules: &SenderRules) -> Result<Vec<WaId>, ApiError> {
    if raw.is_empty() || raw.len() > MAX_SENDERS {
        return Err(ApiError::invalid(
            "senders",
            format_args!("1 to {MAX_SENDERS} business phone numbers, got {} (null lifts the restriction)", raw.len()),
        ));
    }
    let mut out: Vec<WaId> = Vec::with_capacity(raw.len());
    for (i, number) in raw.iter().enumerate() {
        let wa_id = phone::normalize(number, &rules.country_code).map_err(|e| {
            ApiError::new(
                e.code,
                format!("senders[{i}]"),
                format!("senders[{i}]: not a business phone number: {}", e.details),
            )
        })?;
        if !out.contains(&wa_id) {
            out.push(wa_id);
        }
    }
    Ok(out)
}

/// A `senders` list as messages show it: `+15550100000, +15550100001`.
fn list_senders(senders: &[WaId]) -> String {
    senders.iter().map(|s| format!("+{s}")).collect::<Vec<_>>().join(", ")
}

/// One open `WatchStatuses` stream of a user, counted against `auth.max_watch_streams_per_user`
/// until dropped.
pub struct WatchStreamSlot {
    counts: Option<(WatchCounts, Arc<str>)>,
}

/// Open `WatchStatuses` streams per user name.
type WatchCounts = Arc<Mutex<AHashMap<Arc<str>, usize>>>;

impl Drop for WatchStreamSlot {
    fn drop(&mut self) {
        if let Some((counts, user)) = self.counts.take() {
            let mut counts = counts.lock();
            if let Some(n) = counts.get_mut(&user) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&user);
                }
            }
        }
    }
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

    /// Checks an `Authorization` header (HTTP) or `authorization` metadata value (gRPC):
    /// `Bearer TOKEN`, valid, unexpired, and of a role that allows `needed`.
    pub fn authorize(&self, authorization: Option<&str>, needed: Role) -> Result<Principal, AuthError> {
        let principal = self.authenticate(authorization)?;
        if !principal.role.allows(needed) {
            return Err(AuthError::Forbidden(format!(
                "user `{}` has role `{}`; this call needs role `{}`",
                principal.username,
                principal.role.as_str(),
                needed.as_str()
            )));
        }
        Ok(principal)
    }

    /// Who the bearer token in `authorization` belongs to.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let Some(e) = &self.enabled else {
            return Ok(Principal { username: "anonymous".into(), role: Role::Admin, senders: None });
        };
        let token = bearer_token(authorization)?;
        let hash = sha256(token);
        let found = e.tokens.read().get(&hash).cloned();
        let Some(t) = found else {
            return Err(AuthError::Unauthenticated(
                "unknown or revoked token: log in again (POST /v1/users/login)".into(),
            ));
        };
        if t.expires_at_ms <= e.clock.now_ms() {
            return Err(AuthError::Unauthenticated("token expired: log in again (POST /v1/users/login)".into()));
        }
        Ok(Principal { username: t.username.to_string(), role: t.role, senders: t.senders })
    }

    /// Refuses (1005, PERMISSION_DENIED / 403, field `sender`) a send as `sender` by a caller whose
    /// `senders` do not include it. `sender` is the request's raw value; `None` or empty is the
    /// node's `default_sender`, so that is what is checked. An invalid number is refused as the
    /// coordinator would (field `sender`). Unrestricted callers pass without any work.
    pub fn check_sender(&self, caller: &Principal, sender: Option<&str>) -> Result<(), ApiError> {
        let (Some(allowed), Some(e)) = (&caller.senders, &self.enabled) else { return Ok(()) };
        let (wa_id, named) = match sender.map(str::trim).filter(|s| !s.is_empty()) {
            None => (e.rules.default_sender.clone(), "the node's default_sender"),
            Some(raw) => {
                let wa_id = phone::normalize(raw, &e.rules.country_code).map_err(|err| ApiError {
                    field: "sender".into(),
                    details: format!("invalid sender: {}", err.details),
                    ..err
                })?;
                (wa_id, "sender")
            }
        };
        if allowed.contains(&wa_id) {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::AccessDenied,
            "sender",
            format!(
                "user `{}` may not send as +{wa_id} ({named}): expected one of its senders: {}",
                caller.username,
                list_senders(allowed)
            ),
        ))
    }

    /// Counts an open `WatchStatuses` stream of `caller` until the returned slot is dropped;
    /// refuses (1015, RESOURCE_EXHAUSTED / 429) one more than `auth.max_watch_streams_per_user`.
    /// No limit when auth is disabled.
    pub fn open_watch_stream(&self, caller: &Principal) -> Result<WatchStreamSlot, ApiError> {
        let Some(e) = &self.enabled else { return Ok(WatchStreamSlot { counts: None }) };
        let user: Arc<str> = Arc::from(caller.username.as_str());
        let mut counts = e.watch_streams.lock();
        let open = counts.entry(user.clone()).or_insert(0);
        if *open >= e.max_watch_streams_per_user {
            return Err(ApiError::new(
                ErrorCode::TooManyRequests,
                "",
                format!(
                    "user `{user}` has {open} WatchStatuses streams open, the most allowed \
                     (auth.max_watch_streams_per_user = {}): close one, or resume from its cursor later",
                    e.max_watch_streams_per_user
                ),
            ));
        }
        *open += 1;
        drop(counts);
        Ok(WatchStreamSlot { counts: Some((e.watch_streams.clone(), user)) })
    }

    /// Checks `username`/`password` and issues a token. Slow on purpose (argon2): call it off the
    /// async workers.
    pub fn login(&self, username: &str, password: &str) -> Result<IssuedToken, AuthError> {
        let Some(e) = &self.enabled else {
            return Err(AuthError::Invalid(ApiError::new(
                ErrorCode::InvalidParameter,
                "",
                "auth is disabled on this node (auth.mode = disabled): calls need no token",
            )));
        };
        let refused = || AuthError::Unauthenticated("wrong user name or password".into());
        let user = e.db.user(username)?;
        let phc = user.as_ref().map(|u| u.password_hash.as_str()).unwrap_or_else(|| dummy_hash());
        if !verify_password(password, phc) {
            return Err(refused());
        }
        let Some(user) = user else { return Err(refused()) };
        let role = parse_role(&user.role, "auth user role")?;
        let token = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
        let hash = sha256(&token);
        let now = e.clock.now_ms();
        let record = TokenRecord {
            username: username.to_owned(),
            role: role.as_str().to_owned(),
            issued_at_ms: now,
            expires_at_ms: now.saturating_add(e.ttl_ms),
        };
        {
            let _guard = e.mutations.lock();
            // Deleted (or deleted and re-created) while the password was being checked: refuse.
            if e.db.user(username)?.map(|u| u.password_hash) != Some(user.password_hash.clone()) {
                return Err(refused());
            }
            e.db.put_token(&hash, &record)?;
            let senders = principal_senders(role, &user.senders);
            let cached =
                CachedToken { username: Arc::from(username), role, senders, expires_at_ms: record.expires_at_ms };
            e.tokens.write().insert(hash, cached);
        }
        self.purge_expired(now);
        Ok(IssuedToken { token, expires_at_ms: record.expires_at_ms })
    }

    /// Drops expired tokens from memory and disk (best effort: a failure is logged).
    fn purge_expired(&self, now: i64) {
        let Some(e) = &self.enabled else { return };
        let expired: Vec<[u8; 32]> =
            e.tokens.read().iter().filter(|(_, t)| t.expires_at_ms <= now).map(|(h, _)| *h).collect();
        if expired.is_empty() {
            return;
        }
        if let Err(err) = e.db.delete_tokens(&expired) {
            tracing::warn!(error = %err, "cannot purge expired tokens (they stay refused)");
            return;
        }
        let mut tokens = e.tokens.write();
        for h in &expired {
            tokens.remove(h);
        }
    }

    /// Revokes the bearer token in `authorization` (only that one); durable before it returns.
    pub fn logout(&self, authorization: Option<&str>) -> Result<(), AuthError> {
        let Some(e) = &self.enabled else { return Ok(()) };
        self.authenticate(authorization)?;
        let hash = sha256(bearer_token(authorization)?);
        let _guard = e.mutations.lock();
        e.db.delete_tokens(&[hash])?;
        e.tokens.write().remove(&hash);
        Ok(())
    }

    /// Creates a user; `senders` (raw numbers, normalized here) restricts a `user` to those
    /// business numbers, `None` leaves it unrestricted. Slow (argon2): call it off the async
    /// workers.
    pub fn create_user(
        &self,
        username: &str,
        password: &str,
        role: Role,
        senders: Option<&[String]>,
    ) -> Result<UserInfo, AuthError> {
        let e = self.enabled_or_invalid()?;
        check_username(username).map_err(AuthError::Invalid)?;
        check_password(password).map_err(AuthError::Invalid)?;
        let senders = senders.map(|raw| normalize_senders(raw, &e.rules)).transpose().map_err(AuthError::Invalid)?;
        let password_hash = hash_password(password)?;
        let created_at_ms = e.clock.now_ms();
        let _guard = e.mutations.lock();
        if e.db.user(username)?.is_some() {
            return Err(AuthError::UserExists(username.to_owned()));
        }
        let stored = senders.iter().flatten().map(|s| s.as_str().to_owned()).collect();
        let record = UserRecord { password_hash, role: role.as_str().into(), created_at_ms, senders: stored };
        e.db.put_user(username, &record)?;
        Ok(UserInfo { username: username.to_owned(), role, created_at_ms, senders })
    }

    /// Sets (`Some`: raw numbers, normalized here) or lifts (`None`) a user's `senders`; durable
    /// before it returns, and in force for the user's open tokens at once.
    pub fn set_senders(&self, username: &str, senders: Option<&[String]>) -> Result<UserInfo, AuthError> {
        let e = self.enabled_or_invalid()?;
        let senders = senders.map(|raw| normalize_senders(raw, &e.rules)).transpose().map_err(AuthError::Invalid)?;
        let _guard = e.mutations.lock();
        let Some(mut user) = e.db.user(username)? else {
            return Err(AuthError::NoSuchUser(username.to_owned()));
        };
        let role = parse_role(&user.role, "auth user role")?;
        user.senders = senders.iter().flatten().map(|s| s.as_str().to_owned()).collect();
        e.db.put_user(username, &user)?;
        let cached = principal_senders(role, &user.senders);
        for t in e.tokens.write().values_mut().filter(|t| &*t.username == username) {
            t.senders = cached.clone();
        }
        Ok(UserInfo { username: username.to_owned(), role, created_at_ms: user.created_at_ms, senders })
    }

    /// Deletes a user and revokes all its tokens (durable before it returns). The last admin
    /// cannot be deleted (nobody could manage users any more).
    pub fn delete_user(&self, username: &str) -> Result<(), AuthError> {
        let e = self.enabled_or_invalid()?;
        let _guard = e.mutations.lock();
        let Some(user) = e.db.user(username)? else {
            return Err(AuthError::NoSuchUser(username.to_owned()));
        };
        if user.role == Role::Admin.as_str() {
            let admins = e.db.users()?.iter().filter(|(_, u)| u.role == Role::Admin.as_str()).count();
            if admins <= 1 {
                return Err(AuthError::Invalid(ApiError::invalid(
                    "username",
                    format_args!("another user than `{username}`: it is the last admin"),
                )));
            }
        }
        let revoked = e.db.delete_user(username)?;
        let mut tokens = e.tokens.write();
        for h in &revoked {
            tokens.remove(h);
        }
        Ok(())
    }

    /// A user's name, role and creation time.
    pub fn user(&self, username: &str) -> Result<UserInfo, AuthError> {
        let e = self.enabled_or_invalid()?;
        let Some(u) = e.db.user(username)? else {
            return Err(AuthError::NoSuchUser(username.to_owned()));
        };
        Ok(UserInfo {
            username: username.to_owned(),
            role: parse_role(&u.role, "auth user role")?,
            created_at_ms: u.created_at_ms,
            senders: (!u.senders.is_empty())
                .then(|| u.senders.iter().map(|s| WaId::from_normalized(s.clone())).collect()),
        })
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

/// The token of `Bearer TOKEN` (scheme case-insensitive).
fn bearer_token(authorization: Option<&str>) -> Result<&str, AuthError> {
    let Some(value) = authorization else {
        return Err(AuthError::Unauthenticated(
            "no token: send `Authorization: Bearer TOKEN` (get one with POST /v1/users/login)".into(),
        ));
    };
    match value.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(token.trim()),
        _ => Err(AuthError::Unauthenticated("malformed authorization: expected `Bearer TOKEN`".into())),
    }
}

#[cfg(test)]
mod auth_tests {
    use std::time::Duration;

    use ferry_model::clock::ManualClock;

    use super::*;

    fn config(admin_password: Option<&str>) -> AuthConfig {
        AuthConfig { admin_password: admin_password.map(Into::into), token_ttl_secs: 60, ..AuthConfig::default() }
    }

    fn rules() -> SenderRules {
        SenderRules { country_code: "1".into(), default_sender: WaId::from_normalized("15550100000".into()) }
    }

    fn bearer(t: &IssuedToken) -> String {
        format!("Bearer {}", t.token)
    }

    #[test]
    fn login_roles_expiry_and_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let (auth, boot) = Auth::open(dir.path(), &config(Some("s3cret-pass")), clock.clone(), rules()).unwrap();
        assert_eq!(boot, Bootstrap::AdminFromConfig);
        assert!(matches!(auth.login("admin", "wrong-pass"), Err(AuthError::Unauthenticated(_))));
        assert!(matches!(auth.login("nobody", "s3cret-pass"), Err(AuthError::Unauthenticated(_))));
        let admin = auth.login("admin", "s3cret-pass").unwrap();
        assert_eq!(auth.authorize(Some(&bearer(&admin)), Role::Admin).unwrap().username, "admin");

        auth.create_user("bob", "bob-password", Role::User, None).unwrap();
        assert!(matches!(auth.create_user("bob", "bob-password", Role::User, None), Err(AuthError::UserExists(_))));
        let bob = auth.login("bob", "bob-password").unwrap();
        assert_eq!(auth.authorize(Some(&bearer(&bob)), Role::User).unwrap().role, Role::User);
        assert!(matches!(auth.authorize(Some(&bearer(&bob)), Role::Admin), Err(AuthError::Forbidden(_))));
        assert!(matches!(auth.authorize(None, Role::User), Err(AuthError::Unauthenticated(_))));
        assert!(matches!(auth.authorize(Some("Basic abc"), Role::User), Err(AuthError::Unauthenticated(_))));

        // Logout revokes that token only.
        let bob2 = auth.login("bob", "bob-password").unwrap();
        auth.logout(Some(&bearer(&bob))).unwrap();
        assert!(matches!(auth.authorize(Some(&bearer(&bob)), Role::User), Err(AuthError::Unauthenticated(_))));
        auth.authorize(Some(&bearer(&bob2)), Role::User).unwrap();

        // Expiry on the node's clock.
        clock.advance(Duration::from_secs(61));
        let err = auth.authorize(Some(&bearer(&bob2)), Role::User).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn tokens_and_revocations_hold_across_reopen_and_deleting_a_user_revokes_its_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let (kept, revoked, carol) = {
            let (auth, boot) = Auth::open(dir.path(), &config(None), clock.clone(), rules()).unwrap();
            let Bootstrap::AdminGenerated(password) = boot else { panic!("expected a generated password") };
            assert!(password.len() >= 20);
            let kept = auth.login("admin", &password).unwrap();
            let revoked = auth.login("admin", &password).unwrap();
            auth.logout(Some(&bearer(&revoked))).unwrap();
            auth.create_user("carol", "carol-password", Role::Admin, None).unwrap();
            let carol = auth.login("carol", "carol-password").unwrap();
            (kept, revoked, carol)
        };
        let (auth, boot) = Auth::open(dir.path(), &config(Some("ignored-now")), clock, rules()).unwrap();
        assert_eq!(boot, Bootstrap::Existing, "admin is created only when there is no user");
        auth.authorize(Some(&bearer(&kept)), Role::Admin).unwrap();
        assert!(auth.authorize(Some(&bearer(&revoked)), Role::User).is_err());
        auth.delete_user("carol").unwrap();
        assert!(auth.authorize(Some(&bearer(&carol)), Role::User).is_err());
        assert!(matches!(auth.delete_user("carol"), Err(AuthError::NoSuchUser(_))));
        let err = auth.delete_user("admin").unwrap_err();
        assert!(err.to_string().contains("last admin"), "{err}");
    }

    #[test]
    fn bad_input_is_refused_with_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, _) = Auth::open(dir.path(), &config(Some("s3cret-pass")), ManualClock::new(), rules()).unwrap();
        let e = auth.create_user("a b", "long-enough", Role::User, None).unwrap_err();
        assert!(e.to_string().contains("username"), "{e}");
        let e = auth.create_user("ab", "short", Role::User, None).unwrap_err();
        assert!(e.to_string().contains("8 to 1024 characters, got 5"), "{e}");
        assert!("root".parse::<Role>().unwrap_err().contains("expected `admin` or `user`"));
        let short = AuthConfig { admin_password: Some("x".into()), ..AuthConfig::default() };
        assert!(short.validate().unwrap_err().contains("FERRY_ADMIN_PASSWORD"));
        let zero = AuthConfig { token_ttl_secs: 0, ..AuthConfig::default() };
        assert!(zero.validate().unwrap_err().contains("token_ttl_secs"));
    }

    #[test]
    fn senders_restrict_users_not_admins_and_hold_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let token = {
            let (auth, _) = Auth::open(dir.path(), &config(Some("s3cret-pass")), clock.clone(), rules()).unwrap();
            let raw = ["+1 (555) 010-0001".to_owned(), "5550100002".to_owned(), "+15550100001".to_owned()];
            let info = auth.create_user("shop", "shop-password", Role::User, Some(&raw)).unwrap();
            let listed: Vec<&str> = info.senders.as_ref().unwrap().iter().map(WaId::as_str).collect();
            assert_eq!(listed, ["15550100001", "15550100002"], "normalized with the country code, deduplicated");
            let t = auth.login("shop", "shop-password").unwrap();
            let shop = auth.authenticate(Some(&bearer(&t))).unwrap();
            auth.check_sender(&shop, Some("+1 555 010 0002")).unwrap();
            let e = auth.check_sender(&shop, None).unwrap_err();
            assert_eq!((e.code, e.field.as_str()), (ErrorCode::AccessDenied, "sender"));
            assert!(e.details.contains("+15550100000") && e.details.contains("default_sender"), "{e}");
            let e = auth.check_sender(&shop, Some("+1555abc")).unwrap_err();
            assert_eq!((e.code, e.field.as_str()), (ErrorCode::InvalidParameter, "sender"), "{e}");
            assert!(shop.may_read("15550100001") && !shop.may_read("15550100000"));
            // Lifting the list applies to the open token at once.
            auth.set_senders("shop", None).unwrap();
            assert!(auth.authenticate(Some(&bearer(&t))).unwrap().senders.is_none());
            auth.set_senders("shop", Some(&["+15550100009".to_owned()])).unwrap();
            // Bad lists are refused naming the field, and change nothing.
            let e = auth.set_senders("shop", Some(&["+15550100003".to_owned(), "call me".to_owned()])).unwrap_err();
            assert_eq!(e.api_error().field, "senders[1]", "{e}");
            let e = auth.set_senders("shop", Some(&[])).unwrap_err();
            assert_eq!(e.api_error().field, "senders");
            // An admin with a list stays unrestricted.
            let admin = auth.create_user("boss", "boss-password", Role::Admin, Some(&raw)).unwrap();
            assert!(admin.senders.is_some());
            let boss = auth.login("boss", "boss-password").unwrap();
            let boss = auth.authenticate(Some(&bearer(&boss))).unwrap();
            auth.check_sender(&boss, Some("+15559999999")).unwrap();
            t
        };
        let (auth, _) = Auth::open(dir.path(), &config(None), clock, rules()).unwrap();
        let shop = auth.authenticate(Some(&bearer(&token))).unwrap();
        let list: Vec<&str> = shop.senders.as_ref().unwrap().iter().map(WaId::as_str).collect();
        assert_eq!(list, ["15550100009"]);
        assert_eq!(auth.user("shop").unwrap().senders.unwrap().len(), 1);
    }

    #[test]
    fn watch_streams_are_capped_per_user() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AuthConfig { max_watch_streams_per_user: 2, ..config(Some("s3cret-pass")) };
        let (auth, _) = Auth::open(dir.path(), &cfg, ManualClock::new(), rules()).unwrap();
        let p = |name: &str| Principal { username: name.into(), role: Role::User, senders: None };
        let a = auth.open_watch_stream(&p("a")).unwrap();
        let _b = auth.open_watch_stream(&p("a")).unwrap();
        let e = auth.open_watch_stream(&p("a")).err().unwrap();
        assert_eq!(e.code, ErrorCode::TooManyRequests);
        assert!(e.details.contains("max_watch_streams_per_user = 2"), "{e}");
        let _other = auth.open_watch_stream(&p("z")).unwrap();
        drop(a);
        auth.open_watch_stream(&p("a")).unwrap();
    }

    #[test]
    fn disabled_lets_everyone_in() {
        let auth = Auth::disabled();
        assert_eq!(auth.authorize(None, Role::Admin).unwrap().role, Role::Admin);
        assert!(auth.login("admin", "x").is_err());
    }
}
