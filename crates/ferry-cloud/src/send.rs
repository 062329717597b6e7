//! What `POST /{version}/{phone_number_id}/messages` answers: [`SendResponse`] on 200 (the message
//! was accepted, not delivered: its fate arrives later as status webhooks), [`GraphErrorBody`]
//! otherwise (classify by `code`; the HTTP status varies, e.g. 400 or 429 for limits).

use serde::{Deserialize, Serialize};

use crate::MESSAGING_PRODUCT;

/// The 200 answer of a send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResponse {
    /// Always `whatsapp`.
    pub messaging_product: String,
    /// One entry: the recipient as written in the request and its wa_id (which may differ).
    #[serde(default)]
    pub contacts: Vec<SendContact>,
    /// One entry: the wamid, which every status webhook of the message carries.
    #[serde(default)]
    pub messages: Vec<SentMessage>,
}

impl SendResponse {
    /// The answer for one accepted message.
    pub fn accepted(input: &str, wa_id: &str, wamid: &str, message_status: Option<&str>) -> SendResponse {
        SendResponse {
            messaging_product: MESSAGING_PRODUCT.to_owned(),
            contacts: vec![SendContact { input: input.to_owned(), wa_id: wa_id.to_owned() }],
            messages: vec![SentMessage { id: wamid.to_owned(), message_status: message_status.map(str::to_owned) }],
        }
    }

    /// The wamid of the (first) message, if the answer has one.
    pub fn wamid(&self) -> Option<&str> {
        self.messages.first().map(|m| m.id.as_str())
    }
}

/// `contacts[]` of a send answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendContact {
    /// The recipient as the request wrote it.
    pub input: String,
    /// The recipient's WhatsApp id (Meta's normalization of `input`).
    pub wa_id: String,
}

/// `messages[]` of a send answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentMessage {
    /// The wamid (`wamid.…`).
    pub id: String,
    /// Template pacing: `accepted`, `held_for_quality_assessment` or `paused`; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_status: Option<String>,
}

/// `message_status` of a send answer: accepted.
pub const MESSAGE_STATUS_ACCEPTED: &str = "accepted";
/// `message_status` of a send answer: the template is paced; the message is held.
pub const MESSAGE_STATUS_HELD: &str = "held_for_quality_assessment";
/// `message_status` of a send answer: the template is paused.
pub const MESSAGE_STATUS_PAUSED: &str = "paused";

/// A Graph API error answer: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphErrorBody {
    pub error: GraphError,
}

/// The `error` object of a Graph API error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphError {
    /// `(#CODE) Title`, as Meta writes it (do not classify by it).
    #[serde(default)]
    pub message: String,
    /// `OAuthException`, `GraphMethodException`, ...
    #[serde(rename = "type", default)]
    pub kind: String,
    /// What to classify by.
    #[serde(deserialize_with = "crate::u32_or_string")]
    pub code: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_subcode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_data: Option<GraphErrorData>,
    /// Meta's trace id of the request (for support tickets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fbtrace_id: Option<String>,
    /// Whether retrying the same request may succeed (when Meta says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_transient: Option<bool>,
    /// Meta's title of the code, on some errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_user_title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_user_msg: Option<String>,
}

/// `error.error_data` of a Graph API error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphErrorData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messaging_product: Option<String>,
    /// What went wrong, in prose.
    #[serde(default)]
    pub details: String,
}

impl GraphErrorBody {
    /// An error with Meta's message format, `(#CODE) title`, and `details` in `error_data`.
    pub fn new(code: u32, kind: &str, title: &str, details: impl Into<String>, fbtrace_id: &str) -> GraphErrorBody {
        GraphErrorBody {
            error: GraphError {
                message: format!("(#{code}) {title}"),
                kind: kind.to_owned(),
                code,
                error_subcode: None,
                error_data: Some(GraphErrorData {
                    messaging_product: Some(MESSAGING_PRODUCT.to_owned()),
                    details: details.into(),
                }),
                fbtrace_id: Some(fbtrace_id.to_owned()),
                is_transient: None,
                error_user_title: None,
                error_user_msg: None,
            },
        }
    }

    /// The `details` of `error_data`, or "" when absent.
    pub fn details(&self) -> &str {
        self.error.error_data.as_ref().map_or("", |d| d.details.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_response_reads_metas_example_and_writes_it_back() {
        let text = r#"{"messaging_product":"whatsapp","contacts":[{"input":"+16505551234","wa_id":"16505551234"}],
            "messages":[{"id":"wamid.HBgLMTY0NjcwNDM1OTUVAgARGBI4MjZGRDA0OUE2OTQ3RkEyMzcA"}]}"#;
        let r: SendResponse = serde_json::from_str(text).unwrap();
        assert_eq!(r.contacts[0].input, "+16505551234");
        assert_eq!(r.contacts[0].wa_id, "16505551234");
        assert_eq!(r.wamid(), Some("wamid.HBgLMTY0NjcwNDM1OTUVAgARGBI4MjZGRDA0OUE2OTQ3RkEyMzcA"));
        assert_eq!(r.messages[0].message_status, None);
        let written = serde_json::to_value(&r).unwrap();
        assert!(written["messages"][0].get("message_status").is_none(), "None is left out: {written}");
        let held = SendResponse::accepted("+1 650", "1650", "wamid.x", Some(MESSAGE_STATUS_HELD));
        assert_eq!(serde_json::to_value(&held).unwrap()["messages"][0]["message_status"], MESSAGE_STATUS_HELD);
    }

    #[test]
    fn graph_error_reads_metas_example_and_a_quoted_code() {
        let text = r#"{"error":{"message":"(#130429) Rate limit hit","type":"OAuthException","code":130429,
            "error_data":{"messaging_product":"whatsapp","details":"Message failed to send because there were too many messages sent from this phone number in a short period of time"},
            "error_subcode":2494055,"fbtrace_id":"Az8or2yhqkZfEZ-_4Qn_Bam"}}"#;
        let e: GraphErrorBody = serde_json::from_str(text).unwrap();
        assert_eq!(e.error.code, 130429);
        assert_eq!(e.error.kind, "OAuthException");
        assert_eq!(e.error.error_subcode, Some(2494055));
        assert!(e.details().starts_with("Message failed to send"));
        assert_eq!(e.error.is_transient, None);
        let quoted: GraphErrorBody =
            serde_json::from_str(r#"{"error":{"code":"131056","is_transient":true}}"#).unwrap();
        assert_eq!(quoted.error.code, 131056);
        assert_eq!(quoted.error.is_transient, Some(true));
        assert!(serde_json::from_str::<GraphErrorBody>(r#"{"error":{"code":"many"}}"#).is_err());
    }

    #[test]
    fn graph_error_new_writes_metas_message_format() {
        let e = GraphErrorBody::new(
            131056,
            "OAuthException",
            "(Business Account, Consumer Account) pair rate limit hit",
            "too many",
            "T1",
        );
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["error"]["message"], "(#131056) (Business Account, Consumer Account) pair rate limit hit");
        assert_eq!(v["error"]["code"], 131056);
        assert_eq!(v["error"]["type"], "OAuthException");
        assert_eq!(v["error"]["error_data"]["messaging_product"], "whatsapp");
        assert_eq!(v["error"]["error_data"]["details"], "too many");
        assert_eq!(v["error"]["fbtrace_id"], "T1");
        assert!(v["error"].get("error_subcode").is_none());
    }
}
