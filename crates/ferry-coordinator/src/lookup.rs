//! `GetMessage`: a message by id, from whichever column family holds it now.

use ferry_model::{ApiError, ErrorCode, MessageId, MessageStatus, ShardId, WaId};

use crate::{Coordinator, shard_error};

/// A message as `GetMessage` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    pub message_id: MessageId,
    pub wa_id: WaId,
    pub shard: ShardId,
    pub status: MessageStatus,
    pub message_type: String,
    pub sender: String,
    pub accepted_at_ms: i64,
    pub expires_at_ms: i64,
    pub updated_at_ms: i64,
    pub biz_opaque_callback_data: String,
    /// The upstream's id of the message (the Cloud API's wamid) once it is `sent`; empty otherwise.
    pub upstream_message_id: String,
    /// `(status, timestamp_ms)`, oldest first.
    pub history: Vec<(MessageStatus, i64)>,
    /// Why the message failed (status `failed` only).
    pub error: Option<FailureView>,
}

/// Why a message failed: the reference code (410 expired, 1013 recipient invalid, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureView {
    pub code: u32,
    pub title: String,
    pub details: String,
}

impl Coordinator {
    /// Looks a message up by id.
    pub fn get_message(&self, message_id: &str) -> Result<MessageView, ApiError> {
        let not_found = || {
            ApiError::new(ErrorCode::NotFound, "message_id", format!("no message with id `{message_id}` on this node"))
        };
        let key = MessageId::decode(message_id).ok_or_else(not_found)?;
        if !self.issued_here(&key) {
            return Err(not_found());
        }
        let shard = &self.core.shards[key.shard.index()];
        // Read in the direction messages move (held → queue → status), so one moving between two
        // reads is found by the next read instead of missed by both.
        let (queued, held) = match shard.get_held(key.seq).map_err(shard_error)?.and_then(|h| h.record) {
            Some(record) => (Some(record), true),
            None => (shard.get_queued(key.seq).map_err(shard_error)?, false),
        };
        if let Some(record) = queued {
            // Accepted (a released message's history shows its hold) or held.
            let mut history = vec![(MessageStatus::Accepted, record.accepted_at_ms)];
            if record.held_at_ms > 0 {
                history.push((MessageStatus::HeldForQualityAssessment, record.held_at_ms));
            }
            return Ok(MessageView {
                message_id: MessageId::encode(key),
                wa_id: WaId::from_normalized(record.wa_id),
                shard: key.shard,
                status: if held { MessageStatus::HeldForQualityAssessment } else { MessageStatus::Accepted },
                message_type: record.message_type,
                sender: record.sender,
                accepted_at_ms: record.accepted_at_ms,
                expires_at_ms: record.expires_at_ms,
                updated_at_ms: record.held_at_ms.max(record.accepted_at_ms),
                biz_opaque_callback_data: record.biz_opaque_callback_data,
                upstream_message_id: String::new(),
                history,
                error: None,
            });
        }
        // Not queued: settled (sent, delivered, read, failed), or unknown. A receipt that overtook
        // its ack leaves a record without the message's fields: the message is then still queued,
        // and was answered above.
        let record =
            shard.get_status(key.seq).map_err(shard_error)?.filter(|r| !r.wa_id.is_empty()).ok_or_else(not_found)?;
        let status = MessageStatus::from_code(record.status).unwrap_or(MessageStatus::Accepted);
        let error = (status == MessageStatus::Failed).then(|| FailureView {
            code: record.error_code,
            title: record.error_title.clone(),
            details: record.error_details.clone(),
        });
        Ok(MessageView {
            message_id: MessageId::encode(key),
            wa_id: WaId::from_normalized(record.wa_id),
            shard: key.shard,
            status,
            message_type: record.message_type,
            sender: record.sender,
            accepted_at_ms: record.accepted_at_ms,
            expires_at_ms: record.expires_at_ms,
            updated_at_ms: record.updated_at_ms,
            biz_opaque_callback_data: record.biz_opaque_callback_data,
            upstream_message_id: record.upstream_message_id,
            history: record
                .history
                .iter()
                .filter_map(|e| MessageStatus::from_code(e.status).map(|s| (s, e.at_ms)))
                .collect(),
            error,
        })
    }
}
