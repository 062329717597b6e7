//! What an auth call can answer besides success.

use ferry_model::{ApiError, ErrorCode};
use ferry_shard::ShardError;

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
    #[error("user `{0}` exists already (user names are unique regardless of case)")]
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
