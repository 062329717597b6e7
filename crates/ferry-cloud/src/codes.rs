//! Graph / Cloud API error codes that ferry and `ferry cloudsim` name, with Meta's titles and the
//! HTTP status Meta answers them with (from Meta's "WhatsApp error codes" page), and [`classify`]:
//! the one table of what ferry does with each (retry, slow down, fail, stop the number), used by
//! ferry's Cloud upstream for synchronous errors and for `failed` status webhooks alike.

/// One known code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownCode {
    pub code: u32,
    /// Meta's title (the part after `(#CODE) ` in `error.message`).
    pub title: &'static str,
    /// The HTTP status of a synchronous error with this code.
    pub http_status: u16,
    /// `error.type` of a synchronous error.
    pub kind: &'static str,
    /// A default `error_data.details`.
    pub details: &'static str,
}

pub const API_UNKNOWN: u32 = 1;
pub const API_SERVICE: u32 = 2;
pub const PERMISSION_DENIED: u32 = 10;
pub const INVALID_PARAMETER: u32 = 100;
pub const ACCESS_TOKEN_EXPIRED: u32 = 190;
pub const API_PERMISSION: u32 = 200;
pub const POLICY_BLOCKED: u32 = 368;
pub const THROUGHPUT_LIMIT: u32 = 130429;
pub const SOMETHING_WENT_WRONG: u32 = 131000;
pub const ACCESS_DENIED: u32 = 131005;
pub const MISSING_PARAMETER: u32 = 131008;
pub const INVALID_PARAMETER_VALUE: u32 = 131009;
pub const SERVICE_UNAVAILABLE: u32 = 131016;
pub const RECIPIENT_IS_SENDER: u32 = 131021;
pub const UNDELIVERABLE: u32 = 131026;
pub const ACCOUNT_LOCKED: u32 = 131031;
pub const PAYMENT_ISSUE: u32 = 131042;
pub const NOT_REGISTERED: u32 = 131045;
pub const REENGAGEMENT: u32 = 131047;
pub const SPAM_RATE_LIMIT: u32 = 131048;
pub const MARKETING_LIMIT: u32 = 131049;
pub const UNSUPPORTED_MESSAGE_TYPE: u32 = 131051;
pub const PAIR_RATE_LIMIT: u32 = 131056;
pub const MAINTENANCE_MODE: u32 = 131057;
pub const TEMPLATE_PARAMETER_COUNT: u32 = 132000;
pub const TEMPLATE_DOES_NOT_EXIST: u32 = 132001;
pub const TEMPLATE_PARAMETER_FORMAT: u32 = 132012;
pub const TEMPLATE_PAUSED: u32 = 132015;
pub const SERVER_TEMPORARILY_UNAVAILABLE: u32 = 133004;

const OAUTH: &str = "OAuthException";

/// Every code of this table.
pub const KNOWN: &[KnownCode] = &[
    KnownCode {
        code: API_UNKNOWN,
        title: "API Unknown",
        http_status: 400,
        kind: OAUTH,
        details: "Invalid request or possible server error.",
    },
    KnownCode {
        code: API_SERVICE,
        title: "API Service",
        http_status: 503,
        kind: OAUTH,
        details: "Temporary due to downtime or due to being overloaded.",
    },
    KnownCode {
        code: PERMISSION_DENIED,
        title: "Permission Denied",
        http_status: 403,
        kind: OAUTH,
        details: "Permission is either not granted or has been removed.",
    },
    KnownCode {
        code: INVALID_PARAMETER,
        title: "Invalid parameter",
        http_status: 400,
        kind: OAUTH,
        details: "The request included one or more unsupported or misspelled parameters.",
    },
    KnownCode {
        code: ACCESS_TOKEN_EXPIRED,
        title: "Access token has expired",
        http_status: 401,
        kind: OAUTH,
        details: "Error validating access token: Session has expired.",
    },
    KnownCode {
        code: API_PERMISSION,
        title: "API Permission",
        http_status: 403,
        kind: OAUTH,
        details: "Permission is either not granted or has been removed.",
    },
    KnownCode {
        code: POLICY_BLOCKED,
        title: "Temporarily blocked for policies violations",
        http_status: 403,
        kind: OAUTH,
        details: "The WhatsApp Business Account associated with the app has been restricted or disabled for violating a platform policy.",
    },
    KnownCode {
        code: THROUGHPUT_LIMIT,
        title: "Rate limit hit",
        http_status: 400,
        kind: OAUTH,
        details: "Message failed to send because there were too many messages sent from this phone number in a short period of time.",
    },
    KnownCode {
        code: SOMETHING_WENT_WRONG,
        title: "Something went wrong",
        http_status: 500,
        kind: OAUTH,
        details: "Message failed to send due to an unknown error.",
    },
    KnownCode {
        code: ACCESS_DENIED,
        title: "Access denied",
        http_status: 403,
        kind: OAUTH,
        details: "Permission is either not granted or has been removed.",
    },
    KnownCode {
        code: MISSING_PARAMETER,
        title: "Required parameter is missing",
        http_status: 400,
        kind: OAUTH,
        details: "The request is missing a required parameter.",
    },
    KnownCode {
        code: INVALID_PARAMETER_VALUE,
        title: "Parameter value is not valid",
        http_status: 400,
        kind: OAUTH,
        details: "One or more parameter values are invalid.",
    },
    KnownCode {
        code: SERVICE_UNAVAILABLE,
        title: "Service unavailable",
        http_status: 503,
        kind: OAUTH,
        details: "A service is temporarily unavailable.",
    },
    KnownCode {
        code: RECIPIENT_IS_SENDER,
        title: "Recipient cannot be sender",
        http_status: 400,
        kind: OAUTH,
        details: "Sending phone number and recipient phone number are the same.",
    },
    KnownCode {
        code: UNDELIVERABLE,
        title: "Message undeliverable",
        http_status: 400,
        kind: OAUTH,
        details: "Unable to deliver message. The recipient may not be a WhatsApp user.",
    },
    KnownCode {
        code: ACCOUNT_LOCKED,
        title: "Account has been locked",
        http_status: 403,
        kind: OAUTH,
        details: "The WhatsApp Business Account is restricted or disabled.",
    },
    KnownCode {
        code: PAYMENT_ISSUE,
        title: "Business eligibility payment issue",
        http_status: 400,
        kind: OAUTH,
        details: "Message failed to send because there were one or more errors related to your payment method.",
    },
    KnownCode {
        code: NOT_REGISTERED,
        title: "Incorrect certificate",
        http_status: 400,
        kind: OAUTH,
        details: "Message failed to send due to a phone number registration error.",
    },
    KnownCode {
        code: REENGAGEMENT,
        title: "Re-engagement message",
        http_status: 400,
        kind: OAUTH,
        details: "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
    },
    KnownCode {
        code: SPAM_RATE_LIMIT,
        title: "Spam rate limit hit",
        http_status: 400,
        kind: OAUTH,
        details: "Message failed to send because there are restrictions on how many messages can be sent from this phone number.",
    },
    KnownCode {
        code: MARKETING_LIMIT,
        title: "This message was not delivered to maintain healthy ecosystem engagement.",
        http_status: 400,
        kind: OAUTH,
        details: "Message failed to send to maintain healthy ecosystem engagement.",
    },
    KnownCode {
        code: UNSUPPORTED_MESSAGE_TYPE,
        title: "Unsupported message type",
        http_status: 400,
        kind: OAUTH,
        details: "Message type is not currently supported.",
    },
    KnownCode {
        code: PAIR_RATE_LIMIT,
        title: "(Business Account, Consumer Account) pair rate limit hit",
        http_status: 400,
        kind: OAUTH,
        details: "Message failed to send because there were too many messages sent from this phone number to the same phone number in a short period of time.",
    },
    KnownCode {
        code: MAINTENANCE_MODE,
        title: "Account in maintenance mode",
        http_status: 500,
        kind: OAUTH,
        details: "Business Account is in maintenance mode (for example a throughput upgrade).",
    },
    KnownCode {
        code: TEMPLATE_PARAMETER_COUNT,
        title: "Number of parameters does not match the expected number of params",
        http_status: 400,
        kind: OAUTH,
        details: "The number of variable parameter values does not match the template.",
    },
    KnownCode {
        code: TEMPLATE_DOES_NOT_EXIST,
        title: "Template name does not exist in the translation",
        http_status: 404,
        kind: OAUTH,
        details: "The template does not exist in the given language or has not been approved.",
    },
    KnownCode {
        code: TEMPLATE_PARAMETER_FORMAT,
        title: "Parameter format does not match format in the created template",
        http_status: 400,
        kind: OAUTH,
        details: "A variable parameter value is formatted incorrectly.",
    },
    KnownCode {
        code: TEMPLATE_PAUSED,
        title: "Template is paused",
        http_status: 400,
        kind: OAUTH,
        details: "The template has been paused due to low quality.",
    },
    KnownCode {
        code: SERVER_TEMPORARILY_UNAVAILABLE,
        title: "Server temporarily unavailable",
        http_status: 503,
        kind: OAUTH,
        details: "Cloud API is temporarily unavailable.",
    },
];

/// The table's entry of `code`, if known.
pub fn known(code: u32) -> Option<&'static KnownCode> {
    KNOWN.iter().find(|k| k.code == code)
}

/// What a Graph error means for the message and its business number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Temporary: send again after a backoff, until the message's TTL.
    Transient,
    /// 130429: the business number sends too fast: slow that number down.
    Throughput,
    /// 131056: too many messages to this recipient from this number: back off that pair only.
    PairLimit,
    /// 131049: the per-user marketing limit (ferry's marketing-limit rule decides).
    MarketingLimit,
    /// The message will never be delivered: `failed` with Meta's code and title.
    Permanent,
    /// The business number cannot send at all (token, permissions, account, payment,
    /// registration): stop sending from it, keep its messages queued, probe it later.
    NumberLevel,
}

/// The classification table. Meta's code decides; `is_transient` (when Meta sends it) decides a
/// code this table does not know; the HTTP status is the last resort (5xx and 429 transient or
/// throughput, anything else permanent).
pub fn classify(code: u32, is_transient: Option<bool>, http_status: u16) -> Class {
    match code {
        API_UNKNOWN
        | API_SERVICE
        | SOMETHING_WENT_WRONG
        | SERVICE_UNAVAILABLE
        | SERVER_TEMPORARILY_UNAVAILABLE
        | MAINTENANCE_MODE => Class::Transient,
        THROUGHPUT_LIMIT => Class::Throughput,
        PAIR_RATE_LIMIT => Class::PairLimit,
        MARKETING_LIMIT => Class::MarketingLimit,
        ACCESS_TOKEN_EXPIRED | PERMISSION_DENIED | API_PERMISSION | SPAM_RATE_LIMIT | ACCOUNT_LOCKED
        | POLICY_BLOCKED | PAYMENT_ISSUE | NOT_REGISTERED => Class::NumberLevel,
        UNDELIVERABLE
        | REENGAGEMENT
        | UNSUPPORTED_MESSAGE_TYPE
        | RECIPIENT_IS_SENDER
        | INVALID_PARAMETER
        | MISSING_PARAMETER
        | INVALID_PARAMETER_VALUE
        | ACCESS_DENIED
        | TEMPLATE_PARAMETER_COUNT
        | TEMPLATE_DOES_NOT_EXIST
        | TEMPLATE_PARAMETER_FORMAT
        | TEMPLATE_PAUSED => Class::Permanent,
        _ => match is_transient {
            Some(true) => Class::Transient,
            Some(false) => Class::Permanent,
            None if http_status == 429 => Class::Throughput,
            None if http_status >= 500 => Class::Transient,
            None => Class::Permanent,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The issue's rows, one by one.
    #[test]
    fn classification_rows() {
        for code in [1, 2, 131000, 131016, 133004, 131057] {
            assert_eq!(classify(code, None, 400), Class::Transient, "{code}");
        }
        assert_eq!(classify(130429, None, 400), Class::Throughput);
        assert_eq!(classify(131056, None, 400), Class::PairLimit);
        assert_eq!(classify(131049, None, 400), Class::MarketingLimit);
        for code in [131026, 131047, 131051, 131021, 131030, 100, 131008, 131009, 132000, 132001, 132012, 132015] {
            // 131030 (recipient not in the allowed list) is not in the code table: a 400 is permanent.
            assert_eq!(classify(code, None, 400), Class::Permanent, "{code}");
        }
        for code in [190, 10, 200, 131048, 131031, 368, 131042, 131045] {
            assert_eq!(classify(code, None, 400), Class::NumberLevel, "{code}");
        }
        // Unknown codes: is_transient first, then the HTTP status.
        assert_eq!(classify(4242, Some(true), 400), Class::Transient);
        assert_eq!(classify(4242, Some(false), 503), Class::Permanent);
        assert_eq!(classify(4242, None, 503), Class::Transient);
        assert_eq!(classify(4242, None, 429), Class::Throughput);
        assert_eq!(classify(4242, None, 400), Class::Permanent);
        // A known code is not overridden by is_transient.
        assert_eq!(classify(131026, Some(true), 400), Class::Permanent);
    }

    #[test]
    fn codes_are_unique_and_found() {
        for (i, k) in KNOWN.iter().enumerate() {
            assert!(KNOWN[..i].iter().all(|o| o.code != k.code), "{} twice", k.code);
            assert_eq!(known(k.code), Some(k));
            assert!(!k.title.is_empty() && !k.details.is_empty());
        }
        assert_eq!(known(PAIR_RATE_LIMIT).unwrap().http_status, 400);
        assert_eq!(known(ACCESS_TOKEN_EXPIRED).unwrap().http_status, 401);
        assert_eq!(known(4242), None);
    }
}
