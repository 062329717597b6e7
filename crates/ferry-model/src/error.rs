//! The one table of client-facing error codes.
//!
//! Every failure ferry reports to a caller is an [`ApiError`]: an [`ErrorCode`] (which fixes the
//! reference code, the Cloud-flavour code, the HTTP status and the gRPC status), the field path it
//! concerns and what was expected. The gRPC layer, the JSON layer and the webhooks all map through
//! this table and nowhere else.

use std::fmt;

/// gRPC status codes, by number (the same numbers as `tonic::Code`), so this crate does not depend
/// on tonic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum GrpcCode {
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// A stable failure kind. See [`ErrorCode::code`] for the reference (On-Premises) code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1000: generic error.
    Generic,
    /// 1001: a value is longer than allowed.
    TooLong,
    /// 1005: access denied (wrong role).
    AccessDenied,
    /// 1006: resource not found (e.g. unknown message id).
    NotFound,
    /// 1008: a required parameter is missing.
    MissingParameter,
    /// 1009: a parameter value is not valid.
    InvalidParameter,
    /// 1009 / 131051: the message type is not supported.
    UnsupportedMessageType,
    /// 1011: the service is not ready (starting, draining).
    ServiceNotReady,
    /// 1013: the recipient is not a valid WhatsApp user.
    UserNotValid,
    /// 1014: internal error.
    Internal,
    /// 1015: too many requests (a shard's queue is full).
    TooManyRequests,
    /// 1016: the system is overloaded.
    SystemOverloaded,
    /// 1021: the sender is the recipient.
    SenderIsRecipient,
    /// 1026: the receiver cannot receive this message.
    ReceiverIncapable,
    /// 408: the message was pending for more than a day.
    PendingTooLong,
    /// 410: the message expired (TTL) before the server acknowledged it.
    Expired,
    /// 470: outside the 24-hour customer-service window.
    OutsideCustomerServiceWindow,
    /// 471: spam rate limit.
    SpamRateLimit,
    /// 131049: the per-user marketing limit; the chat server kept refusing the message
    /// (`MARKETING_LIMITED`) after `delivery.marketing_limit_retries` further attempts. The On-Prem
    /// API had no code of its own for it (it reported 1026, like any undeliverable message), so
    /// ferry reports the Cloud code in both flavours, where callers can tell it apart.
    MarketingLimit,
    /// 132015: the template is paused (paced template dropped after its quality assessment, by
    /// `pacing.after_hold = "drop"` or an admin `ResolveHeld` drop). The On-Prem API had no code
    /// for it; ferry reports the Cloud code 132015 in both flavours.
    TemplatePaused,
    /// 1009 with HTTP 409 / gRPC ALREADY_EXISTS: the idempotency key was already used by the same
    /// sender for a different message.
    IdempotencyConflict,
    /// 401 / UNAUTHENTICATED: no or bad credentials.
    Unauthenticated,
}

impl ErrorCode {
    /// Every code, for documentation and exhaustive tests.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::Generic,
        ErrorCode::TooLong,
        ErrorCode::AccessDenied,
        ErrorCode::NotFound,
        ErrorCode::MissingParameter,
        ErrorCode::InvalidParameter,
        ErrorCode::UnsupportedMessageType,
        ErrorCode::ServiceNotReady,
        ErrorCode::UserNotValid,
        ErrorCode::Internal,
        ErrorCode::TooManyRequests,
        ErrorCode::SystemOverloaded,
        ErrorCode::SenderIsRecipient,
        ErrorCode::ReceiverIncapable,
        ErrorCode::PendingTooLong,
        ErrorCode::Expired,
        ErrorCode::OutsideCustomerServiceWindow,
        ErrorCode::SpamRateLimit,
        ErrorCode::MarketingLimit,
        ErrorCode::TemplatePaused,
        ErrorCode::IdempotencyConflict,
        ErrorCode::Unauthenticated,
    ];

    /// The reference (On-Premises) error code.
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::Generic => 1000,
            ErrorCode::TooLong => 1001,
            ErrorCode::AccessDenied => 1005,
            ErrorCode::NotFound => 1006,
            ErrorCode::MissingParameter => 1008,
            ErrorCode::InvalidParameter => 1009,
            ErrorCode::UnsupportedMessageType => 1009,
            ErrorCode::ServiceNotReady => 1011,
            ErrorCode::UserNotValid => 1013,
            ErrorCode::Internal => 1014,
            ErrorCode::TooManyRequests => 1015,
            ErrorCode::SystemOverloaded => 1016,
            ErrorCode::SenderIsRecipient => 1021,
            ErrorCode::ReceiverIncapable => 1026,
            ErrorCode::PendingTooLong => 408,
            ErrorCode::Expired => 410,
            ErrorCode::OutsideCustomerServiceWindow => 470,
            ErrorCode::SpamRateLimit => 471,
            ErrorCode::MarketingLimit => 131049,
            // No On-Prem code exists: the Cloud code in both flavours.
            ErrorCode::TemplatePaused => 132015,
            ErrorCode::IdempotencyConflict => 1009,
            ErrorCode::Unauthenticated => 1005,
        }
    }

    /// The Cloud API flavour of the code.
    pub fn cloud_code(self) -> u32 {
        match self {
            ErrorCode::Generic => 131000,
            ErrorCode::TooLong => 131009,
            ErrorCode::AccessDenied => 10,
            ErrorCode::NotFound => 100,
            ErrorCode::MissingParameter => 131008,
            ErrorCode::InvalidParameter => 131009,
            ErrorCode::UnsupportedMessageType => 131051,
            ErrorCode::ServiceNotReady => 131016,
            ErrorCode::UserNotValid => 131026,
            ErrorCode::Internal => 131000,
            ErrorCode::TooManyRequests => 130429,
            ErrorCode::SystemOverloaded => 131016,
            ErrorCode::SenderIsRecipient => 131021,
            ErrorCode::ReceiverIncapable => 131026,
            ErrorCode::PendingTooLong => 131000,
            ErrorCode::Expired => 131000,
            ErrorCode::OutsideCustomerServiceWindow => 131047,
            ErrorCode::SpamRateLimit => 131048,
            ErrorCode::MarketingLimit => 131049,
            ErrorCode::TemplatePaused => 132015,
            ErrorCode::IdempotencyConflict => 131009,
            ErrorCode::Unauthenticated => 190,
        }
    }

    /// A short title, as the reference gives in `errors[].title`.
    pub fn title(self) -> &'static str {
        match self {
            ErrorCode::Generic => "Generic error",
            ErrorCode::TooLong => "Parameter value is too long",
            ErrorCode::AccessDenied => "Access denied",
            ErrorCode::NotFound => "Resource not found",
            ErrorCode::MissingParameter => "Required parameter is missing",
            ErrorCode::InvalidParameter => "Parameter value is not valid",
            ErrorCode::UnsupportedMessageType => "Unsupported message type",
            ErrorCode::ServiceNotReady => "Service not ready",
            ErrorCode::UserNotValid => "Recipient is not a valid WhatsApp user",
            ErrorCode::Internal => "Internal error",
            ErrorCode::TooManyRequests => "Too many requests",
            ErrorCode::SystemOverloaded => "System overloaded",
            ErrorCode::SenderIsRecipient => "Sender is the recipient",
            ErrorCode::ReceiverIncapable => "Receiver is incapable of receiving this message",
            ErrorCode::PendingTooLong => "Message pending for too long",
            ErrorCode::Expired => "Message expired",
            ErrorCode::OutsideCustomerServiceWindow => {
                "Message failed to send because more than 24 hours have passed since the customer last replied"
            }
            ErrorCode::SpamRateLimit => "Spam rate limit hit",
            ErrorCode::MarketingLimit => "This message was not delivered to maintain healthy ecosystem engagement",
            ErrorCode::TemplatePaused => "Template is paused",
            ErrorCode::IdempotencyConflict => "Idempotency key reused with a different message",
            ErrorCode::Unauthenticated => "Authentication required",
        }
    }

    /// The HTTP status the JSON API answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Generic => 400,
            ErrorCode::TooLong
            | ErrorCode::MissingParameter
            | ErrorCode::InvalidParameter
            | ErrorCode::UnsupportedMessageType
            | ErrorCode::UserNotValid
            | ErrorCode::SenderIsRecipient
            | ErrorCode::ReceiverIncapable
            | ErrorCode::MarketingLimit
            | ErrorCode::TemplatePaused
            | ErrorCode::OutsideCustomerServiceWindow => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::AccessDenied => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::IdempotencyConflict => 409,
            ErrorCode::PendingTooLong | ErrorCode::Expired => 410,
            ErrorCode::TooManyRequests | ErrorCode::SpamRateLimit => 429,
            ErrorCode::Internal => 500,
            ErrorCode::ServiceNotReady | ErrorCode::SystemOverloaded => 503,
        }
    }

    /// The gRPC status the gRPC API answers with.
    pub fn grpc_code(self) -> GrpcCode {
        match self {
            ErrorCode::Generic => GrpcCode::Unknown,
            ErrorCode::TooLong
            | ErrorCode::MissingParameter
            | ErrorCode::InvalidParameter
            | ErrorCode::UnsupportedMessageType
            | ErrorCode::SenderIsRecipient => GrpcCode::InvalidArgument,
            ErrorCode::UserNotValid
            | ErrorCode::ReceiverIncapable
            | ErrorCode::MarketingLimit
            | ErrorCode::TemplatePaused
            | ErrorCode::OutsideCustomerServiceWindow => GrpcCode::FailedPrecondition,
            ErrorCode::Unauthenticated => GrpcCode::Unauthenticated,
            ErrorCode::AccessDenied => GrpcCode::PermissionDenied,
            ErrorCode::NotFound => GrpcCode::NotFound,
            ErrorCode::IdempotencyConflict => GrpcCode::AlreadyExists,
            ErrorCode::PendingTooLong | ErrorCode::Expired => GrpcCode::DeadlineExceeded,
            ErrorCode::TooManyRequests | ErrorCode::SpamRateLimit | ErrorCode::SystemOverloaded => {
                GrpcCode::ResourceExhausted
            }
            ErrorCode::Internal => GrpcCode::Internal,
            ErrorCode::ServiceNotReady => GrpcCode::Unavailable,
        }
    }
}

/// A client-facing error: what kind, which field, and what was wrong or expected.
///
/// `details` is lowercase prose that says what was wrong and what was expected, e.g.
/// `"expected at most 3 buttons, got 4"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    /// Field path such as `interactive.action.buttons[3].reply.title`; empty when not about one
    /// field.
    pub field: String,
    pub details: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, field: impl Into<String>, details: impl Into<String>) -> Self {
        ApiError { code, field: field.into(), details: details.into() }
    }

    /// A required field is absent or empty.
    pub fn missing(field: impl Into<String>) -> Self {
        let field = field.into();
        let details = format!("`{field}` is required");
        ApiError::new(ErrorCode::MissingParameter, field, details)
    }

    /// A field has a value that is not allowed; `expected` says what would be.
    pub fn invalid(field: impl Into<String>, expected: impl fmt::Display) -> Self {
        let field = field.into();
        let details = format!("invalid `{field}`: expected {expected}");
        ApiError::new(ErrorCode::InvalidParameter, field, details)
    }

    /// A text field is longer than `max` characters.
    pub fn too_long(field: impl Into<String>, max: usize, got: usize) -> Self {
        let field = field.into();
        let details = format!("`{field}` is {got} characters long: expected at most {max}");
        ApiError::new(ErrorCode::TooLong, field, details)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code.code(), self.code.title().to_lowercase())?;
        if !self.field.is_empty() {
            write!(f, " at `{}`", self.field)?;
        }
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_code_field_and_expectation() {
        let e = ApiError::too_long("text.body", 4096, 4097);
        assert_eq!(
            e.to_string(),
            "1001 (parameter value is too long) at `text.body`: `text.body` is 4097 characters long: expected at most 4096"
        );
    }

    #[test]
    fn every_code_maps_to_a_client_or_server_http_status() {
        for code in ErrorCode::ALL {
            let status = code.http_status();
            assert!((400..600).contains(&status), "{code:?} -> {status}");
        }
        assert_eq!(ErrorCode::TooManyRequests.grpc_code(), GrpcCode::ResourceExhausted);
        assert_eq!(ErrorCode::IdempotencyConflict.http_status(), 409);
    }

    #[test]
    fn the_marketing_limit_is_131049_in_both_flavours_and_a_delivery_failure() {
        let code = ErrorCode::MarketingLimit;
        assert_eq!((code.code(), code.cloud_code()), (131049, 131049));
        assert_eq!(code.title(), "This message was not delivered to maintain healthy ecosystem engagement");
        assert_eq!((code.http_status(), code.grpc_code()), (400, GrpcCode::FailedPrecondition));
        // Webhooks find the code by its reference number: it must name one kind only.
        assert_eq!(ErrorCode::ALL.iter().filter(|c| c.code() == 131049).count(), 1);
    }

    #[test]
    fn template_paused_is_132015_in_both_flavours() {
        let code = ErrorCode::TemplatePaused;
        assert_eq!((code.code(), code.cloud_code(), code.title()), (132015, 132015, "Template is paused"));
        assert_eq!(ErrorCode::ALL.iter().filter(|c| c.code() == 132015).count(), 1);
    }
}
