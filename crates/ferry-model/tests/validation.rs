//! Validation rules of MISSION.md and `reference/`, one valid and one invalid case per rule.
//!
//! Every rule that `ferry_model::validate` (and `phone::normalize`) enforces gets a passing
//! message and a failing one; the failing one must carry the exact [`ErrorCode`] and the full JSON
//! path of the offending field, and its `details` must say what was expected (and, for limits,
//! the limit). Lengths are tested at the boundary: exactly at the limit passes, one over fails.
//!
//! The reference's own JSON examples live in `tests/fixtures/reference/` (see its README): every one
//! must deserialize and validate, and the `over-limit/` ones must fail with the documented error.

use std::fs;
use std::path::{Path, PathBuf};

use ferry_model::ErrorCode;
use ferry_model::ids::WaId;
use ferry_model::message::{OutboundMessage, parse_json};
use ferry_model::validate::{ValidatedMessage, ValidationContext};
use ferry_model::{ApiError, phone};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Helpers

/// The recipient every built message uses (international, so the country code does not apply).
const TO: &str = "+16315551234";

fn ctx() -> ValidationContext {
    ValidationContext { default_country_code: "91".into(), sender: None }
}

/// A short, single-line rendering of a request for failure messages (long texts are cut).
fn shown(json: &Value) -> String {
    let s = json.to_string();
    if s.chars().count() > 400 { format!("{}…", s.chars().take(400).collect::<String>()) } else { s }
}

fn deserialize(json: &Value) -> OutboundMessage {
    serde_json::from_value(json.clone())
        .unwrap_or_else(|e| panic!("request does not deserialize ({e}): {}", shown(json)))
}

fn validate_with(json: &Value, ctx: &ValidationContext) -> Result<ValidatedMessage, ApiError> {
    deserialize(json).validate(ctx)
}

/// The request deserializes and passes every rule.
fn must_accept(json: Value) -> ValidatedMessage {
    validate_with(&json, &ctx())
        .unwrap_or_else(|e| panic!("expected the request to be accepted, got `{e}`: {}", shown(&json)))
}

/// The request deserializes and fails with exactly `code` on exactly `field`; the error says what
/// was expected.
fn must_reject(json: Value, code: ErrorCode, field: &str) -> ApiError {
    must_reject_with(json, &ctx(), code, field)
}

fn must_reject_with(json: Value, ctx: &ValidationContext, code: ErrorCode, field: &str) -> ApiError {
    let e = match validate_with(&json, ctx) {
        Ok(v) => {
            panic!("expected {code:?} on `{field}`, but the request was accepted as {:?}: {}", v.wa_id, shown(&json))
        }
        Err(e) => e,
    };
    assert_eq!((e.code, e.field.as_str()), (code, field), "wrong error for {}\n  got: {e}", shown(&json));
    assert_error_is_explained(&e);
    e
}

/// A 1001 on `field` whose details name the limit `max`.
fn must_reject_too_long(json: Value, field: &str, max: usize) -> ApiError {
    let e = must_reject(json, ErrorCode::TooLong, field);
    assert!(
        e.details.contains(&format!("expected at most {max}")),
        "details do not name the limit {max}: {}",
        e.details
    );
    assert!(e.details.contains(" characters long"), "details do not name the length: {}", e.details);
    e
}

/// `details` is non-empty and says what was expected; the display names the code and the field.
fn assert_error_is_explained(e: &ApiError) {
    assert!(!e.details.is_empty(), "empty details: {e:?}");
    assert!(
        e.details.contains("expected") || e.details.contains("is required"),
        "details do not say what was expected: {}",
        e.details
    );
    let display = e.to_string();
    assert!(display.starts_with(&e.code.code().to_string()), "display does not start with the code: {display}");
    if !e.field.is_empty() {
        assert!(display.contains(&format!("`{}`", e.field)), "display does not name the field: {display}");
    }
}

fn assert_mentions(e: &ApiError, needles: &[&str]) {
    for n in needles {
        assert!(e.details.contains(n), "details do not mention `{n}`: {}", e.details);
    }
}

/// A request of type `kind` with the content object `content`.
fn msg(kind: &str, content: Value) -> Value {
    let mut m = json!({"recipient_type": "individual", "to": TO, "type": kind});
    m[kind] = content;
    m
}

/// `json` with the value at the JSON pointer `pointer` set to `value` (the parent must exist; an
/// array index equal to the length appends).
fn with(mut json: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("a json pointer such as /text/body");
    match json.pointer_mut(parent) {
        Some(Value::Object(o)) => {
            o.insert(key.to_owned(), value);
        }
        Some(Value::Array(a)) => {
            let i: usize = key.parse().expect("an array index");
            if i == a.len() {
                a.push(value);
            } else {
                a[i] = value;
            }
        }
        _ => panic!("no object or array at `{parent}` in {}", shown(&json)),
    }
    json
}

/// `json` without the member at `pointer`.
fn without(mut json: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("a json pointer such as /text/body");
    let removed = match json.pointer_mut(parent) {
        Some(Value::Object(o)) => o.remove(key),
        Some(Value::Array(a)) => Some(a.remove(key.parse().expect("an array index"))),
        _ => None,
    };
    assert!(removed.is_some(), "nothing at `{pointer}` in {}", shown(&json));
    json
}

fn chars(n: usize) -> String {
    "a".repeat(n)
}

fn text(body: &str) -> Value {
    msg("text", json!({"body": body}))
}

fn interactive(content: Value) -> Value {
    msg("interactive", content)
}

fn reply_button(id: &str, title: &str) -> Value {
    json!({"type": "reply", "reply": {"id": id, "title": title}})
}

/// A `button` interactive message with `n` distinct reply buttons.
fn buttons(n: usize) -> Value {
    let list: Vec<Value> = (0..n).map(|i| reply_button(&format!("id-{i}"), &format!("Title {i}"))).collect();
    interactive(json!({"type": "button", "body": {"text": "Pick one"}, "action": {"buttons": list}}))
}

/// A `list` interactive message whose sections hold `rows_per_section[i]` rows (ids unique).
fn list(rows_per_section: &[usize]) -> Value {
    let mut next = 0;
    let sections: Vec<Value> = rows_per_section
        .iter()
        .enumerate()
        .map(|(s, &n)| {
            let rows: Vec<Value> = (0..n)
                .map(|_| {
                    next += 1;
                    json!({"id": format!("row-{next}"), "title": format!("Row {next}"), "description": "a row"})
                })
                .collect();
            json!({"title": format!("Section {s}"), "rows": rows})
        })
        .collect();
    interactive(
        json!({"type": "list", "body": {"text": "Menu"}, "action": {"button": "Options", "sections": sections}}),
    )
}

fn product() -> Value {
    interactive(json!({"type": "product", "action": {"catalog_id": "catalog-1", "product_retailer_id": "sku-1"}}))
}

/// A `product_list` interactive message whose sections hold `items_per_section[i]` products.
fn product_list(items_per_section: &[usize]) -> Value {
    let sections: Vec<Value> = items_per_section
        .iter()
        .enumerate()
        .map(|(s, &n)| {
            let items: Vec<Value> = (0..n).map(|i| json!({"product_retailer_id": format!("sku-{s}-{i}")})).collect();
            json!({"title": format!("Section {s}"), "product_items": items})
        })
        .collect();
    interactive(json!({
        "type": "product_list",
        "header": {"type": "text", "text": "Our products"},
        "body": {"text": "Pick some"},
        "action": {"catalog_id": "catalog-1", "sections": sections}
    }))
}

fn catalog_message() -> Value {
    interactive(
        json!({"type": "catalog_message", "body": {"text": "Our catalog"}, "action": {"name": "catalog_message"}}),
    )
}

fn flow() -> Value {
    interactive(json!({
        "type": "flow",
        "body": {"text": "Book an appointment"},
        "action": {"name": "flow", "parameters": {
            "flow_message_version": "3", "flow_token": "token-1", "flow_id": "flow-1", "flow_cta": "Book!"
        }}
    }))
}

fn cta_url() -> Value {
    interactive(json!({
        "type": "cta_url",
        "body": {"text": "See our site"},
        "action": {"name": "cta_url", "parameters": {"display_text": "Open", "url": "https://example.com/a"}}
    }))
}

fn location_request() -> Value {
    interactive(json!({
        "type": "location_request_message", "body": {"text": "Where are you?"}, "action": {"name": "send_location"}
    }))
}

fn template(components: Value) -> Value {
    msg(
        "template",
        json!({"name": "sample_template", "language": {"policy": "deterministic", "code": "en"}, "components": components}),
    )
}

fn template_button(sub_type: &str, index: Value, parameter: Value) -> Value {
    json!({"type": "button", "sub_type": sub_type, "index": index, "parameters": [parameter]})
}

fn quick_reply(index: Value) -> Value {
    template_button("quick_reply", index, json!({"type": "payload", "payload": "yes"}))
}

fn body_text(text: &str) -> Value {
    json!({"type": "body", "parameters": [{"type": "text", "text": text}]})
}

fn location_content() -> Value {
    json!({"latitude": 37.483307, "longitude": -122.148981, "name": "Meta HQ", "address": "1 Hacker Way"})
}

fn contact() -> Value {
    json!({"name": {"formatted_name": "Jane Doe", "first_name": "Jane"}})
}

/// A template with the authentication/utility/marketing `category` and `ttl_seconds`.
fn categorized_template(category: &str, ttl: Option<u32>) -> Value {
    let mut m = with(template(json!([body_text("123456")])), "/template/category", json!(category));
    if let Some(ttl) = ttl {
        m = with(m, "/ttl_seconds", json!(ttl));
    }
    m
}

// ---------------------------------------------------------------------------------------------
// Reference examples

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference")
}

/// The `*.json` files directly in `dir`, sorted, with their parsed contents.
fn json_files(dir: &Path) -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().expect("a file name").to_string_lossy().into_owned();
            let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {name}: {e}"));
            let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not valid json: {e}"));
            (name, value)
        })
        .collect()
}

#[test]
fn every_reference_example_deserializes_and_validates() {
    let files = json_files(&fixture_dir());
    assert!(!files.is_empty(), "no *.json fixtures found in {}", fixture_dir().display());
    let mut failures = Vec::new();
    for (name, json) in &files {
        let message: OutboundMessage = match serde_json::from_value(json.clone()) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{name}: does not deserialize: {e}"));
                continue;
            }
        };
        match message.validate(&ctx()) {
            Ok(v) => {
                // The recipient is replaced by its normalized wa_id.
                assert_eq!(v.message.to, v.wa_id.as_str(), "{name}");
                assert!(v.wa_id.as_str().bytes().all(|b| b.is_ascii_digit()), "{name}: {}", v.wa_id);
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
        // The JSON API entry point agrees with plain serde.
        if let Err(e) = parse_json(json.to_string().as_bytes()) {
            failures.push(format!("{name}: parse_json: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} reference examples fail:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn reference_examples_keep_their_recipients() {
    // README: placeholders become +16315551234; the real numbers of the examples are kept, and a
    // number without `+` gets the country code 91.
    let dir = fixture_dir();
    let by_name = |name: &str| -> ValidatedMessage {
        let (_, json) = json_files(&dir).into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}"));
        must_accept(json)
    };
    assert_eq!(by_name("onprem-text.json").wa_id.as_str(), "16315551234");
    assert_eq!(by_name("cloud-text-reply.json").wa_id.as_str(), "16505551234");
    assert_eq!(by_name("cloud-template-location.json").wa_id.as_str(), "9112245554792");
}

#[test]
fn over_limit_reference_examples_are_rejected_with_the_documented_error() {
    let files = json_files(&fixture_dir().join("over-limit"));
    assert!(!files.is_empty(), "no over-limit fixtures found");
    for (name, json) in files {
        match name.as_str() {
            "onprem-interactive-list.json" => {
                // `cta-button-content-here` is 23 characters; the list button allows 20.
                let e = must_reject_too_long(json, "interactive.action.button", 20);
                assert_mentions(&e, &["23 characters long"]);
            }
            "onprem-interactive-button-header-text.json" => {
                // Both buttons use the id `unique-postback-id`.
                let e =
                    must_reject(json.clone(), ErrorCode::InvalidParameter, "interactive.action.buttons[1].reply.id");
                assert_mentions(&e, &["unique", "unique-postback-id", "interactive.action.buttons[0].reply.id"]);
                // With distinct ids, `Second Button’s Title` (21 characters) is one too long.
                let distinct = with(json, "/interactive/action/buttons/1/reply/id", json!("unique-postback-id-2"));
                let e = must_reject_too_long(distinct, "interactive.action.buttons[1].reply.title", 20);
                assert_mentions(&e, &["21 characters long"]);
            }
            other => panic!("over-limit/{other} has no expected error in this test; add one (see the README)"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Envelope: recipient_type, to (phone normalization), sender, context, callback data, TTL

#[test]
fn recipient_type_must_be_individual() {
    must_accept(text("hi"));
    must_accept(without(text("hi"), "/recipient_type"));
    let e =
        must_reject(with(text("hi"), "/recipient_type", json!("group")), ErrorCode::InvalidParameter, "recipient_type");
    assert_mentions(&e, &["individual", "group"]);
}

#[test]
fn missing_type_means_text() {
    let v = must_accept(without(text("hi"), "/type"));
    assert_eq!(v.message_type(), "text");
    must_reject(without(with(text("hi"), "/text/body", json!(" ")), "/type"), ErrorCode::MissingParameter, "text.body");
}

#[test]
fn phone_with_plus_is_taken_as_international() {
    for (to, wa_id) in
        [("+16315551234", "16315551234"), ("+1 (631) 555-1234", "16315551234"), ("  +44 20.7946.0958 ", "442079460958")]
    {
        let v = must_accept(with(text("hi"), "/to", json!(to)));
        assert_eq!(v.wa_id.as_str(), wa_id, "{to}");
        assert_eq!(v.message.to, wa_id, "{to}: `to` is replaced by the wa_id");
    }
    let e = must_reject(with(text("hi"), "/to", json!("+0123456789")), ErrorCode::InvalidParameter, "to");
    assert_mentions(&e, &["country calling code"]);
}

#[test]
fn phone_without_plus_gets_the_country_code() {
    // cloud-sending-messages: a business in India (91).
    for (to, wa_id) in
        [("(631) 555-1234", "916315551234"), ("1 (631) 555-1234", "9116315551234"), ("631-555-1234", "916315551234")]
    {
        assert_eq!(must_accept(with(text("hi"), "/to", json!(to))).wa_id.as_str(), wa_id, "{to}");
    }
    // 14 digits are fine with `+`, but 16 once 91 is prepended.
    must_accept(with(text("hi"), "/to", json!("+12345678901234")));
    let e = must_reject(with(text("hi"), "/to", json!("12345678901234")), ErrorCode::InvalidParameter, "to");
    assert_mentions(&e, &["16 digits", "8 to 15"]);
}

#[test]
fn phone_length_is_8_to_15_digits_including_the_country_code() {
    for to in ["+12345678", "+123456789012345", "123456" /* 91 + 6 digits = 8 */] {
        must_accept(with(text("hi"), "/to", json!(to)));
    }
    for to in ["+1234567", "+1234567890123456", "12345" /* 91 + 5 digits = 7 */] {
        let e = must_reject(with(text("hi"), "/to", json!(to)), ErrorCode::InvalidParameter, "to");
        assert_mentions(&e, &["8 to 15 digits"]);
    }
}

#[test]
fn phone_is_required() {
    must_accept(with(text("hi"), "/to", json!("6315551234")));
    must_reject(with(text("hi"), "/to", json!("")), ErrorCode::MissingParameter, "to");
    must_reject(with(text("hi"), "/to", json!("   ")), ErrorCode::MissingParameter, "to");
    must_reject(without(text("hi"), "/to"), ErrorCode::MissingParameter, "to");
}

#[test]
fn phone_allows_only_digits_plus_and_separators() {
    must_accept(with(text("hi"), "/to", json!("+1 (631) 555-1234")));
    for to in ["+1 631 555 12a4", "1+6315551234", "++16315551234", "+1/631/5551234", "+()-", "+1\t6315551234"] {
        let e = must_reject(with(text("hi"), "/to", json!(to)), ErrorCode::InvalidParameter, "to");
        assert_mentions(&e, &["expected"]);
    }
}

#[test]
fn phone_normalize_direct() {
    assert_eq!(phone::normalize("(631) 555-1234", "91").unwrap().as_str(), "916315551234");
    assert_eq!(phone::normalize("(631) 555-1234", "1").unwrap().as_str(), "16315551234");
    assert_eq!(phone::normalize("+16315551234", "91").unwrap().as_str(), "16315551234");
    let e = phone::normalize("+1 631 x", "91").unwrap_err();
    assert_eq!((e.code, e.field.as_str()), (ErrorCode::InvalidParameter, "to"));
}

#[test]
fn a_bad_default_country_code_is_an_internal_error() {
    let bad = ValidationContext { default_country_code: "+91".into(), sender: None };
    // International numbers do not need it.
    validate_with(&text("hi"), &bad).expect("an international number ignores the default country code");
    let e = must_reject_with(with(text("hi"), "/to", json!("6315551234")), &bad, ErrorCode::Internal, "");
    assert_mentions(&e, &["country code"]);
}

#[test]
fn sender_is_not_the_recipient() {
    let sender = ValidationContext {
        default_country_code: "91".into(),
        sender: Some(WaId::from_normalized("916315551234".into())),
    };
    validate_with(&text("hi"), &sender).expect("a different recipient is accepted");
    // Compared after normalization: `(631) 555-1234` from India is 916315551234.
    for to in ["(631) 555-1234", "+91 631 555 1234"] {
        let e = must_reject_with(with(text("hi"), "/to", json!(to)), &sender, ErrorCode::SenderIsRecipient, "to");
        assert_eq!(e.code.code(), 1021);
        assert_mentions(&e, &["916315551234"]);
    }
}

#[test]
fn context_needs_a_message_id() {
    must_accept(with(
        text("hi"),
        "/context",
        json!({"message_id": "wamid.HBgLMTY0NjcwNDM1OTUVAgASGBQzQTdCNTg5RjY1MEMyRjlGMjRGNgA="}),
    ));
    must_reject(with(text("hi"), "/context", json!({})), ErrorCode::MissingParameter, "context.message_id");
    must_reject(
        with(text("hi"), "/context", json!({"message_id": " "})),
        ErrorCode::MissingParameter,
        "context.message_id",
    );
}

#[test]
fn reaction_cannot_be_a_reply() {
    let reaction = msg("reaction", json!({"message_id": "wamid.X", "emoji": "👍"}));
    must_accept(reaction.clone());
    // Any other type may be a reply, e.g. an image.
    must_accept(with(msg("image", json!({"id": "media-1"})), "/context", json!({"message_id": "wamid.X"})));
    let e = must_reject(
        with(reaction, "/context", json!({"message_id": "wamid.X"})),
        ErrorCode::InvalidParameter,
        "context",
    );
    assert_mentions(&e, &["reaction"]);
}

#[test]
fn biz_opaque_callback_data_is_at_most_512_characters() {
    must_accept(with(text("hi"), "/biz_opaque_callback_data", json!(chars(512))));
    must_accept(with(text("hi"), "/biz_opaque_callback_data", json!("é".repeat(512))));
    must_reject_too_long(
        with(text("hi"), "/biz_opaque_callback_data", json!(chars(513))),
        "biz_opaque_callback_data",
        512,
    );
}

#[test]
fn ttl_defaults_to_30_days() {
    assert_eq!(must_accept(text("hi")).ttl_seconds, 2_592_000);
    assert_eq!(must_accept(template(json!([body_text("x")]))).ttl_seconds, 2_592_000);
    assert_eq!(must_accept(with(text("hi"), "/ttl_seconds", json!(45))).ttl_seconds, 45);
}

#[test]
fn ttl_is_30_seconds_to_30_days() {
    for ttl in [30, 2_592_000] {
        assert_eq!(must_accept(with(text("hi"), "/ttl_seconds", json!(ttl))).ttl_seconds, ttl);
    }
    for ttl in [0, 29, 2_592_001] {
        let e = must_reject(with(text("hi"), "/ttl_seconds", json!(ttl)), ErrorCode::InvalidParameter, "ttl_seconds");
        assert_mentions(&e, &["from 30 to 2592000 seconds", &format!("got {ttl}")]);
    }
}

#[test]
fn authentication_template_ttl_defaults_to_600_and_is_30_to_900() {
    assert_eq!(must_accept(categorized_template("authentication", None)).ttl_seconds, 600);
    for ttl in [30, 900] {
        assert_eq!(must_accept(categorized_template("authentication", Some(ttl))).ttl_seconds, ttl);
    }
    for ttl in [29, 901, 2_592_000] {
        let e =
            must_reject(categorized_template("authentication", Some(ttl)), ErrorCode::InvalidParameter, "ttl_seconds");
        assert_mentions(&e, &["from 30 to 900 seconds", "authentication"]);
    }
}

#[test]
fn utility_template_ttl_is_30_to_43200() {
    assert_eq!(must_accept(categorized_template("utility", None)).ttl_seconds, 2_592_000);
    for ttl in [30, 43_200] {
        assert_eq!(must_accept(categorized_template("utility", Some(ttl))).ttl_seconds, ttl);
    }
    for ttl in [29, 43_201] {
        let e = must_reject(categorized_template("utility", Some(ttl)), ErrorCode::InvalidParameter, "ttl_seconds");
        assert_mentions(&e, &["from 30 to 43200 seconds", "utility"]);
    }
}

#[test]
fn marketing_template_ttl_is_the_general_one() {
    assert_eq!(must_accept(categorized_template("marketing", None)).ttl_seconds, 2_592_000);
    must_accept(categorized_template("marketing", Some(2_592_000)));
    must_reject(categorized_template("marketing", Some(2_592_001)), ErrorCode::InvalidParameter, "ttl_seconds");
}

#[test]
fn template_category_must_be_known() {
    for category in ["authentication", "utility", "marketing"] {
        must_accept(categorized_template(category, None));
    }
    for category in ["promotional", "", "AUTHENTICATION"] {
        let e = must_reject(categorized_template(category, None), ErrorCode::InvalidParameter, "template.category");
        assert_mentions(&e, &["`authentication`, `utility` or `marketing`"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Message types: unsupported, hsm

#[test]
fn unknown_type_is_unsupported() {
    assert!(parse_json(text("hi").to_string().as_bytes()).is_ok());
    let e = parse_json(msg("fax", json!({"body": "x"})).to_string().as_bytes()).unwrap_err();
    assert_eq!((e.code, e.field.as_str()), (ErrorCode::UnsupportedMessageType, "type"));
    assert_eq!(e.code.cloud_code(), 131051);
    assert_error_is_explained(&e);
    assert!(serde_json::from_value::<OutboundMessage>(msg("fax", json!({}))).is_err());
}

#[test]
fn missing_content_object_is_missing() {
    assert!(parse_json(msg("image", json!({"id": "m"})).to_string().as_bytes()).is_ok());
    let e = parse_json(json!({"to": TO, "type": "image"}).to_string().as_bytes()).unwrap_err();
    assert_eq!((e.code, e.field.as_str()), (ErrorCode::MissingParameter, "image"));
    assert_error_is_explained(&e);
}

#[test]
fn hsm_is_rejected_in_favour_of_template() {
    must_accept(template(json!([])));
    let e = must_reject(
        msg(
            "hsm",
            json!({"namespace": "ns", "element_name": "n", "language": {"code": "en"}, "localizable_params": []}),
        ),
        ErrorCode::UnsupportedMessageType,
        "type",
    );
    assert_mentions(&e, &["hsm", "`template`"]);
}

// ---------------------------------------------------------------------------------------------
// text

#[test]
fn text_body_is_required() {
    must_accept(text("x"));
    must_reject(msg("text", json!({})), ErrorCode::MissingParameter, "text.body");
    must_reject(text(""), ErrorCode::MissingParameter, "text.body");
    must_reject(text(" \n "), ErrorCode::MissingParameter, "text.body");
}

#[test]
fn text_body_is_at_most_4096_characters() {
    must_accept(text(&chars(4096)));
    // Characters, not bytes.
    must_accept(text(&"é".repeat(4096)));
    must_reject_too_long(text(&chars(4097)), "text.body", 4096);
}

#[test]
fn text_preview_url_is_accepted_inside_or_next_to_text() {
    let v = must_accept(with(text("see https://example.com"), "/text/preview_url", json!(true)));
    assert_eq!(serde_json::to_value(&v.message).unwrap()["text"]["preview_url"], json!(true));
    let v = must_accept(with(text("see https://example.com"), "/preview_url", json!(true)));
    assert_eq!(serde_json::to_value(&v.message).unwrap()["text"]["preview_url"], json!(true));
}

// ---------------------------------------------------------------------------------------------
// Media: image, audio, video, document, sticker

const MEDIA_TYPES: [&str; 5] = ["image", "audio", "video", "document", "sticker"];

#[test]
fn media_needs_id_or_link() {
    for kind in MEDIA_TYPES {
        must_accept(msg(kind, json!({"id": "media-1"})));
        must_accept(msg(kind, json!({"link": "https://example.com/a.bin"})));
        let e = must_reject(msg(kind, json!({})), ErrorCode::MissingParameter, kind);
        assert_mentions(&e, &["exactly one"]);
        must_reject(msg(kind, json!({"id": " ", "link": ""})), ErrorCode::MissingParameter, kind);
    }
}

#[test]
fn media_takes_exactly_one_of_id_and_link() {
    for kind in MEDIA_TYPES {
        let e = must_reject(
            msg(kind, json!({"id": "media-1", "link": "https://example.com/a.bin"})),
            ErrorCode::InvalidParameter,
            kind,
        );
        assert_mentions(&e, &["both", "exactly one"]);
    }
}

#[test]
fn media_link_is_http_or_https() {
    for link in ["http://example.com/a.jpg", "HTTPS://example.com/a.jpg"] {
        must_accept(msg("image", json!({"link": link})));
    }
    for link in ["ftp://example.com/a.jpg", "https://", "http:///a.jpg", "https://a b", "example.com/a.jpg"] {
        let e = must_reject(msg("image", json!({"link": link})), ErrorCode::InvalidParameter, "image.link");
        assert_mentions(&e, &["http:// or https://"]);
    }
}

#[test]
fn media_caption_is_at_most_1024_characters() {
    for kind in ["image", "video", "document"] {
        must_accept(msg(kind, json!({"id": "media-1", "caption": chars(1024)})));
        must_reject_too_long(
            msg(kind, json!({"id": "media-1", "caption": chars(1025)})),
            &format!("{kind}.caption"),
            1024,
        );
    }
}

#[test]
fn audio_and_sticker_take_no_caption() {
    for kind in ["audio", "sticker"] {
        must_accept(msg(kind, json!({"id": "media-1"})));
        let e = must_reject(
            msg(kind, json!({"id": "media-1", "caption": "x"})),
            ErrorCode::InvalidParameter,
            &format!("{kind}.caption"),
        );
        assert_mentions(&e, &["not allowed"]);
    }
}

#[test]
fn filename_only_with_documents() {
    must_accept(msg("document", json!({"id": "media-1", "filename": "invoice.pdf"})));
    for kind in ["image", "audio", "video", "sticker"] {
        must_reject(
            msg(kind, json!({"id": "media-1", "filename": "a.bin"})),
            ErrorCode::InvalidParameter,
            &format!("{kind}.filename"),
        );
    }
}

#[test]
fn provider_only_with_a_link_and_named() {
    must_accept(msg("video", json!({"link": "https://example.com/v.mp4", "provider": {"name": "cdn"}})));
    let e = must_reject(
        msg("video", json!({"id": "media-1", "provider": {"name": "cdn"}})),
        ErrorCode::InvalidParameter,
        "video.provider",
    );
    assert_mentions(&e, &["`link`"]);
    must_reject(
        msg("video", json!({"link": "https://example.com/v.mp4", "provider": {}})),
        ErrorCode::MissingParameter,
        "video.provider.name",
    );
}

// ---------------------------------------------------------------------------------------------
// contacts

#[test]
fn contacts_needs_at_least_one_contact() {
    must_accept(msg("contacts", json!([contact()])));
    must_reject(msg("contacts", json!([])), ErrorCode::MissingParameter, "contacts");
}

#[test]
fn contact_name_is_required() {
    must_accept(msg("contacts", json!([contact(), contact()])));
    must_reject(
        msg("contacts", json!([{"phones": [{"phone": "+1 631 555 1234"}]}])),
        ErrorCode::MissingParameter,
        "contacts[0].name",
    );
    must_reject(
        msg("contacts", json!([contact(), {"org": {"company": "x"}}])),
        ErrorCode::MissingParameter,
        "contacts[1].name",
    );
}

#[test]
fn contact_formatted_name_is_required() {
    must_reject(
        msg("contacts", json!([{"name": {"first_name": "Jane", "last_name": "Doe"}}])),
        ErrorCode::MissingParameter,
        "contacts[0].name.formatted_name",
    );
    must_reject(
        msg("contacts", json!([{"name": {"formatted_name": " ", "first_name": "Jane"}}])),
        ErrorCode::MissingParameter,
        "contacts[0].name.formatted_name",
    );
}

#[test]
fn contact_name_needs_one_more_part_than_formatted_name() {
    for part in ["first_name", "last_name", "middle_name", "suffix", "prefix"] {
        must_accept(msg("contacts", json!([{"name": {"formatted_name": "Jane Doe", part: "x"}}])));
    }
    let e = must_reject(
        msg("contacts", json!([{"name": {"formatted_name": "Jane Doe"}}])),
        ErrorCode::MissingParameter,
        "contacts[0].name",
    );
    assert_mentions(&e, &["first_name", "last_name", "middle_name", "suffix", "prefix"]);
    must_reject(
        msg("contacts", json!([{"name": {"formatted_name": "Jane Doe", "first_name": "  "}}])),
        ErrorCode::MissingParameter,
        "contacts[0].name",
    );
}

#[test]
fn contact_birthday_is_yyyy_mm_dd() {
    must_accept(msg("contacts", json!([with(contact(), "/birthday", json!("1990-12-31"))])));
    for birthday in ["birthday", "1990-13-01", "1990-1-01", "31-12-1990", "1990-12-32"] {
        let e = must_reject(
            msg("contacts", json!([with(contact(), "/birthday", json!(birthday))])),
            ErrorCode::InvalidParameter,
            "contacts[0].birthday",
        );
        assert_mentions(&e, &["yyyy-mm-dd"]);
    }
}

// ---------------------------------------------------------------------------------------------
// location

#[test]
fn location_latitude_is_required_and_within_90_degrees() {
    for lat in [json!(90.0), json!(-90.0), json!(0), json!("37.483307")] {
        must_accept(msg("location", with(location_content(), "/latitude", lat)));
    }
    must_reject(
        msg("location", without(location_content(), "/latitude")),
        ErrorCode::MissingParameter,
        "location.latitude",
    );
    for lat in [90.000001, -90.5, 180.0] {
        let e = must_reject(
            msg("location", with(location_content(), "/latitude", json!(lat))),
            ErrorCode::InvalidParameter,
            "location.latitude",
        );
        assert_mentions(&e, &["-90 to 90"]);
    }
}

#[test]
fn location_longitude_is_required_and_within_180_degrees() {
    for lon in [json!(180.0), json!(-180.0), json!("122.148981")] {
        must_accept(msg("location", with(location_content(), "/longitude", lon)));
    }
    must_reject(
        msg("location", without(location_content(), "/longitude")),
        ErrorCode::MissingParameter,
        "location.longitude",
    );
    for lon in [180.5, -180.000001] {
        let e = must_reject(
            msg("location", with(location_content(), "/longitude", json!(lon))),
            ErrorCode::InvalidParameter,
            "location.longitude",
        );
        assert_mentions(&e, &["-180 to 180"]);
    }
}

#[test]
fn location_name_and_address_are_required() {
    must_accept(msg("location", location_content()));
    must_reject(msg("location", without(location_content(), "/name")), ErrorCode::MissingParameter, "location.name");
    must_reject(
        msg("location", with(location_content(), "/address", json!(""))),
        ErrorCode::MissingParameter,
        "location.address",
    );
}

// ---------------------------------------------------------------------------------------------
// template

#[test]
fn template_name_is_required_and_at_most_512_characters() {
    must_accept(with(template(json!([])), "/template/name", json!(chars(512))));
    must_reject(without(template(json!([])), "/template/name"), ErrorCode::MissingParameter, "template.name");
    must_reject_too_long(with(template(json!([])), "/template/name", json!(chars(513))), "template.name", 512);
}

#[test]
fn template_language_and_code_are_required() {
    must_accept(with(template(json!([])), "/template/language", json!({"code": "en_US"})));
    must_reject(without(template(json!([])), "/template/language"), ErrorCode::MissingParameter, "template.language");
    must_reject(
        with(template(json!([])), "/template/language", json!({"policy": "deterministic"})),
        ErrorCode::MissingParameter,
        "template.language.code",
    );
}

#[test]
fn template_language_policy_is_deterministic() {
    must_accept(template(json!([])));
    let e = must_reject(
        with(template(json!([])), "/template/language/policy", json!("fallback")),
        ErrorCode::InvalidParameter,
        "template.language.policy",
    );
    assert_mentions(&e, &["`deterministic`", "fallback"]);
}

#[test]
fn template_component_type_is_header_body_or_button() {
    must_accept(template(json!([{"type": "header"}, {"type": "body"}])));
    must_reject(template(json!([{"parameters": []}])), ErrorCode::MissingParameter, "template.components[0].type");
    let e = must_reject(
        template(json!([body_text("x"), {"type": "footer"}])),
        ErrorCode::InvalidParameter,
        "template.components[1].type",
    );
    assert_mentions(&e, &["`header`, `body` or `button`"]);
}

#[test]
fn template_parameter_type_is_required_and_allowed_for_its_component() {
    must_accept(template(json!([{"type": "header", "parameters": [{"type": "image", "image": {"id": "m"}}]}])));
    must_reject(
        template(json!([{"type": "body", "parameters": [{"text": "x"}]}])),
        ErrorCode::MissingParameter,
        "template.components[0].parameters[0].type",
    );
    // A body takes text, currency and date_time only.
    let e = must_reject(
        template(json!([{"type": "body", "parameters": [{"type": "image", "image": {"id": "m"}}]}])),
        ErrorCode::InvalidParameter,
        "template.components[0].parameters[0].type",
    );
    assert_mentions(&e, &["`text`, `currency` or `date_time`"]);
}

#[test]
fn template_text_parameter_is_required() {
    must_accept(template(json!([body_text("Customer")])));
    must_reject(
        template(json!([{"type": "body", "parameters": [{"type": "text"}]}])),
        ErrorCode::MissingParameter,
        "template.components[0].parameters[0].text",
    );
}

#[test]
fn template_header_text_is_at_most_60_characters() {
    let header = |n| json!({"type": "header", "parameters": [{"type": "text", "text": chars(n)}]});
    must_accept(template(json!([header(60)])));
    must_reject_too_long(template(json!([header(61)])), "template.components[0].parameters[0].text", 60);
}

#[test]
fn template_body_text_is_at_most_1024_characters_next_to_other_components() {
    let header = json!({"type": "header", "parameters": [{"type": "text", "text": "h"}]});
    must_accept(template(json!([header.clone(), body_text(&chars(1024))])));
    must_reject_too_long(
        template(json!([header, body_text(&chars(1025))])),
        "template.components[1].parameters[0].text",
        1024,
    );
}

#[test]
fn template_body_text_is_at_most_32768_characters_alone() {
    must_accept(template(json!([body_text(&chars(32_768))])));
    must_reject_too_long(
        template(json!([body_text(&chars(32_769))])),
        "template.components[0].parameters[0].text",
        32_768,
    );
}

#[test]
fn template_currency_parameter() {
    let currency = |c: Value| template(json!([{"type": "body", "parameters": [{"type": "currency", "currency": c}]}]));
    let ok = json!({"fallback_value": "$100.99", "code": "USD", "amount_1000": 100990});
    let base = "template.components[0].parameters[0].currency";
    must_accept(currency(ok.clone()));
    must_reject(
        template(json!([{"type": "body", "parameters": [{"type": "currency"}]}])),
        ErrorCode::MissingParameter,
        base,
    );
    must_reject(
        currency(without(ok.clone(), "/fallback_value")),
        ErrorCode::MissingParameter,
        &format!("{base}.fallback_value"),
    );
    must_reject(currency(without(ok.clone(), "/code")), ErrorCode::MissingParameter, &format!("{base}.code"));
    for code in ["usd", "US", "USDX", "U$D"] {
        let e = must_reject(
            currency(with(ok.clone(), "/code", json!(code))),
            ErrorCode::InvalidParameter,
            &format!("{base}.code"),
        );
        assert_mentions(&e, &["iso 4217"]);
    }
    must_reject(currency(without(ok, "/amount_1000")), ErrorCode::MissingParameter, &format!("{base}.amount_1000"));
}

#[test]
fn template_date_time_parameter() {
    let date_time =
        |d: Value| template(json!([{"type": "body", "parameters": [{"type": "date_time", "date_time": d}]}]));
    let base = "template.components[0].parameters[0].date_time";
    must_accept(date_time(json!({"fallback_value": "February 25, 1977"})));
    must_reject(
        template(json!([{"type": "body", "parameters": [{"type": "date_time"}]}])),
        ErrorCode::MissingParameter,
        base,
    );
    must_reject(date_time(json!({})), ErrorCode::MissingParameter, &format!("{base}.fallback_value"));
}

#[test]
fn template_media_parameter_follows_the_media_rules() {
    let header = |p: Value| template(json!([{"type": "header", "parameters": [p]}]));
    let base = "template.components[0].parameters[0]";
    for kind in ["image", "document", "video"] {
        must_accept(header(json!({"type": kind, kind: {"link": "https://example.com/x"}})));
        must_reject(header(json!({"type": kind})), ErrorCode::MissingParameter, &format!("{base}.{kind}"));
        must_reject(header(json!({"type": kind, kind: {}})), ErrorCode::MissingParameter, &format!("{base}.{kind}"));
        must_reject(
            header(json!({"type": kind, kind: {"id": "m", "link": "https://example.com/x"}})),
            ErrorCode::InvalidParameter,
            &format!("{base}.{kind}"),
        );
        // No captions on template media.
        must_reject(
            header(json!({"type": kind, kind: {"id": "m", "caption": "c"}})),
            ErrorCode::InvalidParameter,
            &format!("{base}.{kind}.caption"),
        );
    }
    must_accept(header(json!({"type": "document", "document": {"id": "doc_id", "filename": "doc_name"}})));
    must_reject(
        header(json!({"type": "image", "image": {"id": "m", "filename": "a.jpg"}})),
        ErrorCode::InvalidParameter,
        &format!("{base}.image.filename"),
    );
    must_reject(
        header(json!({"type": "image", "image": {"link": "ftp://example.com/a.jpg"}})),
        ErrorCode::InvalidParameter,
        &format!("{base}.image.link"),
    );
}

#[test]
fn template_location_parameter_follows_the_location_rules() {
    let header = |l: Value| template(json!([{"type": "header", "parameters": [{"type": "location", "location": l}]}]));
    let base = "template.components[0].parameters[0].location";
    must_accept(header(location_content()));
    must_reject(
        template(json!([{"type": "header", "parameters": [{"type": "location"}]}])),
        ErrorCode::MissingParameter,
        base,
    );
    must_reject(
        header(with(location_content(), "/latitude", json!(91))),
        ErrorCode::InvalidParameter,
        &format!("{base}.latitude"),
    );
    must_reject(
        header(with(location_content(), "/longitude", json!("-181"))),
        ErrorCode::InvalidParameter,
        &format!("{base}.longitude"),
    );
    must_reject(
        header(without(location_content(), "/address")),
        ErrorCode::MissingParameter,
        &format!("{base}.address"),
    );
}

#[test]
fn template_button_sub_type_is_quick_reply_url_or_copy_code() {
    must_accept(template(json!([quick_reply(json!(0))])));
    must_accept(template(json!([template_button("url", json!(1), json!({"type": "text", "text": "order/123"}))])));
    must_accept(template(json!([template_button(
        "copy_code",
        json!(2),
        json!({"type": "coupon_code", "coupon_code": "DISCOUNT20"})
    )])));
    must_reject(
        template(json!([without(quick_reply(json!(0)), "/sub_type")])),
        ErrorCode::MissingParameter,
        "template.components[0].sub_type",
    );
    let e = must_reject(
        template(json!([with(quick_reply(json!(0)), "/sub_type", json!("call"))])),
        ErrorCode::InvalidParameter,
        "template.components[0].sub_type",
    );
    assert_mentions(&e, &["`quick_reply`, `url` or `copy_code`"]);
}

#[test]
fn template_button_index_is_0_to_9() {
    for index in [json!(0), json!(9), json!("0"), json!("9")] {
        must_accept(template(json!([quick_reply(index)])));
    }
    must_reject(
        template(json!([without(quick_reply(json!(0)), "/index")])),
        ErrorCode::MissingParameter,
        "template.components[0].index",
    );
    for index in [json!(10), json!(-1), json!("10"), json!("-1"), json!("x"), json!("")] {
        let e = must_reject(
            template(json!([quick_reply(index)])),
            ErrorCode::InvalidParameter,
            "template.components[0].index",
        );
        assert_mentions(&e, &["from 0 to 9"]);
    }
}

#[test]
fn template_button_indexes_are_unique() {
    let ten: Vec<Value> = (0..10).map(|i| quick_reply(json!(i))).collect();
    must_accept(template(json!(ten)));
    // `"1"` and `1` are the same index.
    let e = must_reject(
        template(json!([body_text("x"), quick_reply(json!(1)), quick_reply(json!("1"))])),
        ErrorCode::InvalidParameter,
        "template.components[2].index",
    );
    assert_mentions(&e, &["unique", "template.components[1].index"]);
}

#[test]
fn template_button_parameters_are_required_and_typed_by_sub_type() {
    must_reject(
        template(json!([{"type": "button", "sub_type": "quick_reply", "index": 0}])),
        ErrorCode::MissingParameter,
        "template.components[0].parameters",
    );
    let e = must_reject(
        template(json!([template_button("quick_reply", json!(0), json!({"type": "text", "text": "x"}))])),
        ErrorCode::InvalidParameter,
        "template.components[0].parameters[0].type",
    );
    assert_mentions(&e, &["`payload`"]);
    must_reject(
        template(json!([template_button("url", json!(0), json!({"type": "payload", "payload": "x"}))])),
        ErrorCode::InvalidParameter,
        "template.components[0].parameters[0].type",
    );
    must_reject(
        template(json!([template_button("quick_reply", json!(0), json!({"type": "payload"}))])),
        ErrorCode::MissingParameter,
        "template.components[0].parameters[0].payload",
    );
}

#[test]
fn template_coupon_code_is_required_and_at_most_15_characters() {
    let copy_code = |code: Value| {
        template(json!([template_button("copy_code", json!(0), json!({"type": "coupon_code", "coupon_code": code}))]))
    };
    must_accept(copy_code(json!(chars(15))));
    must_reject(copy_code(json!("")), ErrorCode::MissingParameter, "template.components[0].parameters[0].coupon_code");
    must_reject_too_long(copy_code(json!(chars(16))), "template.components[0].parameters[0].coupon_code", 15);
}

// ---------------------------------------------------------------------------------------------
// interactive: common parts

#[test]
fn interactive_type_is_required_and_known() {
    for m in [
        buttons(1),
        list(&[1]),
        product(),
        product_list(&[1]),
        catalog_message(),
        flow(),
        cta_url(),
        location_request(),
    ] {
        must_accept(m);
    }
    must_reject(without(buttons(1), "/interactive/type"), ErrorCode::MissingParameter, "interactive.type");
    let e = must_reject(
        with(buttons(1), "/interactive/type", json!("carousel")),
        ErrorCode::InvalidParameter,
        "interactive.type",
    );
    assert_mentions(&e, &["`button`", "`location_request_message`", "carousel"]);
}

#[test]
fn interactive_action_is_required() {
    must_reject(without(buttons(1), "/interactive/action"), ErrorCode::MissingParameter, "interactive.action");
    must_reject(without(location_request(), "/interactive/action"), ErrorCode::MissingParameter, "interactive.action");
}

#[test]
fn interactive_body_is_required_except_for_product() {
    must_accept(product());
    must_accept(with(product(), "/interactive/body", json!({"text": "Look"})));
    for m in [buttons(1), list(&[1]), product_list(&[1]), catalog_message(), flow(), cta_url(), location_request()] {
        must_reject(without(m, "/interactive/body"), ErrorCode::MissingParameter, "interactive.body");
    }
    must_reject(with(buttons(1), "/interactive/body", json!({})), ErrorCode::MissingParameter, "interactive.body.text");
}

#[test]
fn interactive_body_is_at_most_1024_characters() {
    must_accept(with(buttons(1), "/interactive/body/text", json!(chars(1024))));
    must_reject_too_long(with(buttons(1), "/interactive/body/text", json!(chars(1025))), "interactive.body.text", 1024);
}

#[test]
fn interactive_footer_is_at_most_60_characters() {
    must_accept(with(buttons(1), "/interactive/footer", json!({"text": chars(60)})));
    must_reject_too_long(
        with(buttons(1), "/interactive/footer", json!({"text": chars(61)})),
        "interactive.footer.text",
        60,
    );
    must_reject(
        with(buttons(1), "/interactive/footer", json!({})),
        ErrorCode::MissingParameter,
        "interactive.footer.text",
    );
}

#[test]
fn interactive_header_text_is_required_and_at_most_60_characters() {
    let header = |h: Value| with(buttons(1), "/interactive/header", h);
    must_accept(header(json!({"type": "text", "text": chars(60)})));
    must_reject_too_long(header(json!({"type": "text", "text": chars(61)})), "interactive.header.text", 60);
    must_reject(header(json!({"type": "text"})), ErrorCode::MissingParameter, "interactive.header.text");
}

#[test]
fn interactive_header_type_is_text_image_video_or_document() {
    let header = |h: Value| with(buttons(1), "/interactive/header", h);
    must_reject(header(json!({"text": "x"})), ErrorCode::MissingParameter, "interactive.header.type");
    let e = must_reject(
        header(json!({"type": "audio", "audio": {"id": "m"}})),
        ErrorCode::InvalidParameter,
        "interactive.header.type",
    );
    assert_mentions(&e, &["`text`, `image`, `video` or `document`"]);
}

#[test]
fn interactive_media_header_follows_the_media_rules() {
    let header = |h: Value| with(buttons(1), "/interactive/header", h);
    for kind in ["image", "video", "document"] {
        must_accept(header(json!({"type": kind, kind: {"id": "media-1"}})));
        must_accept(header(json!({"type": kind, kind: {"link": "https://example.com/x", "provider": {"name": "p"}}})));
        must_reject(header(json!({"type": kind})), ErrorCode::MissingParameter, &format!("interactive.header.{kind}"));
        must_reject(
            header(json!({"type": kind, kind: {}})),
            ErrorCode::MissingParameter,
            &format!("interactive.header.{kind}"),
        );
        must_reject(
            header(json!({"type": kind, kind: {"id": "m", "link": "https://example.com/x"}})),
            ErrorCode::InvalidParameter,
            &format!("interactive.header.{kind}"),
        );
        must_reject(
            header(json!({"type": kind, kind: {"id": "m", "caption": "c"}})),
            ErrorCode::InvalidParameter,
            &format!("interactive.header.{kind}.caption"),
        );
    }
    must_accept(header(json!({"type": "document", "document": {"id": "m", "filename": "some-file-name"}})));
    must_reject(
        header(json!({"type": "video", "video": {"id": "m", "filename": "v.mp4"}})),
        ErrorCode::InvalidParameter,
        "interactive.header.video.filename",
    );
}

#[test]
fn list_and_product_list_headers_are_text_only() {
    let image = json!({"type": "image", "image": {"id": "m"}});
    must_accept(with(list(&[1]), "/interactive/header", json!({"type": "text", "text": "Menu"})));
    for m in [list(&[1]), product_list(&[1])] {
        let e = must_reject(
            with(m, "/interactive/header", image.clone()),
            ErrorCode::InvalidParameter,
            "interactive.header.type",
        );
        assert_mentions(&e, &["`text`"]);
    }
}

#[test]
fn product_has_no_header() {
    must_accept(product());
    let e = must_reject(
        with(product(), "/interactive/header", json!({"type": "text", "text": "x"})),
        ErrorCode::InvalidParameter,
        "interactive.header",
    );
    assert_mentions(&e, &["product"]);
}

#[test]
fn product_list_needs_a_header() {
    must_accept(product_list(&[1]));
    must_reject(without(product_list(&[1]), "/interactive/header"), ErrorCode::MissingParameter, "interactive.header");
}

// ---------------------------------------------------------------------------------------------
// interactive: reply buttons

#[test]
fn reply_buttons_are_1_to_3() {
    must_accept(buttons(1));
    must_accept(buttons(3));
    must_reject(buttons(0), ErrorCode::MissingParameter, "interactive.action.buttons");
    let e = must_reject(buttons(4), ErrorCode::InvalidParameter, "interactive.action.buttons");
    assert_mentions(&e, &["1 to 3 buttons", "got 4"]);
}

#[test]
fn reply_button_type_is_reply() {
    must_reject(
        without(buttons(2), "/interactive/action/buttons/1/type"),
        ErrorCode::MissingParameter,
        "interactive.action.buttons[1].type",
    );
    let e = must_reject(
        with(buttons(2), "/interactive/action/buttons/1/type", json!("url")),
        ErrorCode::InvalidParameter,
        "interactive.action.buttons[1].type",
    );
    assert_mentions(&e, &["`reply`"]);
    must_reject(
        without(buttons(2), "/interactive/action/buttons/1/reply"),
        ErrorCode::MissingParameter,
        "interactive.action.buttons[1].reply",
    );
}

#[test]
fn reply_button_id_is_required_and_at_most_256_characters() {
    must_accept(with(buttons(3), "/interactive/action/buttons/2/reply/id", json!(chars(256))));
    must_reject(
        without(buttons(3), "/interactive/action/buttons/2/reply/id"),
        ErrorCode::MissingParameter,
        "interactive.action.buttons[2].reply.id",
    );
    must_reject_too_long(
        with(buttons(3), "/interactive/action/buttons/2/reply/id", json!(chars(257))),
        "interactive.action.buttons[2].reply.id",
        256,
    );
}

#[test]
fn reply_button_id_has_no_surrounding_spaces() {
    must_accept(with(buttons(1), "/interactive/action/buttons/0/reply/id", json!("an id")));
    for id in [" id", "id ", "\tid"] {
        let e = must_reject(
            with(buttons(1), "/interactive/action/buttons/0/reply/id", json!(id)),
            ErrorCode::InvalidParameter,
            "interactive.action.buttons[0].reply.id",
        );
        assert_mentions(&e, &["leading or trailing spaces"]);
    }
}

#[test]
fn reply_button_ids_are_unique() {
    must_accept(buttons(3));
    let e = must_reject(
        with(buttons(3), "/interactive/action/buttons/2/reply/id", json!("id-0")),
        ErrorCode::InvalidParameter,
        "interactive.action.buttons[2].reply.id",
    );
    assert_mentions(&e, &["unique", "id-0", "interactive.action.buttons[0].reply.id"]);
}

#[test]
fn reply_button_title_is_required_and_at_most_20_characters() {
    must_accept(with(buttons(3), "/interactive/action/buttons/2/reply/title", json!(chars(20))));
    must_accept(with(buttons(3), "/interactive/action/buttons/2/reply/title", json!("é".repeat(20))));
    must_reject(
        with(buttons(3), "/interactive/action/buttons/2/reply/title", json!("")),
        ErrorCode::MissingParameter,
        "interactive.action.buttons[2].reply.title",
    );
    must_reject_too_long(
        with(buttons(3), "/interactive/action/buttons/2/reply/title", json!(chars(21))),
        "interactive.action.buttons[2].reply.title",
        20,
    );
}

#[test]
fn reply_button_titles_are_unique() {
    let e = must_reject(
        with(buttons(3), "/interactive/action/buttons/1/reply/title", json!("Title 0")),
        ErrorCode::InvalidParameter,
        "interactive.action.buttons[1].reply.title",
    );
    assert_mentions(&e, &["unique", "Title 0"]);
}

// ---------------------------------------------------------------------------------------------
// interactive: list

#[test]
fn list_button_is_required_and_at_most_20_characters() {
    must_accept(with(list(&[1]), "/interactive/action/button", json!(chars(20))));
    must_reject(
        without(list(&[1]), "/interactive/action/button"),
        ErrorCode::MissingParameter,
        "interactive.action.button",
    );
    must_reject(
        with(list(&[1]), "/interactive/action/button", json!("")),
        ErrorCode::MissingParameter,
        "interactive.action.button",
    );
    must_reject_too_long(
        with(list(&[1]), "/interactive/action/button", json!(chars(21))),
        "interactive.action.button",
        20,
    );
}

#[test]
fn list_sections_are_1_to_10() {
    must_accept(list(&[1; 10]));
    must_reject(list(&[]), ErrorCode::MissingParameter, "interactive.action.sections");
    let e = must_reject(list(&[1; 11]), ErrorCode::InvalidParameter, "interactive.action.sections");
    assert_mentions(&e, &["1 to 10 sections", "got 11"]);
}

#[test]
fn list_rows_are_at_most_10_across_sections() {
    must_accept(list(&[10]));
    must_accept(list(&[4, 3, 3]));
    let e = must_reject(list(&[4, 4, 3]), ErrorCode::InvalidParameter, "interactive.action.sections");
    assert_mentions(&e, &["at most 10 rows", "got 11"]);
    must_reject(list(&[11]), ErrorCode::InvalidParameter, "interactive.action.sections");
}

#[test]
fn list_section_needs_rows() {
    must_reject(list(&[1, 0]), ErrorCode::MissingParameter, "interactive.action.sections[1].rows");
}

#[test]
fn list_section_title_is_required_with_more_than_one_section() {
    must_accept(without(list(&[2]), "/interactive/action/sections/0/title"));
    must_reject(
        without(list(&[1, 1]), "/interactive/action/sections/1/title"),
        ErrorCode::MissingParameter,
        "interactive.action.sections[1].title",
    );
    must_reject(
        with(list(&[1, 1]), "/interactive/action/sections/0/title", json!(" ")),
        ErrorCode::MissingParameter,
        "interactive.action.sections[0].title",
    );
}

#[test]
fn list_section_title_is_at_most_24_characters() {
    must_accept(with(list(&[1, 1]), "/interactive/action/sections/1/title", json!(chars(24))));
    must_reject_too_long(
        with(list(&[1, 1]), "/interactive/action/sections/1/title", json!(chars(25))),
        "interactive.action.sections[1].title",
        24,
    );
    // Also with a single section, where the title is optional.
    must_reject_too_long(
        with(list(&[1]), "/interactive/action/sections/0/title", json!(chars(25))),
        "interactive.action.sections[0].title",
        24,
    );
}

#[test]
fn list_row_id_is_required_and_at_most_200_characters() {
    let row = "/interactive/action/sections/0/rows/1";
    must_accept(with(list(&[2]), &format!("{row}/id"), json!(chars(200))));
    must_reject(
        without(list(&[2]), &format!("{row}/id")),
        ErrorCode::MissingParameter,
        "interactive.action.sections[0].rows[1].id",
    );
    must_reject_too_long(
        with(list(&[2]), &format!("{row}/id"), json!(chars(201))),
        "interactive.action.sections[0].rows[1].id",
        200,
    );
}

#[test]
fn list_row_ids_are_unique_across_sections() {
    must_accept(list(&[2, 2]));
    // list() numbers rows from 1: section 0 holds row-1 and row-2.
    let e = must_reject(
        with(list(&[2, 2]), "/interactive/action/sections/1/rows/0/id", json!("row-1")),
        ErrorCode::InvalidParameter,
        "interactive.action.sections[1].rows[0].id",
    );
    assert_mentions(&e, &["unique", "row-1", "interactive.action.sections[0].rows[0].id"]);
}

#[test]
fn list_row_title_is_required_and_at_most_24_characters() {
    let title = "/interactive/action/sections/0/rows/0/title";
    must_accept(with(list(&[1]), title, json!(chars(24))));
    must_reject(
        without(list(&[1]), title),
        ErrorCode::MissingParameter,
        "interactive.action.sections[0].rows[0].title",
    );
    must_reject_too_long(with(list(&[1]), title, json!(chars(25))), "interactive.action.sections[0].rows[0].title", 24);
}

#[test]
fn list_row_description_is_optional_and_at_most_72_characters() {
    let description = "/interactive/action/sections/0/rows/0/description";
    must_accept(without(list(&[1]), description));
    must_accept(with(list(&[1]), description, json!(chars(72))));
    must_reject_too_long(
        with(list(&[1]), description, json!(chars(73))),
        "interactive.action.sections[0].rows[0].description",
        72,
    );
}

// ---------------------------------------------------------------------------------------------
// interactive: product, product_list, catalog_message

#[test]
fn product_needs_catalog_and_product_ids() {
    must_accept(with(product(), "/interactive/action/product_retailer_id", json!(chars(100))));
    must_reject(
        without(product(), "/interactive/action/catalog_id"),
        ErrorCode::MissingParameter,
        "interactive.action.catalog_id",
    );
    must_reject(
        without(product(), "/interactive/action/product_retailer_id"),
        ErrorCode::MissingParameter,
        "interactive.action.product_retailer_id",
    );
    must_reject_too_long(
        with(product(), "/interactive/action/product_retailer_id", json!(chars(101))),
        "interactive.action.product_retailer_id",
        100,
    );
}

#[test]
fn product_list_needs_a_catalog_id() {
    must_reject(
        without(product_list(&[1]), "/interactive/action/catalog_id"),
        ErrorCode::MissingParameter,
        "interactive.action.catalog_id",
    );
}

#[test]
fn product_list_sections_are_1_to_10() {
    must_accept(product_list(&[1; 10]));
    must_reject(product_list(&[]), ErrorCode::MissingParameter, "interactive.action.sections");
    must_reject(product_list(&[1; 11]), ErrorCode::InvalidParameter, "interactive.action.sections");
}

#[test]
fn product_list_has_at_most_30_products() {
    must_accept(product_list(&[10, 10, 10]));
    let e = must_reject(product_list(&[10, 10, 11]), ErrorCode::InvalidParameter, "interactive.action.sections");
    assert_mentions(&e, &["at most 30 products", "got 31"]);
}

#[test]
fn product_list_sections_need_products_and_titles() {
    must_accept(without(product_list(&[2]), "/interactive/action/sections/0/title"));
    must_reject(product_list(&[1, 0]), ErrorCode::MissingParameter, "interactive.action.sections[1].product_items");
    must_reject(
        without(product_list(&[1, 1]), "/interactive/action/sections/0/title"),
        ErrorCode::MissingParameter,
        "interactive.action.sections[0].title",
    );
    must_reject_too_long(
        with(product_list(&[1, 1]), "/interactive/action/sections/0/title", json!(chars(25))),
        "interactive.action.sections[0].title",
        24,
    );
}

#[test]
fn product_list_item_id_is_required_and_at_most_100_characters() {
    let id = "/interactive/action/sections/1/product_items/0/product_retailer_id";
    let field = "interactive.action.sections[1].product_items[0].product_retailer_id";
    must_accept(with(product_list(&[1, 1]), id, json!(chars(100))));
    must_reject(with(product_list(&[1, 1]), id, json!("")), ErrorCode::MissingParameter, field);
    must_reject_too_long(with(product_list(&[1, 1]), id, json!(chars(101))), field, 100);
}

#[test]
fn catalog_message_action_name_is_catalog_message() {
    must_accept(catalog_message());
    must_reject(
        without(catalog_message(), "/interactive/action/name"),
        ErrorCode::MissingParameter,
        "interactive.action.name",
    );
    let e = must_reject(
        with(catalog_message(), "/interactive/action/name", json!("catalog")),
        ErrorCode::InvalidParameter,
        "interactive.action.name",
    );
    assert_mentions(&e, &["`catalog_message`"]);
}

#[test]
fn catalog_message_thumbnail_is_at_most_100_characters() {
    let thumbnail = |id: String| {
        with(catalog_message(), "/interactive/action/parameters", json!({"thumbnail_product_retailer_id": id}))
    };
    must_accept(thumbnail(chars(100)));
    must_reject_too_long(thumbnail(chars(101)), "interactive.action.parameters.thumbnail_product_retailer_id", 100);
}

// ---------------------------------------------------------------------------------------------
// interactive: flow

const FLOW_PARAMS: &str = "/interactive/action/parameters";

fn flow_with(member: &str, value: Value) -> Value {
    with(flow(), &format!("{FLOW_PARAMS}/{member}"), value)
}

fn flow_without(member: &str) -> Value {
    without(flow(), &format!("{FLOW_PARAMS}/{member}"))
}

#[test]
fn flow_action_name_is_flow() {
    must_reject(without(flow(), "/interactive/action/name"), ErrorCode::MissingParameter, "interactive.action.name");
    must_reject(
        with(flow(), "/interactive/action/name", json!("cta_url")),
        ErrorCode::InvalidParameter,
        "interactive.action.name",
    );
}

#[test]
fn flow_parameters_are_required() {
    must_reject(without(flow(), FLOW_PARAMS), ErrorCode::MissingParameter, "interactive.action.parameters");
}

#[test]
fn flow_mode_is_draft_or_published() {
    for mode in ["draft", "published"] {
        must_accept(flow_with("mode", json!(mode)));
    }
    let e = must_reject(
        flow_with("mode", json!("test")),
        ErrorCode::InvalidParameter,
        "interactive.action.parameters.mode",
    );
    assert_mentions(&e, &["`draft` or `published`"]);
}

#[test]
fn flow_message_version_is_3() {
    must_reject(
        flow_without("flow_message_version"),
        ErrorCode::MissingParameter,
        "interactive.action.parameters.flow_message_version",
    );
    let e = must_reject(
        flow_with("flow_message_version", json!("2")),
        ErrorCode::InvalidParameter,
        "interactive.action.parameters.flow_message_version",
    );
    assert_mentions(&e, &["`3`"]);
}

#[test]
fn flow_token_and_id_are_required() {
    must_reject(flow_without("flow_token"), ErrorCode::MissingParameter, "interactive.action.parameters.flow_token");
    must_reject(flow_with("flow_id", json!(" ")), ErrorCode::MissingParameter, "interactive.action.parameters.flow_id");
}

#[test]
fn flow_cta_is_required_and_at_most_20_characters() {
    must_accept(flow_with("flow_cta", json!(chars(20))));
    must_reject(flow_without("flow_cta"), ErrorCode::MissingParameter, "interactive.action.parameters.flow_cta");
    must_reject_too_long(flow_with("flow_cta", json!(chars(21))), "interactive.action.parameters.flow_cta", 20);
}

#[test]
fn flow_cta_has_no_emoji() {
    must_accept(flow_with("flow_cta", json!("Book now")));
    must_reject(
        flow_with("flow_cta", json!("Book 📅")),
        ErrorCode::InvalidParameter,
        "interactive.action.parameters.flow_cta",
    );
}

#[test]
fn flow_action_is_navigate_or_data_exchange() {
    must_accept(flow_with("flow_action", json!("data_exchange")));
    let e = must_reject(
        flow_with("flow_action", json!("open")),
        ErrorCode::InvalidParameter,
        "interactive.action.parameters.flow_action",
    );
    assert_mentions(&e, &["`navigate` or `data_exchange`"]);
}

#[test]
fn flow_action_payload_is_required_for_navigate_only() {
    let payload = json!({"screen": "WELCOME", "data": {"user_name": "name"}});
    must_accept(with(
        flow_with("flow_action", json!("navigate")),
        &format!("{FLOW_PARAMS}/flow_action_payload"),
        payload.clone(),
    ));
    must_reject(
        flow_with("flow_action", json!("navigate")),
        ErrorCode::MissingParameter,
        "interactive.action.parameters.flow_action_payload",
    );
    must_reject(
        with(flow_with("flow_action", json!("data_exchange")), &format!("{FLOW_PARAMS}/flow_action_payload"), payload),
        ErrorCode::InvalidParameter,
        "interactive.action.parameters.flow_action_payload",
    );
}

#[test]
fn flow_action_payload_needs_a_screen_and_non_empty_data() {
    let navigate = |payload: Value| {
        with(flow_with("flow_action", json!("navigate")), &format!("{FLOW_PARAMS}/flow_action_payload"), payload)
    };
    must_accept(navigate(json!({"screen": "WELCOME"})));
    must_reject(
        navigate(json!({"data": {"a": 1}})),
        ErrorCode::MissingParameter,
        "interactive.action.parameters.flow_action_payload.screen",
    );
    for data in [json!({}), json!([1]), json!("x")] {
        let e = must_reject(
            navigate(json!({"screen": "WELCOME", "data": data})),
            ErrorCode::InvalidParameter,
            "interactive.action.parameters.flow_action_payload.data",
        );
        assert_mentions(&e, &["non-empty json object"]);
    }
}

// ---------------------------------------------------------------------------------------------
// interactive: cta_url, location_request_message

#[test]
fn cta_url_action_name_and_parameters() {
    must_reject(
        with(cta_url(), "/interactive/action/name", json!("flow")),
        ErrorCode::InvalidParameter,
        "interactive.action.name",
    );
    must_reject(
        without(cta_url(), "/interactive/action/parameters"),
        ErrorCode::MissingParameter,
        "interactive.action.parameters",
    );
}

#[test]
fn cta_url_display_text_is_required_and_at_most_20_characters() {
    let display = "/interactive/action/parameters/display_text";
    must_accept(with(cta_url(), display, json!(chars(20))));
    must_reject(without(cta_url(), display), ErrorCode::MissingParameter, "interactive.action.parameters.display_text");
    must_reject_too_long(with(cta_url(), display, json!(chars(21))), "interactive.action.parameters.display_text", 20);
}

#[test]
fn cta_url_url_is_required_and_http() {
    let url = "/interactive/action/parameters/url";
    must_accept(with(cta_url(), url, json!("http://example.com")));
    must_reject(without(cta_url(), url), ErrorCode::MissingParameter, "interactive.action.parameters.url");
    must_reject(
        with(cta_url(), url, json!("mailto:a@example.com")),
        ErrorCode::InvalidParameter,
        "interactive.action.parameters.url",
    );
}

#[test]
fn location_request_action_name_is_send_location() {
    must_accept(location_request());
    must_reject(
        without(location_request(), "/interactive/action/name"),
        ErrorCode::MissingParameter,
        "interactive.action.name",
    );
    let e = must_reject(
        with(location_request(), "/interactive/action/name", json!("send")),
        ErrorCode::InvalidParameter,
        "interactive.action.name",
    );
    assert_mentions(&e, &["`send_location`"]);
}

// ---------------------------------------------------------------------------------------------
// reaction, address

#[test]
fn reaction_needs_a_message_id() {
    must_accept(msg("reaction", json!({"message_id": "wamid.X", "emoji": "\u{1F600}"})));
    must_reject(msg("reaction", json!({"emoji": "👍"})), ErrorCode::MissingParameter, "reaction.message_id");
}

#[test]
fn reaction_needs_an_emoji_which_may_be_empty() {
    // An empty emoji removes a previous reaction.
    must_accept(msg("reaction", json!({"message_id": "wamid.X", "emoji": ""})));
    let e =
        must_reject(msg("reaction", json!({"message_id": "wamid.X"})), ErrorCode::MissingParameter, "reaction.emoji");
    assert_mentions(&e, &["empty string"]);
}

#[test]
fn address_country_is_an_iso_3166_code() {
    must_accept(msg("address", json!({"country": "IN"})));
    must_reject(msg("address", json!({"body": "Where?"})), ErrorCode::MissingParameter, "address.country");
    for country in ["in", "IND", "I"] {
        let e =
            must_reject(msg("address", json!({"country": country})), ErrorCode::InvalidParameter, "address.country");
        assert_mentions(&e, &["iso 3166-1 alpha-2"]);
    }
}

#[test]
fn address_body_is_at_most_1024_characters() {
    must_accept(msg("address", json!({"country": "IN", "body": chars(1024)})));
    must_reject_too_long(msg("address", json!({"country": "IN", "body": chars(1025)})), "address.body", 1024);
}

#[test]
fn address_saved_addresses_need_an_id() {
    must_accept(msg(
        "address",
        json!({"country": "IN", "saved_addresses": [{"id": "home", "value": {"name": "Jane"}}]}),
    ));
    must_reject(
        msg("address", json!({"country": "IN", "saved_addresses": [{"id": "home"}, {"value": {"name": "Jane"}}]})),
        ErrorCode::MissingParameter,
        "address.saved_addresses[1].id",
    );
}

// ---------------------------------------------------------------------------------------------
// The error table as validation uses it

#[test]
fn validation_error_codes_are_the_reference_numbers() {
    assert_eq!(ErrorCode::TooLong.code(), 1001);
    assert_eq!(ErrorCode::MissingParameter.code(), 1008);
    assert_eq!(ErrorCode::InvalidParameter.code(), 1009);
    assert_eq!(ErrorCode::SenderIsRecipient.code(), 1021);
    assert_eq!(ErrorCode::MissingParameter.cloud_code(), 131008);
    assert_eq!(ErrorCode::InvalidParameter.cloud_code(), 131009);
    assert_eq!(ErrorCode::SenderIsRecipient.cloud_code(), 131021);
    assert_eq!(ErrorCode::UnsupportedMessageType.cloud_code(), 131051);
    let e = must_reject_too_long(text(&chars(4097)), "text.body", 4096);
    assert_eq!(
        e.to_string(),
        "1001 (parameter value is too long) at `text.body`: `text.body` is 4097 characters long: expected at most 4096"
    );
}

// ---------------------------------------------------------------------------------------------
// The helpers themselves are strict

#[test]
#[should_panic(expected = "wrong error")]
fn must_reject_fails_on_the_wrong_field() {
    must_reject(text(&chars(4097)), ErrorCode::TooLong, "text");
}

#[test]
#[should_panic(expected = "wrong error")]
fn must_reject_fails_on_the_wrong_code() {
    must_reject(text(&chars(4097)), ErrorCode::InvalidParameter, "text.body");
}

#[test]
#[should_panic(expected = "but the request was accepted")]
fn must_reject_fails_when_accepted() {
    must_reject(text("hi"), ErrorCode::MissingParameter, "text.body");
}

#[test]
#[should_panic(expected = "expected the request to be accepted")]
fn must_accept_fails_when_rejected() {
    must_accept(text(""));
}
