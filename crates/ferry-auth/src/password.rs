//! Password rules and hashing (argon2id, PHC strings).

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use ferry_model::ApiError;

use crate::{AuthError, random_bytes};

/// Shortest password accepted (for created users and `admin_password`).
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest password accepted (argon2 hashes any length; this bounds the work per login).
pub const MAX_PASSWORD_LEN: usize = 1024;

pub(crate) fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).expect("16 bytes is a valid salt length");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Invalid(ApiError::invalid("password", format_args!("a hashable password ({e})"))))
}

pub(crate) fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A hash to verify against when the user does not exist, so a wrong user name takes as long as
/// a wrong password (no user enumeration by timing).
pub(crate) fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| hash_password("not a password of anyone").expect("hashing works"))
}

pub(crate) fn check_password(p: &str) -> Result<(), ApiError> {
    let n = p.chars().count();
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&n) {
        return Err(ApiError::invalid(
            "password",
            format_args!("{MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters, got {n}"),
        ));
    }
    Ok(())
}
