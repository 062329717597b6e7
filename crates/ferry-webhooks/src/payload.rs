//! The bodies ferry POSTs: the On-Premises shape (`{"statuses":[...]}`) and the Cloud shape
//! (`{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{...}}]}]}`),
//! as MISSION.md and reference/ describe them, built from outbox entries.

use ferry_model::{ErrorCode, MessageId, MessageKey, MessageStatus, ShardId};
use ferry_shard::CallbackRecord;
use serde_json::{Value, json};

/// Which JSON shape callbacks take (config `webhook.shape`, flag `--webhook-shape`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    #[default]
    Onprem,
    Cloud,
}

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Shape, String> {
        match s {
            "onprem" => Ok(Shape::Onprem),
            "cloud" => Ok(Shape::Cloud),
            other => Err(format!("webhook shape `{other}`: expected `onprem` or `cloud`")),
        }
    }
}

/// One status callback: the outbox entry and the message id it concerns.
pub struct StatusCallback<'a> {
    pub message_id: MessageId,
    pub record: &'a CallbackRecord,
}

impl<'a> StatusCallback<'a> {
    pub fn new(shard: ShardId, space: u64, record: &'a CallbackRecord) -> Self {
        StatusCallback { message_id: MessageId::encode(MessageKey { shard, space, seq: record.seq }), record }
    }

    fn status(&self) -> &'static str {
        MessageStatus::from_code(self.record.status).map_or("accepted", MessageStatus::as_str)
    }

    /// Seconds since the epoch, as a string (both shapes).
    fn timestamp(&self) -> String {
        (self.record.at_ms / 1000).to_string()
    }
}

fn error_code(reference: u32) -> Option<ErrorCode> {
    ErrorCode::ALL.iter().copied().find(|c| c.code() == reference)
}

fn onprem_status(c: &StatusCallback<'_>) -> Value {
    let mut v = json!({
        "id": c.message_id.as_str(),
        "recipient_id": c.record.wa_id,
        "status": c.status(),
        "timestamp": c.timestamp(),
        "type": "message",
    });
    if !c.record.biz_opaque_callback_data.is_empty() {
        v["biz_opaque_callback_data"] = json!(c.record.biz_opaque_callback_data);
    }
    if c.record.status == MessageStatus::Failed.code() {
        v["errors"] = json!([{
            "code": c.record.error_code,
            "title": c.record.error_title,
            "details": c.record.error_details,
        }]);
    }
    v
}

fn cloud_status(c: &StatusCallback<'_>) -> Value {
    let mut v = json!({
        "id": c.message_id.as_str(),
        "status": c.status(),
        "timestamp": c.timestamp(),
        "recipient_id": c.record.wa_id,
    });
    if !c.record.biz_opaque_callback_data.is_empty() {
        v["biz_opaque_callback_data"] = json!(c.record.biz_opaque_callback_data);
    }
    if c.record.status == MessageStatus::Failed.code() {
        let code = error_code(c.record.error_code).map_or(c.record.error_code, ErrorCode::cloud_code);
        v["errors"] = json!([{
            "code": code,
            "title": c.record.error_title,
            "message": c.record.error_title,
            "error_data": { "details": c.record.error_details },
        }]);
    }
    v
}

/// The Cloud envelope around change values, one per business number: `{"object":
/// "whatsapp_business_account","entry":[{"id","changes":[{"field":"messages","value":
/// {"messaging_product","metadata",...}}, ...]}]}` — Meta's shape, where each change names its
/// number in `metadata` and one entry (the account) holds several changes.
fn cloud_envelope(business_account_id: &str, changes: Vec<(&str, Value)>) -> Value {
    let changes: Vec<Value> = changes
        .into_iter()
        .map(|(business, fields)| {
            let mut value = json!({
                "messaging_product": "whatsapp",
                "metadata": { "display_phone_number": business, "phone_number_id": business },
            });
            if let (Some(value), Value::Object(fields)) = (value.as_object_mut(), fields) {
                value.extend(fields);
            }
            json!({ "field": "messages", "value": value })
        })
        .collect();
    json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": business_account_id, "changes": changes }],
    })
}

/// `items` grouped by business number, numbers in order of first appearance and each group in
/// its items' order (so a message's statuses keep their order).
fn by_business<'a, T>(items: impl IntoIterator<Item = (&'a str, T)>) -> Vec<(&'a str, Vec<T>)> {
    let mut groups: Vec<(&'a str, Vec<T>)> = Vec::new();
    for (business, item) in items {
        match groups.iter_mut().find(|(b, _)| *b == business) {
            Some((_, group)) => group.push(item),
            None => groups.push((business, vec![item])),
        }
    }
    groups
}

/// The body of one POST carrying `callbacks`; for Cloud one change per business number.
pub fn body(shape: Shape, business_account_id: &str, callbacks: &[StatusCallback<'_>]) -> Value {
    match shape {
        Shape::Onprem => json!({ "statuses": callbacks.iter().map(onprem_status).collect::<Vec<_>>() }),
        Shape::Cloud => {
            let groups = by_business(callbacks.iter().map(|c| (c.record.sender.as_str(), cloud_status(c))));
            let changes = groups.into_iter().map(|(b, statuses)| (b, json!({ "statuses": statuses }))).collect();
            cloud_envelope(business_account_id, changes)
        }
    }
}

/// One inbound message in the reference's `contacts` and `messages` arrays (both shapes).
fn inbound_parts(records: &[&CallbackRecord]) -> (Vec<Value>, Vec<Value>) {
    let contacts = records.iter().map(|r| json!({ "profile": { "name": r.profile_name }, "wa_id": r.wa_id })).collect();
    let messages = records
        .iter()
        .map(|r| {
            let mut m = json!({
                "from": r.wa_id,
                "id": r.inbound_id,
                "timestamp": (r.at_ms / 1000).to_string(),
                "type": r.message_type,
            });
            if r.message_type == "text" {
                m["text"] = json!({ "body": r.text_body });
            }
            m
        })
        .collect();
    (contacts, messages)
}

/// The body of one POST carrying inbound user messages: On-Prem `{"contacts":[...],
/// "messages":[...]}`, Cloud the same arrays in a change value per business number.
pub fn inbound_body(shape: Shape, business_account_id: &str, records: &[&CallbackRecord]) -> Value {
    match shape {
        Shape::Onprem => {
            let (contacts, messages) = inbound_parts(records);
            json!({ "contacts": contacts, "messages": messages })
        }
        Shape::Cloud => {
            let groups = by_business(records.iter().map(|r| (r.sender.as_str(), *r)));
            let changes = groups
                .into_iter()
                .map(|(b, records)| {
                    let (contacts, messages) = inbound_parts(&records);
                    (b, json!({ "contacts": contacts, "messages": messages }))
                })
                .collect();
            cloud_envelope(business_account_id, changes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound() -> CallbackRecord {
        CallbackRecord {
            kind: ferry_shard::CALLBACK_INBOUND,
            at_ms: 1_700_000_100_999,
            wa_id: "16315551234".into(),
            sender: "15550100000".into(),
            message_type: "text".into(),
            inbound_id: "ABGGFlA5FpafAgo6EhiTRB7gHjwA".into(),
            text_body: "hello there".into(),
            profile_name: "Kerry Fisher".into(),
            ..CallbackRecord::default()
        }
    }

    #[test]
    fn inbound_onprem_shape_matches_the_reference() {
        let r = inbound();
        let body = inbound_body(Shape::Onprem, "0", &[&r]);
        assert_eq!(
            body,
            json!({
                "contacts": [{ "profile": { "name": "Kerry Fisher" }, "wa_id": "16315551234" }],
                "messages": [{
                    "from": "16315551234",
                    "id": "ABGGFlA5FpafAgo6EhiTRB7gHjwA",
                    "timestamp": "1700000100",
                    "type": "text",
                    "text": { "body": "hello there" },
                }],
            })
        );
    }

    #[test]
    fn inbound_cloud_shape_matches_the_reference() {
        let r = inbound();
        let body = inbound_body(Shape::Cloud, "WABA", &[&r]);
        assert_eq!(body["object"], "whatsapp_business_account");
        assert_eq!(body["entry"][0]["id"], "WABA");
        let change = &body["entry"][0]["changes"][0];
        assert_eq!(change["field"], "messages");
        let value = &change["value"];
        assert_eq!(value["messaging_product"], "whatsapp");
        assert_eq!(value["metadata"]["phone_number_id"], "15550100000");
        assert_eq!(value["contacts"][0]["wa_id"], "16315551234");
        assert_eq!(value["contacts"][0]["profile"]["name"], "Kerry Fisher");
        assert_eq!(value["messages"][0]["from"], "16315551234");
        assert_eq!(value["messages"][0]["text"]["body"], "hello there");
        assert!(value.get("statuses").is_none());
    }

    fn record(status: MessageStatus) -> CallbackRecord {
        CallbackRecord {
            seq: 42,
            status: status.code(),
            at_ms: 1_700_000_000_123,
            wa_id: "16315551234".into(),
            sender: "15550100000".into(),
            biz_opaque_callback_data: "order-7".into(),
            error_code: if status == MessageStatus::Failed { 1013 } else { 0 },
            error_title: if status == MessageStatus::Failed {
                "Recipient is not a valid WhatsApp user".into()
            } else {
                String::new()
            },
            error_details: String::new(),
            message_type: "text".into(),
            ..CallbackRecord::default()
        }
    }

    #[test]
    fn onprem_shape_matches_the_reference() {
        let r = record(MessageStatus::Delivered);
        let body = body(Shape::Onprem, "0", &[StatusCallback::new(ShardId(3), 9, &r)]);
        let s = &body["statuses"][0];
        assert_eq!(s["status"], "delivered");
        assert_eq!(s["recipient_id"], "16315551234");
        assert_eq!(s["timestamp"], "1700000000");
        assert_eq!(s["type"], "message");
        assert_eq!(s["biz_opaque_callback_data"], "order-7");
        assert!(s["id"].as_str().unwrap().starts_with("wamid."));
        assert!(s.get("errors").is_none());
    }

    #[test]
    fn failed_statuses_carry_errors_in_each_flavour() {
        let r = record(MessageStatus::Failed);
        let on = body(Shape::Onprem, "0", &[StatusCallback::new(ShardId(0), 9, &r)]);
        assert_eq!(on["statuses"][0]["errors"][0]["code"], 1013);
        let cloud = body(Shape::Cloud, "WABA", &[StatusCallback::new(ShardId(0), 9, &r)]);
        assert_eq!(cloud["object"], "whatsapp_business_account");
        assert_eq!(cloud["entry"][0]["id"], "WABA");
        let change = &cloud["entry"][0]["changes"][0];
        assert_eq!(change["field"], "messages");
        assert_eq!(change["value"]["messaging_product"], "whatsapp");
        let status = &change["value"]["statuses"][0];
        assert_eq!(status["status"], "failed");
        assert_eq!(status["errors"][0]["code"], 131026, "1013 in the Cloud flavour");
        assert_eq!(status["biz_opaque_callback_data"], "order-7");
    }
}
