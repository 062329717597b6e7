//! The `messages` webhook Meta POSTs to the app's callback URL:
//!
//! ```json
//! {"object":"whatsapp_business_account","entry":[{"id":"<WABA_ID>","changes":[{"field":"messages",
//!   "value":{"messaging_product":"whatsapp",
//!            "metadata":{"display_phone_number":"15550100000","phone_number_id":"<PHONE_NUMBER_ID>"},
//!            "statuses":[{"id":"wamid...","status":"delivered","timestamp":"1700000000",
//!                         "recipient_id":"16315551234","biz_opaque_callback_data":"...",
//!                         "conversation":{...},"pricing":{...},"errors":[...]}],
//!            "contacts":[{"profile":{"name":"..."},"wa_id":"16315551234"}],
//!            "messages":[{"from":"16315551234","id":"wamid...","timestamp":"...","type":"text",
//!                         "text":{"body":"..."}}]}}]}]}
//! ```
//!
//! One POST may carry several entries, changes and statuses. No order is guaranteed between or
//! within POSTs, and the same status may come twice.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{MESSAGES_FIELD, MESSAGING_PRODUCT, WEBHOOK_OBJECT};

/// A whole webhook body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookPayload {
    /// `whatsapp_business_account`.
    pub object: String,
    #[serde(default)]
    pub entry: Vec<Entry>,
}

/// `entry[]`: one WhatsApp Business Account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The WhatsApp Business Account id.
    pub id: String,
    #[serde(default)]
    pub changes: Vec<Change>,
}

/// `entry[].changes[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// `messages` for statuses and inbound messages (other fields exist: templates, quality...).
    pub field: String,
    pub value: ChangeValue,
}

/// `entry[].changes[].value` of the `messages` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeValue {
    #[serde(default = "whatsapp")]
    pub messaging_product: String,
    pub metadata: Metadata,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<Status>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contacts: Vec<InboundContact>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<InboundMessage>,
    /// Errors not tied to one message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<WebhookError>,
}

fn whatsapp() -> String {
    MESSAGING_PRODUCT.to_owned()
}

/// `value.metadata`: which business number the change concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub display_phone_number: String,
    pub phone_number_id: String,
}

/// `value.statuses[].status`. Unknown values (Meta adds some) read as [`StatusKind::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusKind {
    Sent,
    Delivered,
    Read,
    Failed,
    /// A voice message was played.
    Played,
    #[serde(other)]
    Other,
}

impl StatusKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusKind::Sent => "sent",
            StatusKind::Delivered => "delivered",
            StatusKind::Read => "read",
            StatusKind::Failed => "failed",
            StatusKind::Played => "played",
            StatusKind::Other => "other",
        }
    }
}

/// `value.statuses[]`: one status of one outbound message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The wamid of the message.
    pub id: String,
    pub status: StatusKind,
    /// Seconds since the epoch, as a string.
    pub timestamp: String,
    /// The recipient's wa_id.
    pub recipient_id: String,
    /// The value the send request carried, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub biz_opaque_callback_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<Conversation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
    /// Why a `failed` message failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<WebhookError>,
}

/// `statuses[].conversation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: String,
    /// Seconds since the epoch, as a string (on the first `sent` of a conversation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<ConversationOrigin>,
}

/// `statuses[].conversation.origin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationOrigin {
    /// `marketing`, `utility`, `authentication`, `service`, ...
    #[serde(rename = "type")]
    pub kind: String,
}

/// `statuses[].pricing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pricing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billable: Option<bool>,
    /// `CBP` or `PMP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// `regular`, `free_customer_service`, `free_entry_point` (per-message pricing).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// `statuses[].errors[]` and `value.errors[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookError {
    #[serde(deserialize_with = "crate::u32_or_string")]
    pub code: u32,
    #[serde(default)]
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_data: Option<WebhookErrorData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub href: Option<String>,
}

/// `errors[].error_data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookErrorData {
    #[serde(default)]
    pub details: String,
}

/// `value.contacts[]`: who wrote an inbound message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundContact {
    #[serde(default)]
    pub profile: InboundProfile,
    pub wa_id: String,
}

/// `value.contacts[].profile`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundProfile {
    #[serde(default)]
    pub name: String,
}

/// `value.messages[]`: one inbound message from a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundMessage {
    /// The user's wa_id.
    pub from: String,
    /// Its wamid (deduplicate by it).
    pub id: String,
    /// Seconds since the epoch, as a string.
    pub timestamp: String,
    /// `text`, `image`, `button`, `interactive`, `reaction`, ...
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<InboundText>,
    /// Every other key (the type's object, `context`, `errors`, ...), kept as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// `messages[].text`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundText {
    pub body: String,
}

impl WebhookPayload {
    /// A payload of one entry with one `messages` change.
    pub fn messages_change(business_account_id: &str, value: ChangeValue) -> WebhookPayload {
        WebhookPayload {
            object: WEBHOOK_OBJECT.to_owned(),
            entry: vec![Entry {
                id: business_account_id.to_owned(),
                changes: vec![Change { field: MESSAGES_FIELD.to_owned(), value }],
            }],
        }
    }

    /// Every `messages` change value with the phone number id it concerns.
    pub fn message_values(&self) -> impl Iterator<Item = &ChangeValue> {
        self.entry.iter().flat_map(|e| e.changes.iter()).filter(|c| c.field == MESSAGES_FIELD).map(|c| &c.value)
    }

    /// Every status of every `messages` change.
    pub fn statuses(&self) -> impl Iterator<Item = (&Metadata, &Status)> {
        self.message_values().flat_map(|v| v.statuses.iter().map(move |s| (&v.metadata, s)))
    }

    /// Every inbound message of every `messages` change, with its sender's contact when given.
    pub fn inbound_messages(&self) -> impl Iterator<Item = (&Metadata, Option<&InboundContact>, &InboundMessage)> {
        self.message_values().flat_map(|v| {
            v.messages.iter().map(move |m| (&v.metadata, v.contacts.iter().find(|c| c.wa_id == m.from), m))
        })
    }
}

impl ChangeValue {
    /// An empty value for `metadata`.
    pub fn new(metadata: Metadata) -> ChangeValue {
        ChangeValue {
            messaging_product: whatsapp(),
            metadata,
            statuses: Vec::new(),
            contacts: Vec::new(),
            messages: Vec::new(),
            errors: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METAS_STATUS: &str = r#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[
        {"value":{"messaging_product":"whatsapp",
          "metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},
          "statuses":[{"id":"wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA","status":"delivered",
            "timestamp":"1750263773","recipient_id":"16505551234","biz_opaque_callback_data":"ferry:abc",
            "conversation":{"id":"ae1f3f5d5d0fb6b8d5b0e1b3e5b1e0c9","origin":{"type":"marketing"}},
            "pricing":{"billable":true,"pricing_model":"PMP","category":"marketing","type":"regular"}},
            {"id":"wamid.2","status":"failed","timestamp":"1750263774","recipient_id":"16505551235",
             "errors":[{"code":131026,"title":"Message undeliverable","message":"Message undeliverable",
                        "error_data":{"details":"Message Undeliverable."}}]},
            {"id":"wamid.3","status":"deleted","timestamp":"1750263775","recipient_id":"16505551236"}]},
         "field":"messages"}]}]}"#;

    #[test]
    fn reads_metas_status_webhook() {
        let p: WebhookPayload = serde_json::from_str(METAS_STATUS).unwrap();
        let statuses: Vec<_> = p.statuses().collect();
        assert_eq!(statuses.len(), 3);
        let (metadata, delivered) = statuses[0];
        assert_eq!(metadata.phone_number_id, "106540352242922");
        assert_eq!(delivered.status, StatusKind::Delivered);
        assert_eq!(delivered.biz_opaque_callback_data.as_deref(), Some("ferry:abc"));
        assert_eq!(delivered.conversation.as_ref().unwrap().origin.as_ref().unwrap().kind, "marketing");
        assert_eq!(delivered.pricing.as_ref().unwrap().pricing_model.as_deref(), Some("PMP"));
        let failed = statuses[1].1;
        assert_eq!(failed.status, StatusKind::Failed);
        assert_eq!(failed.errors[0].code, 131026);
        assert_eq!(failed.errors[0].error_data.as_ref().unwrap().details, "Message Undeliverable.");
        assert_eq!(statuses[2].1.status, StatusKind::Other, "an unknown status is not an error");
    }

    #[test]
    fn reads_metas_inbound_message_and_keeps_other_keys() {
        let text = r#"{"object":"whatsapp_business_account","entry":[{"id":"WABA","changes":[{"field":"messages",
          "value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"PNID"},
            "contacts":[{"profile":{"name":"Kerry Fisher"},"wa_id":"16315551181"}],
            "messages":[{"from":"16315551181","id":"wamid.ABGGFlA5Fpa","timestamp":"1504902988","type":"text",
                         "text":{"body":"this is a text message"}},
                        {"from":"16315551181","id":"wamid.B","timestamp":"1504902989","type":"image",
                         "image":{"id":"MEDIA","mime_type":"image/jpeg"},"context":{"id":"wamid.X"}}]}}]}]}"#;
        let p: WebhookPayload = serde_json::from_str(text).unwrap();
        let inbound: Vec<_> = p.inbound_messages().collect();
        assert_eq!(inbound.len(), 2);
        let (metadata, contact, m) = inbound[0];
        assert_eq!(metadata.phone_number_id, "PNID");
        assert_eq!(contact.unwrap().profile.name, "Kerry Fisher");
        assert_eq!(m.text.as_ref().unwrap().body, "this is a text message");
        let image = inbound[1].2;
        assert_eq!(image.kind, "image");
        assert_eq!(image.other["image"]["id"], "MEDIA");
        assert_eq!(image.other["context"]["id"], "wamid.X");
        let again: WebhookPayload = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(again, p, "write then read is the identity");
    }

    #[test]
    fn writes_a_status_change_without_empty_parts() {
        let mut value =
            ChangeValue::new(Metadata { display_phone_number: "155501".into(), phone_number_id: "PN".into() });
        value.statuses.push(Status {
            id: "wamid.1".into(),
            status: StatusKind::Sent,
            timestamp: "1".into(),
            recipient_id: "16315551234".into(),
            biz_opaque_callback_data: None,
            conversation: None,
            pricing: None,
            errors: Vec::new(),
        });
        let v = serde_json::to_value(WebhookPayload::messages_change("WABA", value)).unwrap();
        assert_eq!(v["object"], "whatsapp_business_account");
        assert_eq!(v["entry"][0]["changes"][0]["field"], "messages");
        let value = &v["entry"][0]["changes"][0]["value"];
        assert_eq!(value["messaging_product"], "whatsapp");
        assert_eq!(value["statuses"][0]["status"], "sent");
        for absent in ["contacts", "messages", "errors"] {
            assert!(value.get(absent).is_none(), "{absent} left out: {value}");
        }
        let status = &value["statuses"][0];
        for absent in ["biz_opaque_callback_data", "conversation", "pricing", "errors"] {
            assert!(status.get(absent).is_none(), "{absent} left out: {status}");
        }
    }
}
