//! Settling messages: stage "record the outcome" of a shard. What the delivery loop hands the
//! writer when the chat server acked a message, when a message failed for good, and when a receipt
//! arrived — and the merge that keeps a status from going backwards.
//!
//! [`merge`] is pure: it takes the stored record (if any) and one [`Settlement`] and returns the
//! record to store, or `None` when the change is not progress (a `delivered` after `read`, a second
//! `sent`). The writer applies it to the record as of the same batch, so two changes to one message
//! in one group commit compose.

use ferry_model::MessageStatus;

use crate::storage::{CallbackRecord, QueueRecord, StatusEvent, StatusRecord};

/// Why a message failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureReason {
    /// Reference code: 410 (TTL expired), 1013 (recipient not a valid user), ...
    pub code: u32,
    pub title: String,
    pub details: String,
}

/// One outcome to record durably.
#[derive(Debug, Clone)]
pub enum Settlement {
    /// The chat server acknowledged the message: it leaves the queue; status `sent`.
    Sent { seq: u64, message: StatusRecord, at_ms: i64 },
    /// The message will never be delivered: it leaves the queue; status `failed`.
    Failed { seq: u64, message: StatusRecord, at_ms: i64, reason: FailureReason },
    /// A receipt (`delivered` or `read`) for a message that may or may not have been settled yet.
    Receipt { seq: u64, status: MessageStatus, at_ms: i64 },
    /// The upstream reported that a message it had taken (`sent`) failed after all (a Cloud API
    /// `failed` status webhook after the 200): `sent` → `failed` with the upstream's reason. Only
    /// from `sent`: not before it (a message still queued fails through its answer, `Failed`),
    /// and not after `delivered`/`read`. Touches no queued message.
    LateFailure { seq: u64, at_ms: i64, reason: FailureReason },
    /// A message a user sent to the business: records the user's latest inbound time (the
    /// customer-service window) and an inbound event for the webhook. Goes to the shard that owns
    /// the user (`from`); touches no queued message.
    Inbound(InboundRecord),
}

/// One inbound user message, as the chat server reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundRecord {
    /// The chat server's id of the message.
    pub id: String,
    /// The user's wa_id.
    pub from: String,
    /// The business number (wa_id form).
    pub to: String,
    pub at_ms: i64,
    pub message_type: String,
    pub text_body: String,
    pub profile_name: String,
}

impl Settlement {
    pub fn seq(&self) -> u64 {
        match self {
            Settlement::Sent { seq, .. }
            | Settlement::Failed { seq, .. }
            | Settlement::Receipt { seq, .. }
            | Settlement::LateFailure { seq, .. } => *seq,
            Settlement::Inbound(_) => 0,
        }
    }

    /// Whether this settlement removes the message from the queue.
    pub fn leaves_queue(&self) -> bool {
        !matches!(self, Settlement::Receipt { .. } | Settlement::LateFailure { .. } | Settlement::Inbound(_))
    }
}

/// The status-record fields of a queued message (status `accepted`; history `accepted`, plus
/// `held_for_quality_assessment` for a paced template's message).
pub fn status_base(record: &QueueRecord) -> StatusRecord {
    StatusRecord {
        status: MessageStatus::Accepted.code(),
        wa_id: record.wa_id.clone(),
        sender: record.sender.clone(),
        message_type: record.message_type.clone(),
        accepted_at_ms: record.accepted_at_ms,
        expires_at_ms: record.expires_at_ms,
        updated_at_ms: record.accepted_at_ms,
        history: std::iter::once(StatusEvent { status: MessageStatus::Accepted.code(), at_ms: record.accepted_at_ms })
            .chain((record.held_at_ms > 0).then(|| StatusEvent {
                status: MessageStatus::HeldForQualityAssessment.code(),
                at_ms: record.held_at_ms,
            }))
            .collect(),
        error_code: 0,
        error_title: String::new(),
        error_details: String::new(),
        biz_opaque_callback_data: record.biz_opaque_callback_data.clone(),
        upstream_message_id: String::new(),
    }
}

fn status_of(r: &StatusRecord) -> MessageStatus {
    MessageStatus::from_code(r.status).unwrap_or(MessageStatus::Accepted)
}

fn add_event(r: &mut StatusRecord, status: MessageStatus, at_ms: i64) {
    if r.history.iter().any(|e| e.status == status.code()) {
        return;
    }
    let pos = r.history.iter().position(|e| e.at_ms > at_ms).unwrap_or(r.history.len());
    r.history.insert(pos, StatusEvent { status: status.code(), at_ms });
}

/// Fills the message's fields into a record that a receipt created before the ack arrived.
fn fill_from(r: &mut StatusRecord, message: &StatusRecord) {
    if r.wa_id.is_empty() {
        r.wa_id = message.wa_id.clone();
        r.sender = message.sender.clone();
        r.message_type = message.message_type.clone();
        r.accepted_at_ms = message.accepted_at_ms;
        r.expires_at_ms = message.expires_at_ms;
        r.biz_opaque_callback_data = message.biz_opaque_callback_data.clone();
        for e in &message.history {
            if let Some(s) = MessageStatus::from_code(e.status) {
                add_event(r, s, e.at_ms);
            }
        }
    }
}

/// The inbound event of `m` (see [`crate::storage::CALLBACK_INBOUND`]).
pub fn inbound_callback(m: &InboundRecord) -> CallbackRecord {
    CallbackRecord {
        kind: crate::storage::CALLBACK_INBOUND,
        at_ms: m.at_ms,
        wa_id: m.from.clone(),
        sender: m.to.clone(),
        message_type: m.message_type.clone(),
        inbound_id: m.id.clone(),
        text_body: m.text_body.clone(),
        profile_name: m.profile_name.clone(),
        ..CallbackRecord::default()
    }
}

/// The webhook callback reporting the current status of `record` (message `seq`).
pub fn callback_for(seq: u64, record: &StatusRecord) -> CallbackRecord {
    let at_ms =
        record.history.iter().rev().find(|e| e.status == record.status).map_or(record.updated_at_ms, |e| e.at_ms);
    CallbackRecord {
        seq,
        status: record.status,
        at_ms,
        wa_id: record.wa_id.clone(),
        sender: record.sender.clone(),
        biz_opaque_callback_data: record.biz_opaque_callback_data.clone(),
        error_code: record.error_code,
        error_title: record.error_title.clone(),
        error_details: record.error_details.clone(),
        message_type: record.message_type.clone(),
        ..CallbackRecord::default()
    }
}

/// One callback per status `record` went through after `accepted`, in status order (sent,
/// delivered, read): for a record whose receipts arrived before the ack that filled it in. The ack
/// of a resend may carry a later time than the receipts; each time is capped by the next one, so
/// times never go backwards either.
pub fn callbacks_through(seq: u64, record: &StatusRecord) -> Vec<CallbackRecord> {
    let before_sent = [MessageStatus::Accepted.code(), MessageStatus::HeldForQualityAssessment.code()];
    let mut events: Vec<(u32, i64)> =
        record.history.iter().filter(|e| !before_sent.contains(&e.status)).map(|e| (e.status, e.at_ms)).collect();
    events.sort_by_key(|(status, _)| *status);
    events.dedup_by_key(|(status, _)| *status);
    for i in (0..events.len().saturating_sub(1)).rev() {
        events[i].1 = events[i].1.min(events[i + 1].1);
    }
    events
        .into_iter()
        .map(|(status, at_ms)| {
            let mut c = callback_for(seq, record);
            c.status = status;
            c.at_ms = at_ms;
            if status != MessageStatus::Failed.code() {
                (c.error_code, c.error_title, c.error_details) = (0, String::new(), String::new());
            }
            c
        })
        .collect()
}

/// The record to store after `change`, or `None` if the change is not progress.
pub fn merge(current: Option<&StatusRecord>, change: &Settlement) -> Option<StatusRecord> {
    match change {
        Settlement::Sent { message, at_ms, .. } => {
            let mut r = current.cloned().unwrap_or_else(|| message.clone());
            let was = if current.is_some() { status_of(&r) } else { MessageStatus::Accepted };
            if was == MessageStatus::Failed || (current.is_some() && was.is_at_least_sent() && !r.wa_id.is_empty()) {
                return None;
            }
            fill_from(&mut r, message);
            if r.upstream_message_id.is_empty() {
                r.upstream_message_id = message.upstream_message_id.clone();
            }
            add_event(&mut r, MessageStatus::Sent, *at_ms);
            if was.advances(MessageStatus::Sent) {
                r.status = MessageStatus::Sent.code();
            }
            r.updated_at_ms = r.updated_at_ms.max(*at_ms);
            Some(r)
        }
        Settlement::Failed { message, at_ms, reason, .. } => {
            if let Some(c) = current
                && !status_of(c).advances(MessageStatus::Failed)
            {
                // Already sent (a receipt proves it): not a failure. If the receipt came first,
                // its record still lacks the message's fields: fill them in.
                if c.wa_id.is_empty() && status_of(c) != MessageStatus::Failed {
                    let mut r = c.clone();
                    fill_from(&mut r, message);
                    add_event(&mut r, MessageStatus::Sent, c.history.first().map_or(*at_ms, |e| e.at_ms));
                    return Some(r);
                }
                return None;
            }
            let mut r = message.clone();
            r.status = MessageStatus::Failed.code();
            add_event(&mut r, MessageStatus::Failed, *at_ms);
            r.updated_at_ms = *at_ms;
            r.error_code = reason.code;
            r.error_title = reason.title.clone();
            r.error_details = reason.details.clone();
            Some(r)
        }
        Settlement::Receipt { status, at_ms, .. } => {
            let mut r = current
                .cloned()
                .unwrap_or_else(|| StatusRecord { status: MessageStatus::Accepted.code(), ..StatusRecord::default() });
            let was = status_of(&r);
            if !was.advances(*status) {
                return None;
            }
            add_event(&mut r, *status, *at_ms);
            r.status = status.code();
            r.updated_at_ms = r.updated_at_ms.max(*at_ms);
            Some(r)
        }
        Settlement::LateFailure { at_ms, reason, .. } => {
            let c = current.filter(|c| status_of(c) == MessageStatus::Sent && !c.wa_id.is_empty())?;
            let mut r = c.clone();
            r.status = MessageStatus::Failed.code();
            // The upstream's clock may be behind ours: the failure still comes after `sent`.
            let at_ms = (*at_ms).max(r.history.iter().map(|e| e.at_ms).max().unwrap_or(i64::MIN));
            add_event(&mut r, MessageStatus::Failed, at_ms);
            r.updated_at_ms = r.updated_at_ms.max(at_ms);
            r.error_code = reason.code;
            r.error_title = reason.title.clone();
            r.error_details = reason.details.clone();
            Some(r)
        }
        // Not about a message's status (the writer records it in `contacts`).
        Settlement::Inbound(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> StatusRecord {
        status_base(&QueueRecord {
            wa_id: "16315551234".into(),
            sender: "15550100000".into(),
            message_type: "text".into(),
            accepted_at_ms: 1_000,
            expires_at_ms: 9_000,
            payload: vec![],
            biz_opaque_callback_data: "cb".into(),
            idempotency_key: String::new(),
            held_at_ms: 0,
        })
    }

    fn statuses(r: &StatusRecord) -> Vec<u32> {
        r.history.iter().map(|e| e.status).collect()
    }

    #[test]
    fn ack_then_receipts_move_forward_only() {
        let sent = merge(None, &Settlement::Sent { seq: 1, message: base(), at_ms: 2_000 }).unwrap();
        assert_eq!(sent.status, MessageStatus::Sent.code());
        let delivered =
            merge(Some(&sent), &Settlement::Receipt { seq: 1, status: MessageStatus::Delivered, at_ms: 3_000 })
                .unwrap();
        let read = merge(Some(&delivered), &Settlement::Receipt { seq: 1, status: MessageStatus::Read, at_ms: 4_000 })
            .unwrap();
        assert_eq!(read.status, MessageStatus::Read.code());
        assert_eq!(statuses(&read), vec![0, 1, 2, 3]);
        assert!(
            merge(Some(&read), &Settlement::Receipt { seq: 1, status: MessageStatus::Delivered, at_ms: 5_000 })
                .is_none()
        );
        assert!(merge(Some(&read), &Settlement::Sent { seq: 1, message: base(), at_ms: 6_000 }).is_none());
        let reason = FailureReason { code: 410, title: "expired".into(), details: String::new() };
        assert!(merge(Some(&read), &Settlement::Failed { seq: 1, message: base(), at_ms: 7_000, reason }).is_none());
    }

    #[test]
    fn receipt_before_ack_keeps_the_later_status() {
        let early =
            merge(None, &Settlement::Receipt { seq: 1, status: MessageStatus::Delivered, at_ms: 3_000 }).unwrap();
        assert!(early.wa_id.is_empty());
        let after_ack = merge(Some(&early), &Settlement::Sent { seq: 1, message: base(), at_ms: 2_500 }).unwrap();
        assert_eq!(after_ack.status, MessageStatus::Delivered.code());
        assert_eq!(after_ack.wa_id, "16315551234");
        assert_eq!(statuses(&after_ack), vec![0, 1, 2]);
    }

    #[test]
    fn sent_stores_the_upstream_id_in_the_same_record() {
        let message = StatusRecord { upstream_message_id: "wamid.meta1".into(), ..base() };
        let sent = merge(None, &Settlement::Sent { seq: 1, message, at_ms: 2_000 }).unwrap();
        assert_eq!(sent.upstream_message_id, "wamid.meta1");
        // A receipt that came first: the ack still brings the upstream id.
        let early =
            merge(None, &Settlement::Receipt { seq: 1, status: MessageStatus::Delivered, at_ms: 3_000 }).unwrap();
        let message = StatusRecord { upstream_message_id: "wamid.meta2".into(), ..base() };
        let after = merge(Some(&early), &Settlement::Sent { seq: 1, message, at_ms: 2_500 }).unwrap();
        assert_eq!(
            (after.upstream_message_id.as_str(), after.status),
            ("wamid.meta2", MessageStatus::Delivered.code())
        );
    }

    #[test]
    fn a_late_failure_fails_a_sent_message_only() {
        let reason = FailureReason { code: 131026, title: "Message undeliverable".into(), details: "d".into() };
        let late = |current: Option<&StatusRecord>| {
            merge(current, &Settlement::LateFailure { seq: 1, at_ms: 3_000, reason: reason.clone() })
        };
        let sent = merge(None, &Settlement::Sent { seq: 1, message: base(), at_ms: 2_000 }).unwrap();
        let failed = late(Some(&sent)).unwrap();
        assert_eq!(failed.status, MessageStatus::Failed.code());
        assert_eq!((failed.error_code, failed.error_title.as_str()), (131026, "Message undeliverable"));
        assert_eq!(statuses(&failed), vec![0, 1, 4], "accepted, sent, failed");
        let early_clock = merge(Some(&sent), &Settlement::LateFailure { seq: 1, at_ms: 500, reason: reason.clone() });
        assert_eq!(statuses(&early_clock.unwrap()), vec![0, 1, 4], "after sent even if the upstream's clock is behind");
        assert!(late(Some(&failed)).is_none(), "a repeat changes nothing");
        assert!(late(None).is_none(), "not before sent: the message's answer fails it");
        let delivered =
            merge(Some(&sent), &Settlement::Receipt { seq: 1, status: MessageStatus::Delivered, at_ms: 2_500 })
                .unwrap();
        assert!(late(Some(&delivered)).is_none(), "not after delivered");
        // A receipt that overtook the ack left a record without the message: not `sent` yet.
        let early = merge(None, &Settlement::Receipt { seq: 1, status: MessageStatus::Sent, at_ms: 2_000 }).unwrap();
        assert!(late(Some(&early)).is_none());
        // Nothing moves a failed message on.
        assert!(
            merge(Some(&failed), &Settlement::Receipt { seq: 1, status: MessageStatus::Read, at_ms: 4_000 }).is_none()
        );
    }

    #[test]
    fn failure_records_the_reason() {
        let reason = FailureReason { code: 410, title: "Message expired".into(), details: "ttl".into() };
        let failed = merge(None, &Settlement::Failed { seq: 1, message: base(), at_ms: 9_000, reason }).unwrap();
        assert_eq!(failed.status, MessageStatus::Failed.code());
        assert_eq!(failed.error_code, 410);
        assert!(
            merge(Some(&failed), &Settlement::Receipt { seq: 1, status: MessageStatus::Read, at_ms: 9_500 }).is_none()
        );
    }
}
