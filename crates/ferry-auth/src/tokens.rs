//! Bearer tokens: login issues one, every call is checked against the in-memory cache, logout
//! revokes one.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ferry_model::{ApiError, ErrorCode, WaId};
use ferry_shard::auth_store::TokenRecord;
use sha2::{Digest, Sha256};

use crate::password::{dummy_hash, verify_password};
use crate::roles::parse_role;
use crate::tenancy::principal_senders;
use crate::{Auth, AuthError, Principal, Role, random_bytes};

/// A token handed out by [`Auth::login`]; the clear token exists only here.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct CachedToken {
    pub(crate) username: Arc<str>,
    pub(crate) role: Role,
    pub(crate) senders: Option<Arc<[WaId]>>,
    pub(crate) expires_at_ms: i64,
}

pub(crate) fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
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
}

/// The token of `Bearer TOKEN` (scheme case-insensitive).
pub(crate) fn bearer_token(authorization: Option<&str>) -> Result<&str, AuthError> {
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
