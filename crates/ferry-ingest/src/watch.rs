//! `WatchStatuses`: the shards' status-event logs as one gRPC stream.
//!
//! Every forward status change is written to its shard's event log (`outbox` column family) in the
//! same synced batch as the status itself (see `ferry-shard`'s storage docs). A watch follows the
//! logs of the shards its filter can match (the recipient's shard, the shards named by the message
//! ids, or all of them) with one position per shard, and sends each matching event together with
//! a cursor that encodes every position just after that event. Resuming from that cursor continues
//! each shard's log exactly where the client left it: no retained event is missed or sent twice.
//!
//! Cursor format (opaque to clients, stable across restarts): `c1` followed by one `.`-separated
//! decimal position per shard, in shard order, e.g. `c1.17.1.342`. A position is the next event
//! sequence number to read in that shard.

use std::collections::HashSet;
use std::sync::Arc;

use ferry_coordinator::Coordinator;
use ferry_model::{ApiError, ErrorCode, MessageId, MessageKey, MessageStatus, ShardId, WaId};
use ferry_proto::v1;
use ferry_shard::{CallbackRecord, Shard};
use futures_util::future::select_all;
use tokio::sync::{mpsc, watch};
use tonic::Status;

/// Most message ids one watch may filter on.
pub const MAX_MESSAGE_IDS: usize = 1_000;
/// Events read from one shard's log per step.
const SCAN_LIMIT: usize = 512;
/// Events buffered per stream before the reader waits for the client.
const BUFFER: usize = 1_024;
const CURSOR_PREFIX: &str = "c1";

/// Encodes per-shard positions as a cursor.
pub fn encode_cursor(positions: &[u64]) -> String {
    let mut s = String::with_capacity(CURSOR_PREFIX.len() + positions.len() * 8);
    s.push_str(CURSOR_PREFIX);
    for p in positions {
        s.push('.');
        s.push_str(&p.to_string());
    }
    s
}

/// Decodes a cursor made by [`encode_cursor`] for a node of `shard_count` shards.
pub fn decode_cursor(cursor: &str, shard_count: usize) -> Result<Vec<u64>, ApiError> {
    let bad = |what: &str| {
        ApiError::invalid("cursor", format_args!("a cursor from a StatusEvent of this node ({what}), got `{cursor}`"))
    };
    let mut parts = cursor.split('.');
    if parts.next() != Some(CURSOR_PREFIX) {
        return Err(bad("it starts with `c1.`"));
    }
    let positions =
        parts.map(|p| p.parse::<u64>().map_err(|_| bad("decimal positions"))).collect::<Result<Vec<_>, _>>()?;
    if positions.len() != shard_count {
        return Err(bad(&format!("{shard_count} positions, one per shard; it has {}", positions.len())));
    }
    Ok(positions)
}

/// What a watch lets through.
struct Filter {
    recipient: Option<String>,
    messages: Option<HashSet<(u16, u64)>>,
    /// The caller's `senders` (a restricted user): only their events. Every status event carries
    /// the sender of its message.
    senders: Option<HashSet<String>>,
}

impl Filter {
    fn matches(&self, shard: u16, event: &CallbackRecord) -> bool {
        event.kind == ferry_shard::CALLBACK_STATUS
            && self.recipient.as_ref().is_none_or(|r| *r == event.wa_id)
            && self.messages.as_ref().is_none_or(|m| m.contains(&(shard, event.seq)))
            && self.senders.as_ref().is_none_or(|s| s.contains(&event.sender))
    }
}

/// A validated watch: which shards to read from where, and what to let through.
pub struct Watch {
    shards: Vec<Arc<Shard>>,
    positions: Vec<u64>,
    filter: Filter,
}

impl Watch {
    /// Validates `request` against the node (bad input changes nothing and names its field).
    /// `senders`: the caller's list (a restricted user), whose events alone pass; `None`: all.
    pub fn new(
        coordinator: &Coordinator,
        request: v1::WatchStatusesRequest,
        senders: Option<&[WaId]>,
    ) -> Result<Watch, ApiError> {
        let all = coordinator.shards();
        let mut watched: Option<HashSet<u16>> = None;
        let recipient = if request.recipient.is_empty() {
            None
        } else {
            let wa_id = coordinator.normalize_recipient(&request.recipient).map_err(|mut e| {
                e.field = "recipient".into();
                e
            })?;
            watched = Some(HashSet::from([coordinator.shard_for(&wa_id).0]));
            Some(wa_id.as_str().to_owned())
        };
        let messages = if request.message_ids.is_empty() {
            None
        } else {
            if request.message_ids.len() > MAX_MESSAGE_IDS {
                return Err(ApiError::invalid(
                    "message_ids",
                    format_args!("at most {MAX_MESSAGE_IDS} ids, got {}", request.message_ids.len()),
                ));
            }
            let mut keys = HashSet::with_capacity(request.message_ids.len());
            for (i, id) in request.message_ids.iter().enumerate() {
                let key = MessageId::decode(id).filter(|k| coordinator.issued_here(k)).ok_or_else(|| {
                    ApiError::invalid(
                        format!("message_ids[{i}]"),
                        format_args!("a message id of this node, got `{id}`"),
                    )
                })?;
                keys.insert((key.shard.0, key.seq));
            }
            let shards: HashSet<u16> = keys.iter().map(|(s, _)| *s).collect();
            watched = Some(match watched {
                Some(w) => w.intersection(&shards).copied().collect(),
                None => shards,
            });
            Some(keys)
        };
        let positions = if request.cursor.is_empty() {
            match v1::StartFrom::try_from(request.start) {
                Ok(v1::StartFrom::Oldest) => vec![1; all.len()],
                Ok(v1::StartFrom::Latest) => all.iter().map(|s| s.committed_next_outbox_seq()).collect(),
                Err(_) => {
                    return Err(ApiError::invalid(
                        "start",
                        format_args!("START_FROM_LATEST (0) or START_FROM_OLDEST (1), got {}", request.start),
                    ));
                }
            }
        } else {
            decode_cursor(&request.cursor, all.len())?
        };
        let shards = all.iter().filter(|s| watched.as_ref().is_none_or(|w| w.contains(&s.id().0))).cloned().collect();
        let senders = senders.map(|list| list.iter().map(|s| s.as_str().to_owned()).collect());
        let filter = Filter { recipient, messages, senders };
        Ok(Watch { shards, positions, filter })
    }

    /// Starts reading. The stream ends when the client goes away, a read fails, or `stopping`
    /// turns true (the server is shutting down: the client reconnects elsewhere with its cursor).
    pub fn start(self, stopping: watch::Receiver<bool>) -> mpsc::Receiver<Result<v1::StatusEvent, Status>> {
        let (tx, rx) = mpsc::channel(BUFFER);
        tokio::spawn(async move {
            let mut stopping = stopping;
            tokio::select! {
                () = self.run(tx) => {}
                _ = stopping.wait_for(|stop| *stop) => {}
            }
        });
        rx
    }

    async fn run(mut self, tx: mpsc::Sender<Result<v1::StatusEvent, Status>>) {
        if self.shards.is_empty() {
            // The filters exclude each other (no message id lives in the recipient's shard).
            tx.closed().await;
            return;
        }
        let mut committed: Vec<_> = self.shards.iter().map(|s| s.subscribe_events()).collect();
        loop {
            let mut idle = true;
            for (k, shard) in self.shards.iter().enumerate() {
                let index = usize::from(shard.id().0);
                let until = *committed[k].borrow_and_update();
                let from = self.positions[index];
                if from >= until {
                    continue;
                }
                // A catch-up scan reads up to SCAN_LIMIT events from disk: off the async workers.
                let reader = shard.clone();
                let scanned = tokio::task::spawn_blocking(move || reader.scan_outbox(from, until, SCAN_LIMIT)).await;
                let scanned = match scanned {
                    Ok(scanned) => scanned,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    // The runtime is shutting down: the stream ends with it.
                    Err(_) => return,
                };
                let events = match scanned {
                    Ok(events) => events,
                    Err(e) => {
                        let _ = tx
                            .send(Err(crate::status_from(&ApiError::new(ErrorCode::Internal, "", e.to_string()))))
                            .await;
                        return;
                    }
                };
                // Fewer than the limit means everything in [from, until) was read (events dropped
                // by retention leave gaps); otherwise continue after the last one next round.
                let complete = events.len() < SCAN_LIMIT;
                idle &= complete;
                for (seq, event) in events {
                    self.positions[index] = seq + 1;
                    if self.filter.matches(shard.id().0, &event) {
                        let message =
                            status_event(shard.id(), shard.id_space(), &event, encode_cursor(&self.positions));
                        if tx.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                }
                if complete {
                    self.positions[index] = until;
                }
            }
            if idle {
                let changed = select_all(committed.iter_mut().map(|w| Box::pin(w.changed())));
                tokio::select! {
                    (result, _, _) = changed => {
                        if result.is_err() {
                            return; // a shard closed: the node is stopping
                        }
                    }
                    _ = tx.closed() => return,
                }
            }
        }
    }
}

fn status_event(shard: ShardId, space: u64, e: &CallbackRecord, cursor: String) -> v1::StatusEvent {
    let status = MessageStatus::from_code(e.status);
    v1::StatusEvent {
        message_id: MessageId::encode(MessageKey { shard, space, seq: e.seq }).into_string(),
        recipient: e.wa_id.clone(),
        status: status.map_or("unknown", MessageStatus::as_str).to_owned(),
        timestamp_ms: e.at_ms,
        error: (status == Some(MessageStatus::Failed)).then(|| v1::Error {
            code: e.error_code,
            title: e.error_title.clone(),
            field: String::new(),
            details: e.error_details.clone(),
        }),
        biz_opaque_callback_data: e.biz_opaque_callback_data.clone(),
        sender: e.sender.clone(),
        r#type: e.message_type.clone(),
        cursor,
        shard: u32::from(shard.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_refuses_foreign_shapes() {
        let c = encode_cursor(&[1, 17, u64::MAX]);
        assert_eq!(c, format!("c1.1.17.{}", u64::MAX));
        assert_eq!(decode_cursor(&c, 3).unwrap(), vec![1, 17, u64::MAX]);
        for bad in ["", "c1", "c2.1.2.3", "c1.1.x.3", "c1.1.2"] {
            let e = decode_cursor(bad, 3).unwrap_err();
            assert_eq!(e.field, "cursor", "{bad}");
            assert_eq!(e.code, ErrorCode::InvalidParameter, "{bad}");
        }
    }
}
