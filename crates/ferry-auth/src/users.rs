//! User management: create, restrict, delete, show.

use ferry_model::{ApiError, WaId};
use ferry_shard::auth_store::UserRecord;

use crate::password::{check_password, hash_password};
use crate::roles::parse_role;
use crate::tenancy::{normalize_senders, principal_senders};
use crate::{Auth, AuthError, Role};

/// A user as management calls show it (never the hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub role: Role,
    pub created_at_ms: i64,
    /// `None`: unrestricted.
    pub senders: Option<Vec<WaId>>,
}

pub(crate) fn check_username(u: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&u.len())
        && u.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid("username", "1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-', '@'"))
    }
}

impl Auth {
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
        // Names are unique ignoring ASCII case: `Admin` beside `admin` would be two accounts that
        // read as one in every log, audit trail and support ticket. Login stays exact.
        if let Some((existing, _)) = e.db.users()?.into_iter().find(|(name, _)| name.eq_ignore_ascii_case(username)) {
            return Err(AuthError::UserExists(existing));
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
}
