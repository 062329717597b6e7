//! The WhatsApp Cloud API on the wire, as both ends of ferry speak it: ferry's Cloud upstream (which
//! POSTs `/{version}/{phone_number_id}/messages` and reads the answers), ferry's `/webhooks/cloud`
//! endpoint (which verifies and reads Meta's webhooks) and `ferry cloudsim` (which plays Meta). The
//! crate holds types and pure functions only (no I/O, no ferry types), so each side depends on it and
//! not on the other.
//!
//! - [`send`]: the 200 answer of a send (`messaging_product`, `contacts[{input, wa_id}]`,
//!   `messages[{id, message_status}]`) and the Graph error body (`{"error":{"message","type","code",
//!   "error_subcode","error_data":{"messaging_product","details"},"fbtrace_id","is_transient"}}`).
//! - [`webhook`]: the `messages` webhook (`{"object":"whatsapp_business_account","entry":[{"id",
//!   "changes":[{"field":"messages","value":{...}}]}]}`) with statuses (sent, delivered, read, failed
//!   with `errors[]`, `conversation`, `pricing`, `biz_opaque_callback_data`) and inbound messages.
//! - [`signature`]: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>`, signed
//!   and verified in constant time.
//! - [`verification`]: the subscription handshake (`hub.mode`, `hub.verify_token`, `hub.challenge`).
//! - [`codes`]: the Graph error codes ferry and cloudsim name (130429, 131056, 190, ...), with
//!   Meta's titles. Classifying them (retry, fail, block the number) is the upstream's job, not
//!   this crate's.
//!
//! Reading is lenient where Meta's payloads vary (unknown keys are ignored, optional parts may be
//! absent, a numeric `code` may arrive as a string); writing leaves `None` fields and empty lists out.

pub mod codes;
pub mod send;
pub mod signature;
pub mod verification;
pub mod webhook;

pub use send::{GraphError, GraphErrorBody, GraphErrorData, SendContact, SendResponse, SentMessage};
pub use signature::{SIGNATURE_HEADER, SignatureError, sign, verify};
pub use verification::VerificationQuery;
pub use webhook::{
    Change, ChangeValue, Conversation, ConversationOrigin, Entry, InboundContact, InboundMessage, InboundProfile,
    InboundText, Metadata, Pricing, Status, StatusKind, WebhookError, WebhookErrorData, WebhookPayload,
};

/// `messaging_product` of every Cloud API body.
pub const MESSAGING_PRODUCT: &str = "whatsapp";
/// `object` of every WhatsApp Business Account webhook.
pub const WEBHOOK_OBJECT: &str = "whatsapp_business_account";
/// `changes[].field` of message statuses and inbound messages.
pub const MESSAGES_FIELD: &str = "messages";

/// Deserializes a `u32` written as a JSON number or as a numeric string (`"131056"`: some
/// gateways in front of Meta quote the code).
pub(crate) fn u32_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use serde::Deserialize;
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u32),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Number(n) => Ok(n),
        Raw::Text(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("invalid code `{s}`: expected a non-negative integer"))),
    }
}
