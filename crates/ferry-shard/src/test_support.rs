//! Test support (hidden from the docs): builders shared by this crate's tests and other crates'
//! tests that use a real shard.

use crate::{NewMessage, QueueRecord, SharedResources, StorageTuning};

/// Small shared resources (8 MiB block cache, 16 MiB of write buffers) for a test's shards.
pub fn resources() -> SharedResources {
    SharedResources::new(&StorageTuning { block_cache_mib: 8, write_buffer_total_mib: 16, ..StorageTuning::default() })
        .expect("test resources")
}

/// Text message `n`: to `1631555{n:04}` from `15550100000`, accepted at 1 s, expiring at 99 s,
/// without callback data or idempotency.
pub fn message(n: u32) -> NewMessage {
    NewMessage {
        record: QueueRecord {
            wa_id: format!("1631555{n:04}"),
            sender: "15550100000".into(),
            message_type: "text".into(),
            accepted_at_ms: 1_000,
            expires_at_ms: 99_000,
            payload: b"{}".to_vec(),
            ..QueueRecord::default()
        },
        idempotency: None,
        held_template: None,
    }
}

/// [`message`] as a paced template `promo`'s: held (written to `held`, not the queue) at 1 s.
pub fn held_message(n: u32) -> NewMessage {
    let mut m = message(n);
    m.record.message_type = "template".into();
    m.record.held_at_ms = 1_000;
    m.held_template = Some("promo".into());
    m
}
