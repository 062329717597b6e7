//! Upstream-originated events: stage "record what the upstream pushes" of the delivery loop.
//!
//! - **Statuses** (`delivered`, `read`; the chat upstream's receipts) become status changes of
//!   the message's shard, in the turn's batch; the event is acknowledged to the upstream only
//!   after that batch is durable. One that arrives on another shard's connection is written to
//!   its message's shard (`other_shards.rs`).
//! - **Inbound messages** (a user wrote to a business number) are recorded in the shard that
//!   owns the user (`ferry_model::routing`): the customer-service window and an inbound event,
//!   one synced batch; acknowledged only after that.

use ferry_model::routing::shard_for_recipient;
use ferry_model::{MessageId, WaId};

use crate::engine::ShardLoop;
use crate::settle::Fact;
use crate::upstream::{EventToken, Inbound, Upstream};

impl<U: Upstream> ShardLoop<U> {
    /// A status or late failure of `message_id` (`fact` builds it from the message's seq):
    /// recorded in the message's shard.
    pub(crate) fn on_message_fact(&mut self, message_id: &str, token: EventToken, fact: impl FnOnce(u64) -> Fact) {
        let Some(key) = MessageId::decode(message_id).filter(|k| {
            // The id space of the message's shard (this node's id space for a shard it lacks).
            let space = self.all_shards.get(k.shard.index()).map_or(self.shard.id_space(), |s| s.id_space());
            k.space == space
        }) else {
            // Not ours (another node's id): acknowledge so the upstream stops pushing it.
            self.receipts_to_ack.push(token);
            return;
        };
        let fact = fact(key.seq);
        if key.shard != self.shard.id() {
            // Statuses usually come back on the connection the message left on; one that did not
            // is recorded in its message's shard.
            if key.shard.index() >= self.all_shards.len() {
                tracing::warn!(shard = %self.shard.id(), id = message_id, "receipt for a shard this node does not have; dropped");
                self.receipts_to_ack.push(token);
                return;
            }
            self.settle_in_other_shard(key.shard, fact, token);
            return;
        }
        self.record(fact);
        self.receipts_to_ack.push(token);
    }

    /// A user wrote to the business: record it (customer-service window + inbound event) in the
    /// shard that owns the user, and acknowledge it to the upstream only once that is durable.
    pub(crate) fn on_inbound(&mut self, m: Inbound, token: EventToken) {
        let plausible = (8..=15).contains(&m.from.len()) && m.from.bytes().all(|b| b.is_ascii_digit());
        if !plausible || m.to.is_empty() {
            tracing::warn!(shard = %self.shard.id(), from = m.from, to = m.to, "inbound message without a valid user or business; dropped");
            self.receipts_to_ack.push(token);
            return;
        }
        let owner = shard_for_recipient(&WaId::from_normalized(m.from.clone()), self.all_shards.len() as u16);
        let fact = Fact::Inbound {
            id: m.id,
            from: m.from,
            to: m.to,
            at_ms: m.at_ms.unwrap_or_else(|| self.clock.now_ms()),
            kind: m.message_type,
            text: m.text_body,
            profile: m.profile_name,
        };
        self.stats.add(&self.stats.inbound, 1);
        if owner == self.shard.id() {
            self.record(fact);
            self.receipts_to_ack.push(token);
            return;
        }
        // Another shard's user: that shard's writer records it; the ack goes out on this upstream.
        self.settle_in_other_shard(owner, fact, token);
    }
}
