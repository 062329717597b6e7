//! Every sending rule of MISSION.md and `reference/`, applied to an [`OutboundMessage`].
//!
//! [`OutboundMessage::validate`] normalizes the recipient, checks the content and the envelope and
//! returns a [`ValidatedMessage`] (the message with `to` replaced by the wa_id, plus the effective
//! TTL). The first failing rule is reported as an [`ApiError`]:
//! - [`ErrorCode::MissingParameter`] (1008): a required field is absent or empty;
//! - [`ErrorCode::TooLong`] (1001): a text is longer than allowed (lengths count Unicode scalar
//!   values, i.e. `chars().count()`);
//! - [`ErrorCode::InvalidParameter`] (1009): anything else;
//! - [`ErrorCode::UnsupportedMessageType`]: the deprecated `hsm` type;
//! - [`ErrorCode::SenderIsRecipient`] (1021): the recipient is the sending business number.
//!
//! `field` is the full JSON path (`interactive.action.buttons[2].reply.title`); `details` says
//! what was wrong and what was expected.
//!
//! Sources of limits: "onprem" = reference/onprem-v1-messages-reference.*, "cloud" =
//! reference/cloud-*.txt, "mission" = MISSION.md; "cloud docs" marks limits from the public Cloud
//! API reference pages that `reference/` only summarizes.

use std::collections::HashMap;

use crate::error::{ApiError, ErrorCode};
use crate::ids::WaId;
use crate::message::{
    AddressMessage, Contact, Content, InteractiveAction, InteractiveHeader, InteractiveMessage, LocationMessage,
    MediaMessage, OutboundMessage, ReactionMessage, TemplateComponent, TemplateMessage, TemplateParameter, TextMessage,
};
use crate::phone;

/// Text body (mission, cloud docs).
pub const MAX_TEXT_BODY: usize = 4096;
/// Media caption (mission, cloud docs).
pub const MAX_CAPTION: usize = 1024;
/// `biz_opaque_callback_data` (onprem table: "Massimo 512 caratteri").
pub const MAX_BIZ_OPAQUE_CALLBACK_DATA: usize = 512;
/// Shortest custom TTL (mission: customizable "within bounds", 30 s minimum).
pub const MIN_TTL_SECONDS: u32 = 30;
/// Longest TTL and the default (mission, cloud: 30 days).
pub const MAX_TTL_SECONDS: u32 = 30 * 24 * 3600;
/// Effective TTL when none is given (mission, cloud: "all messages ... 30 days").
pub const DEFAULT_TTL_SECONDS: u32 = MAX_TTL_SECONDS;
/// Interactive header text (mission, cloud docs).
pub const MAX_HEADER_TEXT: usize = 60;
/// Interactive body text (mission, cloud docs).
pub const MAX_INTERACTIVE_BODY: usize = 1024;
/// Interactive footer text (mission, cloud docs).
pub const MAX_FOOTER_TEXT: usize = 60;
/// Reply buttons per message (mission, cloud: "up to three").
pub const MAX_REPLY_BUTTONS: usize = 3;
/// Reply button title (mission, cloud docs).
pub const MAX_REPLY_TITLE: usize = 20;
/// Reply button id (cloud docs: 256 characters, no leading or trailing spaces — onprem).
pub const MAX_REPLY_ID: usize = 256;
/// List menu button text (onprem table: "Maximum length: 20 characters").
pub const MAX_LIST_BUTTON: usize = 20;
/// Sections per list or product list (cloud docs: at most 10 sections).
pub const MAX_SECTIONS: usize = 10;
/// Section title (onprem table: "Maximum length: 24 characters").
pub const MAX_SECTION_TITLE: usize = 24;
/// Rows across all sections (onprem table: "Limited to 10 rows across all sections").
pub const MAX_LIST_ROWS: usize = 10;
/// Row id (cloud docs: 200 characters).
pub const MAX_ROW_ID: usize = 200;
/// Row title (mission, cloud docs).
pub const MAX_ROW_TITLE: usize = 24;
/// Row description (mission, cloud docs).
pub const MAX_ROW_DESCRIPTION: usize = 72;
/// Products across all sections of a product list (cloud docs: at most 30 products).
pub const MAX_PRODUCT_ITEMS: usize = 30;
/// `product_retailer_id` (onprem table: "Maximum 100 characters").
pub const MAX_PRODUCT_RETAILER_ID: usize = 100;
/// Flow CTA text (onprem table: "Maximum length: 20 characters").
pub const MAX_FLOW_CTA: usize = 20;
/// CTA URL button text (cloud docs: 20 characters).
pub const MAX_CTA_DISPLAY_TEXT: usize = 20;
/// Template button indexes (onprem: "up to 10 buttons using index values of 0 to 9").
pub const MAX_BUTTON_INDEX: i64 = 9;
/// Template name (cloud docs: 512 characters).
pub const MAX_TEMPLATE_NAME: usize = 512;
/// Text parameter of a template header (cloud docs: 60 characters).
pub const MAX_TEMPLATE_HEADER_TEXT: usize = 60;
/// Text parameter of a template body when the body is the only component (cloud docs).
pub const MAX_TEMPLATE_BODY_TEXT_ALONE: usize = 32_768;
/// Text parameter of a template body next to other components (cloud docs).
pub const MAX_TEMPLATE_BODY_TEXT: usize = 1024;
/// `coupon_code` of a copy-code button (cloud docs: 15 characters).
pub const MAX_COUPON_CODE: usize = 15;
/// Address message body (cloud docs: 1024 characters, as interactive bodies).
pub const MAX_ADDRESS_BODY: usize = 1024;

/// Interactive types (onprem table, mission).
pub const INTERACTIVE_TYPES: &[&str] =
    &["button", "list", "product", "product_list", "catalog_message", "flow", "cta_url", "location_request_message"];

/// What validation needs to know about the sending node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationContext {
    /// Country calling code prepended to numbers without a leading `+` (e.g. `91`).
    pub default_country_code: String,
    /// The business number the message is sent from, if known.
    pub sender: Option<WaId>,
}

/// A message that passed every rule.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedMessage {
    /// The normalized recipient.
    pub wa_id: WaId,
    /// The message, with `to` replaced by the wa_id.
    pub message: OutboundMessage,
    /// Effective TTL: the message's `ttl_seconds`, or [`DEFAULT_TTL_SECONDS`].
    pub ttl_seconds: u32,
}

impl ValidatedMessage {
    /// The message `type` ("text", "template", ...).
    pub fn message_type(&self) -> &'static str {
        self.message.content.type_name()
    }

    /// ferry's storage encoding of the message (its JSON); read back with [`decode_stored`].
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these types cannot fail: all map keys are strings and there is no custom
        // serializer that errors (non-finite coordinates are rejected by validation).
        serde_json::to_vec(&self.message).expect("an OutboundMessage always serializes to json")
    }
}

/// Decodes a message stored with [`ValidatedMessage::encode`].
pub fn decode_stored(bytes: &[u8]) -> Result<OutboundMessage, serde_json::Error> {
    serde_json::from_slice(bytes)
}

impl OutboundMessage {
    /// Applies every rule; see the module documentation for how failures are named.
    pub fn validate(mut self, ctx: &ValidationContext) -> Result<ValidatedMessage, ApiError> {
        // onprem: "Currently, you can only send messages to individuals" (default `individual`).
        if let Some(rt) = &self.recipient_type
            && rt != "individual"
        {
            return Err(ApiError::invalid("recipient_type", format!("`individual`, got `{rt}`")));
        }
        let wa_id = phone::normalize(&self.to, &ctx.default_country_code)?;
        if ctx.sender.as_ref() == Some(&wa_id) {
            return Err(ApiError::new(
                ErrorCode::SenderIsRecipient,
                "to",
                format!("recipient {wa_id} is the sending business number: expected a different recipient"),
            ));
        }
        validate_content(&self.content)?;
        if let Some(c) = &self.context {
            // cloud: "You can send any type of message, except for a reaction message, as a
            // contextual reply."
            if matches!(self.content, Content::Reaction(_)) {
                return Err(ApiError::invalid(
                    "context",
                    "no `context` on a reaction message: reactions cannot be sent as replies",
                ));
            }
            required(&c.message_id, "context.message_id")?;
        }
        if let Some(b) = &self.biz_opaque_callback_data {
            max_chars(b, MAX_BIZ_OPAQUE_CALLBACK_DATA, "biz_opaque_callback_data")?;
        }
        let (ttl_bounds, default_ttl, what) = ttl_policy(&self.content)?;
        if let Some(ttl) = self.ttl_seconds
            && !ttl_bounds.contains(&ttl)
        {
            return Err(ApiError::invalid(
                "ttl_seconds",
                format!(
                    "a time to live from {} to {} seconds for {what}, got {ttl}",
                    ttl_bounds.start(),
                    ttl_bounds.end()
                ),
            ));
        }
        let ttl_seconds = self.ttl_seconds.unwrap_or(default_ttl);
        self.to = wa_id.as_str().to_owned();
        Ok(ValidatedMessage { wa_id, message: self, ttl_seconds })
    }
}

/// Default TTL of authentication templates (mission: 10 minutes).
pub const AUTHENTICATION_DEFAULT_TTL_SECONDS: u32 = 600;
/// Longest custom TTL of authentication templates (mission: 30–900 s).
pub const AUTHENTICATION_MAX_TTL_SECONDS: u32 = 900;
/// Longest custom TTL of utility templates (mission: 30–43,200 s).
pub const UTILITY_MAX_TTL_SECONDS: u32 = 43_200;

/// TTL bounds and default of a message: by template category, else the general 30 s–30 days.
fn ttl_policy(content: &Content) -> Result<(std::ops::RangeInclusive<u32>, u32, &'static str), ApiError> {
    let category = match content {
        Content::Template(t) => t.category.as_deref(),
        _ => None,
    };
    match category {
        None | Some("marketing") => Ok((MIN_TTL_SECONDS..=MAX_TTL_SECONDS, DEFAULT_TTL_SECONDS, "this message")),
        Some("authentication") => Ok((
            MIN_TTL_SECONDS..=AUTHENTICATION_MAX_TTL_SECONDS,
            AUTHENTICATION_DEFAULT_TTL_SECONDS,
            "an authentication template",
        )),
        Some("utility") => Ok((MIN_TTL_SECONDS..=UTILITY_MAX_TTL_SECONDS, DEFAULT_TTL_SECONDS, "a utility template")),
        Some(other) => Err(ApiError::invalid(
            "template.category",
            format!("`authentication`, `utility` or `marketing`, got `{other}`"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

type Check = Result<(), ApiError>;

/// The value if present and not blank; otherwise a 1008 on `field`.
fn required<'a>(v: &'a Option<String>, field: &str) -> Result<&'a str, ApiError> {
    match v.as_deref() {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(ApiError::missing(field)),
    }
}

/// The value if present and not blank.
fn non_blank(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.trim().is_empty())
}

fn max_chars(s: &str, max: usize, field: &str) -> Check {
    let n = s.chars().count();
    if n > max { Err(ApiError::too_long(field, max, n)) } else { Ok(()) }
}

/// Emoji and pictographs (the Unicode blocks emoji live in, plus the emoji variation selector and
/// zero-width joiner that build emoji sequences).
fn is_emoji(c: char) -> bool {
    matches!(c as u32,
        0x1F000..=0x1FAFF // mahjong .. pictographs extended-A (faces, objects, flags)
        | 0x2600..=0x27BF // miscellaneous symbols, dingbats
        | 0x2B00..=0x2BFF // arrows and stars (⭐, ⬆)
        | 0xFE0F | 0x200D)
}

fn required_max<'a>(v: &'a Option<String>, max: usize, field: &str) -> Result<&'a str, ApiError> {
    let s = required(v, field)?;
    max_chars(s, max, field)?;
    Ok(s)
}

fn optional_max(v: &Option<String>, max: usize, field: &str) -> Check {
    match v {
        Some(s) => max_chars(s, max, field),
        None => Ok(()),
    }
}

fn quoted_list(allowed: &[&str]) -> String {
    let quoted: Vec<String> = allowed.iter().map(|a| format!("`{a}`")).collect();
    match quoted.len() {
        0 => String::new(),
        1 => quoted[0].clone(),
        n => format!("{} or {}", quoted[..n - 1].join(", "), quoted[n - 1]),
    }
}

fn one_of(v: &str, allowed: &[&str], field: &str) -> Check {
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(ApiError::invalid(field, format!("{}, got `{v}`", quoted_list(allowed))))
    }
}

fn not_allowed(field: &str, why: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidParameter, field, format!("`{field}` is not allowed here: {why}"))
}

/// onprem: "Use only with HTTP/HTTPS URLs."
fn http_url(v: &str, field: &str) -> Check {
    let lower = v.to_ascii_lowercase();
    let rest = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') && !v.chars().any(char::is_whitespace) => Ok(()),
        _ => Err(ApiError::invalid(field, format!("an http:// or https:// url, got `{v}`"))),
    }
}

/// Reports the first repeated value: `seen` maps a value to the path where it first appeared.
fn unique(seen: &mut HashMap<String, String>, value: &str, field: &str, what: &str) -> Check {
    if let Some(first) = seen.get(value) {
        return Err(ApiError::invalid(
            field,
            format!("a unique {what}, got `{value}` which is also used at `{first}`"),
        ));
    }
    seen.insert(value.to_owned(), field.to_owned());
    Ok(())
}

fn count_range(n: usize, min: usize, max: usize, field: &str, what: &str) -> Check {
    if n == 0 && min > 0 {
        return Err(ApiError::new(
            ErrorCode::MissingParameter,
            field,
            format!("`{field}` is required: expected {min} to {max} {what}, got none"),
        ));
    }
    if n < min || n > max {
        return Err(ApiError::invalid(field, format!("{min} to {max} {what}, got {n}")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Content

fn validate_content(c: &Content) -> Check {
    match c {
        Content::Text(t) => text(t),
        Content::Image(m) => media(m, "image", true, false),
        // onprem: no caption on audio or sticker; filename only with document.
        Content::Audio(m) => media(m, "audio", false, false),
        Content::Video(m) => media(m, "video", true, false),
        Content::Document(m) => media(m, "document", true, true),
        Content::Sticker(m) => media(m, "sticker", false, false),
        Content::Contacts(c) => contacts(c),
        Content::Location(l) => location(l, "location"),
        Content::Template(t) => template(t),
        Content::Interactive(i) => interactive(i),
        Content::Reaction(r) => reaction(r),
        Content::Address(a) => address(a),
        // onprem: "The hsm object has been deprecated with v2.39 ... Please use the template
        // object instead."
        Content::Hsm(_) => Err(ApiError::new(
            ErrorCode::UnsupportedMessageType,
            "type",
            "message type `hsm` was deprecated in v2.39 and is not supported: expected type \
             `template` with a `template` object",
        )),
    }
}

fn text(t: &TextMessage) -> Check {
    required_max(&t.body, MAX_TEXT_BODY, "text.body")?;
    Ok(())
}

/// A media object at `base`: exactly one of `id` or `link` (onprem: "Required when type is ...
/// and you are not using a link" / "... not using an id"; "Do not use this field when ...").
fn media(m: &MediaMessage, base: &str, caption_allowed: bool, filename_allowed: bool) -> Check {
    let id = non_blank(&m.id);
    let link = non_blank(&m.link);
    match (id, link) {
        (None, None) => {
            return Err(ApiError::new(
                ErrorCode::MissingParameter,
                base,
                format!("`{base}` has neither `id` nor `link`: expected exactly one of them"),
            ));
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                base,
                format!("`{base}` has both `id` and `link`: expected exactly one of them"),
            ));
        }
        _ => {}
    }
    if let Some(l) = link {
        http_url(l, &format!("{base}.link"))?;
    }
    if let Some(c) = &m.caption {
        let field = format!("{base}.caption");
        if !caption_allowed {
            return Err(not_allowed(
                &field,
                "expected no caption (captions are allowed on image, video and document messages)",
            ));
        }
        max_chars(c, MAX_CAPTION, &field)?;
    }
    if m.filename.is_some() && !filename_allowed {
        return Err(not_allowed(
            &format!("{base}.filename"),
            "expected no filename (a filename is only used with documents)",
        ));
    }
    if let Some(p) = &m.provider {
        // onprem: "This path is optionally used with a link".
        if link.is_none() {
            return Err(not_allowed(&format!("{base}.provider"), "expected a provider only together with `link`"));
        }
        required(&p.name, &format!("{base}.provider.name"))?;
    }
    Ok(())
}

fn contacts(list: &[Contact]) -> Check {
    if list.is_empty() {
        return Err(ApiError::new(
            ErrorCode::MissingParameter,
            "contacts",
            "`contacts` is required: expected at least one contact",
        ));
    }
    for (i, c) in list.iter().enumerate() {
        let base = format!("contacts[{i}]");
        let name_field = format!("{base}.name");
        let Some(name) = &c.name else {
            return Err(ApiError::missing(name_field));
        };
        required(&name.formatted_name, &format!("{name_field}.formatted_name"))?;
        // onprem: "At least one of the optional parameters needs to be included along with the
        // formatted_name parameter."
        let parts = [&name.first_name, &name.last_name, &name.middle_name, &name.suffix, &name.prefix];
        if parts.iter().all(|p| non_blank(p).is_none()) {
            return Err(ApiError::new(
                ErrorCode::MissingParameter,
                name_field.as_str(),
                format!(
                    "`{name_field}` has only `formatted_name`: expected at least one of \
                     `first_name`, `last_name`, `middle_name`, `suffix` or `prefix` as well"
                ),
            ));
        }
        if let Some(b) = &c.birthday
            && !is_iso_date(b)
        {
            return Err(ApiError::invalid(
                format!("{base}.birthday"),
                format!("a date formatted as yyyy-mm-dd, got `{b}`"),
            ));
        }
    }
    Ok(())
}

/// `YYYY-MM-DD` with a month 1..=12 and a day 1..=31.
fn is_iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = &s[r];
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok()).flatten()
    };
    matches!(
        (digits(0..4), digits(5..7), digits(8..10)),
        (Some(_), Some(m), Some(d)) if (1..=12).contains(&m) && (1..=31).contains(&d)
    )
}

/// A location at `base` (a `location` message or a template `location` parameter). onprem: all
/// four members are "Required".
fn location(l: &LocationMessage, base: &str) -> Check {
    let lat_field = format!("{base}.latitude");
    let lat = l.latitude.ok_or_else(|| ApiError::missing(lat_field.as_str()))?;
    if !(-90.0..=90.0).contains(&lat) {
        return Err(ApiError::invalid(lat_field, format!("a latitude from -90 to 90 decimal degrees, got {lat}")));
    }
    let lon_field = format!("{base}.longitude");
    let lon = l.longitude.ok_or_else(|| ApiError::missing(lon_field.as_str()))?;
    if !(-180.0..=180.0).contains(&lon) {
        return Err(ApiError::invalid(lon_field, format!("a longitude from -180 to 180 decimal degrees, got {lon}")));
    }
    required(&l.name, &format!("{base}.name"))?;
    required(&l.address, &format!("{base}.address"))?;
    Ok(())
}

fn template(t: &TemplateMessage) -> Check {
    required_max(&t.name, MAX_TEMPLATE_NAME, "template.name")?;
    let Some(lang) = &t.language else {
        return Err(ApiError::missing("template.language"));
    };
    required(&lang.code, "template.language.code")?;
    // onprem: the language policy must be `deterministic` (`fallback` was removed).
    if let Some(p) = &lang.policy {
        one_of(p, &["deterministic"], "template.language.policy")?;
    }
    let body_only = t.components.iter().all(|c| c.kind.as_deref() == Some("body"));
    let mut button_indexes: HashMap<String, String> = HashMap::new();
    for (i, c) in t.components.iter().enumerate() {
        let base = format!("template.components[{i}]");
        template_component(c, &base, body_only, &mut button_indexes)?;
    }
    Ok(())
}

fn template_component(
    c: &TemplateComponent,
    base: &str,
    body_only: bool,
    button_indexes: &mut HashMap<String, String>,
) -> Check {
    let kind = required(&c.kind, &format!("{base}.type"))?;
    one_of(kind, &["header", "body", "button"], &format!("{base}.type"))?;
    let allowed_params: &[&str] = match kind {
        "header" => &["text", "currency", "date_time", "image", "document", "video", "location"],
        "body" => &["text", "currency", "date_time"],
        _ => {
            // onprem: sub_type quick_reply / url (and copy_code, cloud); index 0..=9.
            let sub_field = format!("{base}.sub_type");
            let sub = required(&c.sub_type, &sub_field)?;
            one_of(sub, &["quick_reply", "url", "copy_code"], &sub_field)?;
            let index_field = format!("{base}.index");
            let Some(index) = &c.index else {
                return Err(ApiError::missing(index_field));
            };
            match index.value() {
                Some(n) if (0..=MAX_BUTTON_INDEX).contains(&n) => {
                    unique(button_indexes, &n.to_string(), &index_field, "button index")?;
                }
                _ => {
                    let shown = match index {
                        crate::message::ButtonIndex::Number(n) => n.to_string(),
                        crate::message::ButtonIndex::Text(s) => format!("`{s}`"),
                    };
                    return Err(ApiError::invalid(
                        index_field,
                        format!("a button index from 0 to {MAX_BUTTON_INDEX}, got {shown}"),
                    ));
                }
            }
            // onprem: button parameters are "Required".
            if c.parameters.is_empty() {
                return Err(ApiError::missing(format!("{base}.parameters")));
            }
            match sub {
                "quick_reply" => &["payload"],
                "url" => &["text"],
                _ => &["coupon_code"],
            }
        }
    };
    for (j, p) in c.parameters.iter().enumerate() {
        let pbase = format!("{base}.parameters[{j}]");
        let text_max = match kind {
            "header" => MAX_TEMPLATE_HEADER_TEXT,
            "body" if body_only => MAX_TEMPLATE_BODY_TEXT_ALONE,
            "body" => MAX_TEMPLATE_BODY_TEXT,
            _ => usize::MAX,
        };
        template_parameter(p, &pbase, allowed_params, text_max)?;
    }
    Ok(())
}

fn template_parameter(p: &TemplateParameter, base: &str, allowed: &[&str], text_max: usize) -> Check {
    let type_field = format!("{base}.type");
    let kind = required(&p.kind, &type_field)?;
    one_of(kind, allowed, &type_field)?;
    let member = format!("{base}.{kind}");
    match kind {
        "text" => {
            let t = required(&p.text, &member)?;
            max_chars(t, text_max, &member)?;
        }
        "currency" => {
            let Some(c) = &p.currency else {
                return Err(ApiError::missing(member));
            };
            required(&c.fallback_value, &format!("{member}.fallback_value"))?;
            let code_field = format!("{member}.code");
            let code = required(&c.code, &code_field)?;
            if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(ApiError::invalid(
                    code_field,
                    format!("an iso 4217 currency code of three capital letters such as `USD`, got `{code}`"),
                ));
            }
            if c.amount_1000.is_none() {
                return Err(ApiError::missing(format!("{member}.amount_1000")));
            }
        }
        "date_time" => {
            let Some(d) = &p.date_time else {
                return Err(ApiError::missing(member));
            };
            required(&d.fallback_value, &format!("{member}.fallback_value"))?;
        }
        "image" | "document" | "video" => {
            let m = match kind {
                "image" => &p.image,
                "document" => &p.document,
                _ => &p.video,
            };
            let Some(m) = m else {
                return Err(ApiError::missing(member));
            };
            media(m, &member, false, kind == "document")?;
        }
        "location" => {
            let Some(l) = &p.location else {
                return Err(ApiError::missing(member));
            };
            location(l, &member)?;
        }
        "payload" => {
            required(&p.payload, &member)?;
        }
        _ => {
            required_max(&p.coupon_code, MAX_COUPON_CODE, &member)?;
        }
    }
    Ok(())
}

fn interactive(m: &InteractiveMessage) -> Check {
    let kind = required(&m.kind, "interactive.type")?;
    one_of(kind, INTERACTIVE_TYPES, "interactive.type")?;

    // Header: onprem "Required for type product_list. Optional for other types. You cannot set a
    // header if your interactive object is of product type."; list and product_list headers are
    // text only (cloud docs).
    match (&m.header, kind) {
        (Some(_), "product") => {
            return Err(not_allowed("interactive.header", "a `product` message has no header: expected no `header`"));
        }
        (None, "product_list") => return Err(ApiError::missing("interactive.header")),
        (Some(h), _) => {
            let text_only = matches!(kind, "list" | "product_list");
            header(h, text_only, kind)?;
        }
        (None, _) => {}
    }

    // Body: onprem "Optional for type product. Required for other message types."
    match &m.body {
        Some(b) => {
            required_max(&b.text, MAX_INTERACTIVE_BODY, "interactive.body.text")?;
        }
        None if kind != "product" => return Err(ApiError::missing("interactive.body")),
        None => {}
    }
    if let Some(f) = &m.footer {
        required_max(&f.text, MAX_FOOTER_TEXT, "interactive.footer.text")?;
    }

    let Some(a) = &m.action else {
        return Err(ApiError::missing("interactive.action"));
    };
    match kind {
        "button" => reply_buttons(a),
        "list" => list(a),
        "product" => {
            required(&a.catalog_id, "interactive.action.catalog_id")?;
            required_max(&a.product_retailer_id, MAX_PRODUCT_RETAILER_ID, "interactive.action.product_retailer_id")?;
            Ok(())
        }
        "product_list" => product_list(a),
        "catalog_message" => {
            action_name(a, "catalog_message", kind)?;
            if let Some(p) = &a.parameters {
                optional_max(
                    &p.thumbnail_product_retailer_id,
                    MAX_PRODUCT_RETAILER_ID,
                    "interactive.action.parameters.thumbnail_product_retailer_id",
                )?;
            }
            Ok(())
        }
        "flow" => flow(a),
        "cta_url" => {
            action_name(a, "cta_url", kind)?;
            let Some(p) = &a.parameters else {
                return Err(ApiError::missing("interactive.action.parameters"));
            };
            required_max(&p.display_text, MAX_CTA_DISPLAY_TEXT, "interactive.action.parameters.display_text")?;
            let url = required(&p.url, "interactive.action.parameters.url")?;
            http_url(url, "interactive.action.parameters.url")
        }
        // "location_request_message"
        _ => action_name(a, "send_location", kind),
    }
}

fn header(h: &InteractiveHeader, text_only: bool, kind: &str) -> Check {
    let type_field = "interactive.header.type";
    let t = required(&h.kind, type_field)?;
    if text_only {
        if t != "text" {
            return Err(ApiError::invalid(type_field, format!("`text` for a `{kind}` message, got `{t}`")));
        }
    } else {
        one_of(t, &["text", "image", "video", "document"], type_field)?;
    }
    let media_of = |m: &Option<MediaMessage>, name: &str| -> Check {
        let field = format!("interactive.header.{name}");
        match m {
            Some(m) => media(m, &field, false, name == "document"),
            None => Err(ApiError::missing(field)),
        }
    };
    match t {
        "text" => {
            required_max(&h.text, MAX_HEADER_TEXT, "interactive.header.text")?;
            Ok(())
        }
        "image" => media_of(&h.image, "image"),
        "video" => media_of(&h.video, "video"),
        _ => media_of(&h.document, "document"),
    }
}

/// `action.name` must be present and equal to `expected` for this interactive type.
fn action_name(a: &InteractiveAction, expected: &str, kind: &str) -> Check {
    let field = "interactive.action.name";
    let name = required(&a.name, field)?;
    if name != expected {
        return Err(ApiError::invalid(field, format!("`{expected}` for a `{kind}` message, got `{name}`")));
    }
    Ok(())
}

fn reply_buttons(a: &InteractiveAction) -> Check {
    count_range(a.buttons.len(), 1, MAX_REPLY_BUTTONS, "interactive.action.buttons", "buttons")?;
    let mut ids = HashMap::new();
    let mut titles = HashMap::new();
    for (i, b) in a.buttons.iter().enumerate() {
        let base = format!("interactive.action.buttons[{i}]");
        let type_field = format!("{base}.type");
        let t = required(&b.kind, &type_field)?;
        one_of(t, &["reply"], &type_field)?;
        let Some(r) = &b.reply else {
            return Err(ApiError::missing(format!("{base}.reply")));
        };
        let id_field = format!("{base}.reply.id");
        let id = required_max(&r.id, MAX_REPLY_ID, &id_field)?;
        // onprem: "There cannot be leading or trailing spaces when setting the ID."
        if id.trim() != id {
            return Err(ApiError::invalid(id_field, format!("an id without leading or trailing spaces, got `{id}`")));
        }
        unique(&mut ids, id, &id_field, "button id")?;
        let title_field = format!("{base}.reply.title");
        let title = required_max(&r.title, MAX_REPLY_TITLE, &title_field)?;
        // cloud docs: button titles must be unique within the message.
        unique(&mut titles, title, &title_field, "button title")?;
    }
    Ok(())
}

fn list(a: &InteractiveAction) -> Check {
    required_max(&a.button, MAX_LIST_BUTTON, "interactive.action.button")?;
    count_range(a.sections.len(), 1, MAX_SECTIONS, "interactive.action.sections", "sections")?;
    let multi = a.sections.len() > 1;
    let total: usize = a.sections.iter().map(|s| s.rows.len()).sum();
    if total > MAX_LIST_ROWS {
        return Err(ApiError::invalid(
            "interactive.action.sections",
            format!("at most {MAX_LIST_ROWS} rows across all sections, got {total}"),
        ));
    }
    let mut ids = HashMap::new();
    for (i, s) in a.sections.iter().enumerate() {
        let base = format!("interactive.action.sections[{i}]");
        section_title(&s.title, multi, &base)?;
        if s.rows.is_empty() {
            return Err(ApiError::new(
                ErrorCode::MissingParameter,
                format!("{base}.rows"),
                format!("`{base}.rows` is required: expected at least one row"),
            ));
        }
        for (j, r) in s.rows.iter().enumerate() {
            let rbase = format!("{base}.rows[{j}]");
            let id_field = format!("{rbase}.id");
            let id = required_max(&r.id, MAX_ROW_ID, &id_field)?;
            unique(&mut ids, id, &id_field, "row id")?;
            required_max(&r.title, MAX_ROW_TITLE, &format!("{rbase}.title"))?;
            optional_max(&r.description, MAX_ROW_DESCRIPTION, &format!("{rbase}.description"))?;
        }
    }
    Ok(())
}

/// onprem: section title "Required if the message has more than one section. Maximum length: 24".
fn section_title(title: &Option<String>, multi: bool, base: &str) -> Check {
    let field = format!("{base}.title");
    if multi {
        required(title, &field)?;
    }
    optional_max(title, MAX_SECTION_TITLE, &field)
}

fn product_list(a: &InteractiveAction) -> Check {
    required(&a.catalog_id, "interactive.action.catalog_id")?;
    count_range(a.sections.len(), 1, MAX_SECTIONS, "interactive.action.sections", "sections")?;
    let multi = a.sections.len() > 1;
    let total: usize = a.sections.iter().map(|s| s.product_items.len()).sum();
    if total > MAX_PRODUCT_ITEMS {
        return Err(ApiError::invalid(
            "interactive.action.sections",
            format!("at most {MAX_PRODUCT_ITEMS} products across all sections, got {total}"),
        ));
    }
    for (i, s) in a.sections.iter().enumerate() {
        let base = format!("interactive.action.sections[{i}]");
        section_title(&s.title, multi, &base)?;
        if s.product_items.is_empty() {
            return Err(ApiError::new(
                ErrorCode::MissingParameter,
                format!("{base}.product_items"),
                format!("`{base}.product_items` is required: expected at least one product"),
            ));
        }
        for (j, p) in s.product_items.iter().enumerate() {
            required_max(
                &p.product_retailer_id,
                MAX_PRODUCT_RETAILER_ID,
                &format!("{base}.product_items[{j}].product_retailer_id"),
            )?;
        }
    }
    Ok(())
}

fn flow(a: &InteractiveAction) -> Check {
    action_name(a, "flow", "flow")?;
    let Some(p) = &a.parameters else {
        return Err(ApiError::missing("interactive.action.parameters"));
    };
    let base = "interactive.action.parameters";
    // onprem: mode is `draft` or `published` (default published).
    if let Some(mode) = &p.mode {
        one_of(mode, &["draft", "published"], &format!("{base}.mode"))?;
    }
    // onprem: flow_message_version "Must be 3".
    let version_field = format!("{base}.flow_message_version");
    let version = required(&p.flow_message_version, &version_field)?;
    one_of(version, &["3"], &version_field)?;
    required(&p.flow_token, &format!("{base}.flow_token"))?;
    required(&p.flow_id, &format!("{base}.flow_id"))?;
    // onprem: flow_cta "Maximum length: 20 characters (no emoji)".
    let cta_field = format!("{base}.flow_cta");
    let cta = required_max(&p.flow_cta, MAX_FLOW_CTA, &cta_field)?;
    if let Some(e) = cta.chars().find(|c| is_emoji(*c)) {
        return Err(ApiError::invalid(cta_field, format!("text without emoji, got `{e}`")));
    }
    let action_field = format!("{base}.flow_action");
    if let Some(action) = &p.flow_action {
        one_of(action, &["navigate", "data_exchange"], &action_field)?;
    }
    // onprem: flow_action_payload is "Required only if flow_action is navigate" (cloud docs: omit
    // it otherwise).
    let payload_field = format!("{base}.flow_action_payload");
    match (p.flow_action.as_deref(), &p.flow_action_payload) {
        (Some("navigate"), None) => return Err(ApiError::missing(payload_field)),
        (Some("data_exchange"), Some(_)) => {
            return Err(not_allowed(
                &payload_field,
                "expected no `flow_action_payload` when `flow_action` is `data_exchange`",
            ));
        }
        _ => {}
    }
    if let Some(payload) = &p.flow_action_payload {
        required(&payload.screen, &format!("{payload_field}.screen"))?;
        if let Some(data) = &payload.data {
            let ok = data.as_object().is_some_and(|o| !o.is_empty());
            if !ok {
                return Err(ApiError::invalid(
                    format!("{payload_field}.data"),
                    format!("a non-empty json object, got `{data}`"),
                ));
            }
        }
    }
    Ok(())
}

fn reaction(r: &ReactionMessage) -> Check {
    required(&r.message_id, "reaction.message_id")?;
    // cloud docs: emoji is required; an empty string removes a previous reaction.
    if r.emoji.is_none() {
        return Err(ApiError::new(
            ErrorCode::MissingParameter,
            "reaction.emoji",
            "`reaction.emoji` is required: expected an emoji, or an empty string to remove a reaction",
        ));
    }
    Ok(())
}

fn address(a: &AddressMessage) -> Check {
    let country = required(&a.country, "address.country")?;
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ApiError::invalid(
            "address.country",
            format!("an iso 3166-1 alpha-2 country code of two capital letters such as `IN`, got `{country}`"),
        ));
    }
    optional_max(&a.body, MAX_ADDRESS_BODY, "address.body")?;
    for (i, s) in a.saved_addresses.iter().enumerate() {
        required(&s.id, &format!("address.saved_addresses[{i}].id"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::TextMessage;

    fn ctx() -> ValidationContext {
        ValidationContext { default_country_code: "91".into(), sender: None }
    }

    fn text_msg(to: &str) -> OutboundMessage {
        OutboundMessage {
            to: to.into(),
            recipient_type: None,
            content: Content::Text(TextMessage { body: Some("hi".into()), preview_url: None }),
            context: None,
            biz_opaque_callback_data: None,
            ttl_seconds: None,
        }
    }

    #[test]
    fn validated_message_carries_wa_id_default_ttl_and_encodes() {
        let v = text_msg("(631) 555-1234").validate(&ctx()).unwrap();
        assert_eq!(v.wa_id.as_str(), "916315551234");
        assert_eq!(v.message.to, "916315551234");
        assert_eq!(v.ttl_seconds, 2_592_000);
        assert_eq!(v.message_type(), "text");
        let back = decode_stored(&v.encode()).unwrap();
        assert_eq!(back, v.message);
    }

    #[test]
    fn helpers() {
        assert!(is_iso_date("1990-12-31"));
        assert!(!is_iso_date("1990-13-01"));
        assert!(!is_iso_date("1990-1-01"));
        assert!(!is_iso_date("19a0-01-01"));
        assert_eq!(quoted_list(&["a", "b", "c"]), "`a`, `b` or `c`");
        assert!(http_url("https://x.example/a", "f").is_ok());
        assert!(http_url("HTTP://x", "f").is_ok());
        for bad in ["ftp://x", "https://", "http:///x", "https://a b", "x"] {
            assert!(http_url(bad, "f").is_err(), "{bad}");
        }
    }
}
