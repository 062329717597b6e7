//! Outbound message types, one per message kind in MISSION.md.
//!
//! The serde shape is exactly the reference's `/v1/messages` JSON request:
//!
//! ```json
//! {"recipient_type": "individual", "to": "+16315551234", "type": "text", "text": {"body": "hi"}}
//! ```
//!
//! [`OutboundMessage`] serializes its [`Content`] as `"type": "<name>", "<name>": {...}` (custom
//! impls below; serde's adjacently tagged enums use a fixed content key). The same encoding is
//! ferry's storage encoding, so `deserialize(serialize(m)) == m` for every message; `None` fields
//! and empty lists are left out.
//!
//! Leniencies of the reference that are accepted on input:
//! - `messaging_product` (Cloud API) is accepted and ignored; unknown keys are ignored.
//! - A missing `type` means `text` (On-Premises: "if omitted, the default is text").
//! - The On-Premises top-level `preview_url` is folded into `text.preview_url`.
//! - Template button `index` may be a number or a numeric string (the Cloud examples use `"0"`).
//! - Coordinates may be numbers or numeric strings (the Cloud template examples use strings).
//! - The contacts example's `wa-id` key is accepted as `wa_id`.
//!
//! An unknown `type` is a deserialization error; [`parse_json`] maps it to
//! [`ErrorCode::UnsupportedMessageType`]. The deprecated `hsm` type deserializes into
//! [`Content::Hsm`] only so that validation can reject it with an error that names `template`.

use std::collections::BTreeMap;

use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};

/// One message to send: recipient, content and envelope options.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundMessage {
    /// Recipient as written by the caller; after validation, the normalized wa_id.
    pub to: String,
    /// `"individual"` (the only supported value) or absent.
    pub recipient_type: Option<String>,
    pub content: Content,
    /// Reply context (not allowed on reactions).
    pub context: Option<Context>,
    /// Echoed in sent/delivered/read callbacks; at most 512 characters.
    pub biz_opaque_callback_data: Option<String>,
    /// Time to live in seconds; `None` means the default (30 days).
    pub ttl_seconds: Option<u32>,
}

/// The content of a message: one variant per `type`.
// The interactive and template variants are larger than the others; a message is built once and
// moved a few times, so boxing them would cost more ergonomics than it saves.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(TextMessage),
    Image(MediaMessage),
    Audio(MediaMessage),
    Video(MediaMessage),
    Document(MediaMessage),
    Sticker(MediaMessage),
    /// `"contacts": [ {...}, ... ]` (an array in the reference).
    Contacts(Vec<Contact>),
    Location(LocationMessage),
    Template(TemplateMessage),
    Interactive(InteractiveMessage),
    Reaction(ReactionMessage),
    Address(AddressMessage),
    /// The deprecated `hsm` object (removed in v2.39): kept verbatim so validation can reject it
    /// with an error that points to `template`.
    Hsm(Value),
}

impl Content {
    /// Every `type` value ferry accepts on input (including the deprecated `hsm`).
    pub const TYPE_NAMES: &'static [&'static str] = &[
        "text",
        "image",
        "audio",
        "video",
        "document",
        "sticker",
        "contacts",
        "location",
        "template",
        "interactive",
        "reaction",
        "address",
        "hsm",
    ];

    /// The JSON `type` value of this content.
    pub fn type_name(&self) -> &'static str {
        match self {
            Content::Text(_) => "text",
            Content::Image(_) => "image",
            Content::Audio(_) => "audio",
            Content::Video(_) => "video",
            Content::Document(_) => "document",
            Content::Sticker(_) => "sticker",
            Content::Contacts(_) => "contacts",
            Content::Location(_) => "location",
            Content::Template(_) => "template",
            Content::Interactive(_) => "interactive",
            Content::Reaction(_) => "reaction",
            Content::Address(_) => "address",
            Content::Hsm(_) => "hsm",
        }
    }
}

/// `text`: `{"body": "...", "preview_url": true}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TextMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_url: Option<bool>,
}

/// A media object (`image`, `audio`, `video`, `document`, `sticker`, and the media of interactive
/// headers and template parameters): by uploaded `id` or by `link`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MediaMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// On-Premises only: the media provider used with a `link`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<MediaProvider>,
}

/// `provider: {"name": "..."}` of a media object.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MediaProvider {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One entry of `contacts`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Contact {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<ContactAddress>,
    /// `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birthday: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<ContactEmail>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<ContactName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<ContactOrg>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phones: Vec<ContactPhone>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<ContactUrl>,
}

/// `contacts[].addresses[]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ContactAddress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub street: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country_code: Option<String>,
    /// `HOME`, `WORK`, ...
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// `contacts[].emails[]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ContactEmail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// `contacts[].name`: `formatted_name` plus at least one other part.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ContactName {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formatted_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub middle_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// `contacts[].org`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ContactOrg {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// `contacts[].phones[]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ContactPhone {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The reference's contacts example spells it `wa-id`; both are accepted.
    #[serde(default, alias = "wa-id", skip_serializing_if = "Option::is_none")]
    pub wa_id: Option<String>,
}

/// `contacts[].urls[]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ContactUrl {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// `location` (also a template `location` parameter).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LocationMessage {
    /// Decimal degrees; a number or a numeric string on input, a number on output.
    #[serde(default, with = "coordinate", skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    #[serde(default, with = "coordinate", skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// `template`: a pre-approved message template and the values of its variables.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TemplateMessage {
    /// On-Premises only, optional since v2.41.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<TemplateLanguage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<TemplateComponent>,
    /// ferry extension: the template's category (`authentication`, `utility`, `marketing`), which
    /// sets the default TTL and its bounds (authentication: 10 minutes by default, 30–900 s;
    /// utility: 30–43,200 s). Absent: treated like any message (30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// `template.language`: `{"policy": "deterministic", "code": "en_US"}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TemplateLanguage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// `template.components[]`: `header`, `body` or `button`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TemplateComponent {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Buttons only: `quick_reply`, `url` or `copy_code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_type: Option<String>,
    /// Buttons only: position 0..=9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<ButtonIndex>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<TemplateParameter>,
}

/// A template button `index`, as a number (`0`) or a string (`"0"`); kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ButtonIndex {
    Number(i64),
    Text(String),
}

impl ButtonIndex {
    /// The numeric value, if it is an integer (a string must be one written in decimal digits).
    pub fn value(&self) -> Option<i64> {
        match self {
            ButtonIndex::Number(n) => Some(*n),
            ButtonIndex::Text(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
            ButtonIndex::Text(_) => None,
        }
    }
}

/// `template.components[].parameters[]`: `type` names the member that holds the value.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TemplateParameter {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<TemplateCurrency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_time: Option<TemplateDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<MediaMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<MediaMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<MediaMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<LocationMessage>,
    /// `quick_reply` buttons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// `copy_code` buttons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon_code: Option<String>,
}

/// A `currency` template parameter.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TemplateCurrency {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_value: Option<String>,
    /// ISO 4217 code, e.g. `USD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Amount multiplied by 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_1000: Option<i64>,
}

/// A `date_time` template parameter.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TemplateDateTime {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_value: Option<String>,
}

/// `interactive`: buttons, lists, products, catalogs, flows, CTA URLs and location requests.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InteractiveMessage {
    /// `button`, `list`, `product`, `product_list`, `catalog_message`, `flow`, `cta_url` or
    /// `location_request_message`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<InteractiveHeader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<InteractiveText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footer: Option<InteractiveText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<InteractiveAction>,
}

/// `interactive.header`: text or media.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InteractiveHeader {
    /// `text`, `image`, `video` or `document`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<MediaMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<MediaMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<MediaMessage>,
}

/// `interactive.body` and `interactive.footer`: `{"text": "..."}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InteractiveText {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// `interactive.action`: the union of every interactive type's action members.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InteractiveAction {
    /// Reply buttons (`button`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<InteractiveButton>,
    /// The list's menu button text (`list`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub button: Option<String>,
    /// `list` and `product_list`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sections: Vec<InteractiveSection>,
    /// `product` and `product_list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_id: Option<String>,
    /// `product`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_retailer_id: Option<String>,
    /// `flow`, `cta_url`, `catalog_message`, `send_location`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<InteractiveActionParameters>,
}

/// `interactive.action.buttons[]`: `{"type": "reply", "reply": {"id", "title"}}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InteractiveButton {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<InteractiveReply>,
}

/// `interactive.action.buttons[].reply`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InteractiveReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// `interactive.action.sections[]`: list rows or product items.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InteractiveSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<InteractiveRow>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub product_items: Vec<InteractiveProductItem>,
}

/// `interactive.action.sections[].rows[]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InteractiveRow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `interactive.action.sections[].product_items[]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InteractiveProductItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_retailer_id: Option<String>,
}

/// `interactive.action.parameters`: flow, CTA URL and catalog parameters.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InteractiveActionParameters {
    // flow
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_message_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_cta: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_action_payload: Option<FlowActionPayload>,
    // cta_url
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    // catalog_message
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_product_retailer_id: Option<String>,
}

/// `flow_action_payload`: the first screen and its input data.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FlowActionPayload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen: Option<String>,
    /// A non-empty JSON object when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// `reaction`: an emoji on a received message; an empty emoji removes the reaction.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReactionMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
}

/// `address`: asks the user for a delivery address (Cloud "address message"), optionally
/// prefilled with `values` and `saved_addresses`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AddressMessage {
    /// Text shown above the address form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// ISO 3166-1 alpha-2 country code, e.g. `IN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Prefilled form values (`name`, `phone_number`, `in_pin_code`, `house_number`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub saved_addresses: Vec<SavedAddress>,
    /// Per-field error messages shown in the form.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub validation_errors: BTreeMap<String, String>,
}

/// `address.saved_addresses[]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SavedAddress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub value: BTreeMap<String, String>,
}

/// `context`: the message this one replies to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

/// A JSON value, re-exported for wire crates that carry JSON as text (the gRPC
/// `flow_action_payload.data_json`) so they need no `serde_json` dependency of their own.
pub use serde_json::Value as JsonValue;

/// Parses JSON text into a [`JsonValue`]; the error is lowercase prose.
pub fn parse_json_value(text: &str) -> Result<JsonValue, String> {
    serde_json::from_str(text).map_err(|e| e.to_string().to_lowercase())
}

/// Serde helpers for an optional coordinate written as a number or a numeric string.
mod coordinate {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(f64),
        Text(String),
    }

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(x) => s.serialize_f64(*x),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Number(x)) => Ok(Some(x)),
            Some(Raw::Text(s)) => s.trim().parse::<f64>().map(Some).map_err(|_| {
                serde::de::Error::custom(format!("invalid coordinate `{s}`: expected a number in decimal degrees"))
            }),
        }
    }
}

impl Serialize for OutboundMessage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if let Some(rt) = &self.recipient_type {
            m.serialize_entry("recipient_type", rt)?;
        }
        m.serialize_entry("to", &self.to)?;
        let name = self.content.type_name();
        m.serialize_entry("type", name)?;
        match &self.content {
            Content::Text(c) => m.serialize_entry(name, c)?,
            Content::Image(c) | Content::Audio(c) | Content::Video(c) | Content::Document(c) | Content::Sticker(c) => {
                m.serialize_entry(name, c)?
            }
            Content::Contacts(c) => m.serialize_entry(name, c)?,
            Content::Location(c) => m.serialize_entry(name, c)?,
            Content::Template(c) => m.serialize_entry(name, c)?,
            Content::Interactive(c) => m.serialize_entry(name, c)?,
            Content::Reaction(c) => m.serialize_entry(name, c)?,
            Content::Address(c) => m.serialize_entry(name, c)?,
            Content::Hsm(c) => m.serialize_entry(name, c)?,
        }
        if let Some(c) = &self.context {
            m.serialize_entry("context", c)?;
        }
        if let Some(b) = &self.biz_opaque_callback_data {
            m.serialize_entry("biz_opaque_callback_data", b)?;
        }
        if let Some(t) = &self.ttl_seconds {
            m.serialize_entry("ttl_seconds", t)?;
        }
        m.end()
    }
}

/// The request as it arrives: every content key is optional; `type` picks one.
#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    recipient_type: Option<String>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    context: Option<Context>,
    #[serde(default)]
    biz_opaque_callback_data: Option<String>,
    #[serde(default)]
    ttl_seconds: Option<u32>,
    /// On-Premises: `preview_url` next to `text` rather than inside it.
    #[serde(default)]
    preview_url: Option<bool>,
    #[serde(default)]
    text: Option<TextMessage>,
    #[serde(default)]
    image: Option<MediaMessage>,
    #[serde(default)]
    audio: Option<MediaMessage>,
    #[serde(default)]
    video: Option<MediaMessage>,
    #[serde(default)]
    document: Option<MediaMessage>,
    #[serde(default)]
    sticker: Option<MediaMessage>,
    #[serde(default)]
    contacts: Option<Vec<Contact>>,
    #[serde(default)]
    location: Option<LocationMessage>,
    #[serde(default)]
    template: Option<TemplateMessage>,
    #[serde(default)]
    interactive: Option<InteractiveMessage>,
    #[serde(default)]
    reaction: Option<ReactionMessage>,
    #[serde(default)]
    address: Option<AddressMessage>,
    #[serde(default)]
    hsm: Option<Value>,
}

/// Prefix of the deserialization error for an unknown `type` (see [`parse_json`]).
const UNSUPPORTED_TYPE_PREFIX: &str = "unsupported message type";
/// Prefix of the deserialization error for a missing content object.
const MISSING_CONTENT_PREFIX: &str = "missing content object";

fn need<T, E: de::Error>(v: Option<T>, name: &str) -> Result<T, E> {
    v.ok_or_else(|| {
        E::custom(format!("{MISSING_CONTENT_PREFIX} `{name}`: expected a `{name}` object for message type `{name}`"))
    })
}

impl<'de> Deserialize<'de> for OutboundMessage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = WireMessage::deserialize(d)?;
        // On-Premises: "if omitted, the default is text".
        let kind = w.kind.unwrap_or_else(|| "text".to_owned());
        let content = match kind.as_str() {
            "text" => {
                let mut t: TextMessage = need(w.text, "text")?;
                if t.preview_url.is_none() {
                    t.preview_url = w.preview_url;
                }
                Content::Text(t)
            }
            "image" => Content::Image(need(w.image, "image")?),
            "audio" => Content::Audio(need(w.audio, "audio")?),
            "video" => Content::Video(need(w.video, "video")?),
            "document" => Content::Document(need(w.document, "document")?),
            "sticker" => Content::Sticker(need(w.sticker, "sticker")?),
            "contacts" => Content::Contacts(need(w.contacts, "contacts")?),
            "location" => Content::Location(need(w.location, "location")?),
            "template" => Content::Template(need(w.template, "template")?),
            "interactive" => Content::Interactive(need(w.interactive, "interactive")?),
            "reaction" => Content::Reaction(need(w.reaction, "reaction")?),
            "address" => Content::Address(need(w.address, "address")?),
            "hsm" => Content::Hsm(need(w.hsm, "hsm")?),
            other => {
                return Err(de::Error::custom(format!(
                    "{UNSUPPORTED_TYPE_PREFIX} `{other}`: expected one of {}",
                    Content::TYPE_NAMES[..Content::TYPE_NAMES.len() - 1].join(", ")
                )));
            }
        };
        Ok(OutboundMessage {
            to: w.to.unwrap_or_default(),
            recipient_type: w.recipient_type,
            content,
            context: w.context,
            biz_opaque_callback_data: w.biz_opaque_callback_data,
            ttl_seconds: w.ttl_seconds,
        })
    }
}

/// Parses a JSON request body (the reference's `/v1/messages` shape) into an [`OutboundMessage`],
/// naming failures with the error table: an unknown `type` is
/// [`ErrorCode::UnsupportedMessageType`] on field `type`, a missing content object is
/// [`ErrorCode::MissingParameter`] on the field named by `type`, anything else that does not fit
/// the shape is [`ErrorCode::InvalidParameter`]. Semantic rules are left to
/// [`OutboundMessage::validate`](crate::validate).
///
/// The body's shape is checked first ([`crate::message_limits::scan_json`]: list lengths, values,
/// depth, duplicate keys), so nothing is built from a body outside those bounds.
pub fn parse_json(body: &[u8]) -> Result<OutboundMessage, ApiError> {
    crate::message_limits::scan_json(body)?;
    let err = match serde_json::from_slice::<OutboundMessage>(body) {
        Ok(m) => return Ok(m),
        Err(e) => e,
    };
    // Slow path: find out which field the failure is about.
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                "",
                format!("request body is not valid json ({e}): expected a json object"),
            ));
        }
    };
    let Some(obj) = value.as_object() else {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "",
            "request body is not a json object: expected an object with `to`, `type` and the content",
        ));
    };
    match obj.get("type") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => {
            return Err(ApiError::invalid("type", "a string naming the message type"));
        }
    }
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or("text");
    if !Content::TYPE_NAMES.contains(&kind) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMessageType,
            "type",
            format!(
                "message type `{kind}` is not supported: expected one of {}",
                Content::TYPE_NAMES[..Content::TYPE_NAMES.len() - 1].join(", ")
            ),
        ));
    }
    if obj.get(kind).is_none_or(Value::is_null) {
        return Err(ApiError::new(
            ErrorCode::MissingParameter,
            kind,
            format!("`{kind}` is required: expected a `{kind}` object for message type `{kind}`"),
        ));
    }
    let msg = err.to_string();
    let msg = match msg.find(" at line ") {
        Some(i) => &msg[..i],
        None => &msg,
    };
    Err(ApiError::new(ErrorCode::InvalidParameter, "", format!("request does not have the expected shape: {msg}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(body: &str) -> OutboundMessage {
        OutboundMessage {
            to: "16315551234".into(),
            recipient_type: Some("individual".into()),
            content: Content::Text(TextMessage { body: Some(body.into()), preview_url: Some(true) }),
            context: Some(Context { message_id: Some("wamid.x".into()) }),
            biz_opaque_callback_data: Some("cb".into()),
            ttl_seconds: Some(60),
        }
    }

    #[test]
    fn serializes_type_and_content_under_type_name() {
        let m = text("hi");
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "recipient_type": "individual", "to": "16315551234", "type": "text",
                "text": {"body": "hi", "preview_url": true},
                "context": {"message_id": "wamid.x"}, "biz_opaque_callback_data": "cb",
                "ttl_seconds": 60
            })
        );
    }

    #[test]
    fn none_fields_are_skipped() {
        let m = OutboundMessage {
            to: "1".into(),
            recipient_type: None,
            content: Content::Image(MediaMessage { id: Some("m".into()), ..Default::default() }),
            context: None,
            biz_opaque_callback_data: None,
            ttl_seconds: None,
        };
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"to":"1","type":"image","image":{"id":"m"}}"#);
    }

    #[test]
    fn missing_type_defaults_to_text_and_top_level_preview_url_is_folded() {
        let m: OutboundMessage =
            serde_json::from_str(r#"{"to":"1","preview_url":true,"messaging_product":"whatsapp","text":{"body":"x"}}"#)
                .unwrap();
        assert_eq!(m.content, Content::Text(TextMessage { body: Some("x".into()), preview_url: Some(true) }));
    }

    #[test]
    fn unknown_type_is_a_deserialization_error() {
        let e = serde_json::from_str::<OutboundMessage>(r#"{"to":"1","type":"fax","fax":{}}"#).unwrap_err();
        assert!(e.to_string().starts_with("unsupported message type `fax`"), "{e}");
    }

    #[test]
    fn missing_content_object_is_a_deserialization_error() {
        let e = serde_json::from_str::<OutboundMessage>(r#"{"to":"1","type":"image"}"#).unwrap_err();
        assert!(e.to_string().contains("missing content object `image`"), "{e}");
    }

    #[test]
    fn hsm_is_kept_verbatim() {
        let m: OutboundMessage = serde_json::from_str(r#"{"to":"1","type":"hsm","hsm":{"namespace":"n"}}"#).unwrap();
        assert_eq!(m.content, Content::Hsm(serde_json::json!({"namespace": "n"})));
        assert_eq!(m.content.type_name(), "hsm");
    }

    #[test]
    fn parse_json_maps_shape_errors_to_codes() {
        let e = parse_json(br#"{"to":"1","type":"fax","fax":{}}"#).unwrap_err();
        assert_eq!((e.code, e.field.as_str()), (ErrorCode::UnsupportedMessageType, "type"));
        let e = parse_json(br#"{"to":"1","type":"video"}"#).unwrap_err();
        assert_eq!((e.code, e.field.as_str()), (ErrorCode::MissingParameter, "video"));
        let e = parse_json(br#"{"to":"1","type":7}"#).unwrap_err();
        assert_eq!((e.code, e.field.as_str()), (ErrorCode::InvalidParameter, "type"));
        let e = parse_json(br#"{"to":"1","type":"text","text":{"body":5}}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParameter);
        assert!(e.details.contains("expected"), "{}", e.details);
        let e = parse_json(b"{").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParameter);
        assert!(parse_json(br#"{"to":"1","type":"text","text":{"body":"ok"}}"#).is_ok());
    }

    #[test]
    fn coordinates_and_button_index_accept_strings() {
        let l: LocationMessage = serde_json::from_str(r#"{"latitude":"37.5","longitude":-122.1}"#).unwrap();
        assert_eq!((l.latitude, l.longitude), (Some(37.5), Some(-122.1)));
        assert!(serde_json::from_str::<LocationMessage>(r#"{"latitude":"north"}"#).is_err());
        let c: TemplateComponent = serde_json::from_str(r#"{"type":"button","index":"1"}"#).unwrap();
        assert_eq!(c.index.as_ref().and_then(ButtonIndex::value), Some(1));
        assert_eq!(ButtonIndex::Text("x".into()).value(), None);
        assert_eq!(ButtonIndex::Text("-1".into()).value(), None);
    }

    #[test]
    fn contact_phone_accepts_wa_dash_id() {
        let p: ContactPhone = serde_json::from_str(r#"{"phone":"1","wa-id":"16505551234"}"#).unwrap();
        assert_eq!(p.wa_id.as_deref(), Some("16505551234"));
    }
}
