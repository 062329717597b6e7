//! Criterion benches of the spine's stages: routing, validation per message type, and a shard's
//! durable append (synced WAL) by batch size. Run: `cargo bench --bench spine` (see README.md).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ferry_coordinator::routing::shard_for_recipient;
use ferry_model::message::OutboundMessage;
use ferry_model::validate::ValidationContext;
use ferry_model::{ShardId, WaId};
use ferry_shard::{NewMessage, QueueRecord, Shard, ShardConfig, SharedResources, StorageTuning};

fn routing(c: &mut Criterion) {
    let ids: Vec<WaId> = (0..1024u64).map(|i| WaId::from_normalized(format!("1631555{i:04}"))).collect();
    let mut g = c.benchmark_group("routing");
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.bench_function("shard_for_recipient/32_shards/1024_ids", |b| {
        b.iter(|| {
            for id in &ids {
                black_box(shard_for_recipient(black_box(id), 32));
            }
        })
    });
    g.finish();
}

/// One realistic message per type, in the reference's JSON shape.
const SAMPLES: &[(&str, &str)] = &[
    (
        "text",
        r#"{"to":"+1 (631) 555-1234","type":"text","text":{"body":"Your order 1234 has shipped and will arrive on Tuesday."}}"#,
    ),
    ("image", r#"{"to":"+16315551234","type":"image","image":{"link":"https://example.com/a.jpg","caption":"look"}}"#),
    (
        "template",
        r#"{"to":"+16315551234","type":"template","template":{"name":"order_update","language":{"policy":"deterministic","code":"en_US"},"components":[{"type":"body","parameters":[{"type":"text","text":"Ada"},{"type":"currency","currency":{"fallback_value":"$10","code":"USD","amount_1000":10000}}]},{"type":"button","sub_type":"quick_reply","index":"0","parameters":[{"type":"payload","payload":"yes"}]}]}}"#,
    ),
    (
        "interactive_list",
        r#"{"to":"+16315551234","type":"interactive","interactive":{"type":"list","header":{"type":"text","text":"Menu"},"body":{"text":"Pick one"},"footer":{"text":"thanks"},"action":{"button":"Options","sections":[{"title":"A","rows":[{"id":"a1","title":"One","description":"first"},{"id":"a2","title":"Two"}]},{"title":"B","rows":[{"id":"b1","title":"Three"}]}]}}}"#,
    ),
    (
        "interactive_button",
        r#"{"to":"+16315551234","type":"interactive","interactive":{"type":"button","body":{"text":"Continue?"},"action":{"buttons":[{"type":"reply","reply":{"id":"y","title":"Yes"}},{"type":"reply","reply":{"id":"n","title":"No"}}]}}}"#,
    ),
    (
        "location",
        r#"{"to":"+16315551234","type":"location","location":{"latitude":37.48,"longitude":-122.14,"name":"HQ","address":"1 Hacker Way"}}"#,
    ),
    (
        "contacts",
        r#"{"to":"+16315551234","type":"contacts","contacts":[{"name":{"formatted_name":"Ada Lovelace","first_name":"Ada"},"phones":[{"phone":"+16315550000","type":"WORK"}]}]}"#,
    ),
    ("reaction", r#"{"to":"+16315551234","type":"reaction","reaction":{"message_id":"wamid.abc","emoji":"👍"}}"#),
];

fn validation(c: &mut Criterion) {
    let ctx = ValidationContext { default_country_code: "1".into(), sender: None };
    let mut g = c.benchmark_group("validate");
    g.throughput(Throughput::Elements(1));
    for (name, json) in SAMPLES {
        let message: OutboundMessage = serde_json::from_str(json).unwrap_or_else(|e| panic!("{name}: {e}"));
        message.clone().validate(&ctx).unwrap_or_else(|e| panic!("{name}: {e}"));
        g.bench_function(*name, |b| {
            b.iter_batched(|| message.clone(), |m| black_box(m.validate(&ctx).unwrap()), BatchSize::SmallInput)
        });
    }
    g.finish();
}

fn shard_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let resources = SharedResources::new(&StorageTuning::default()).unwrap();
    let shard = Shard::open(dir.path(), ShardId(0), 1, 7, &resources, &ShardConfig::default()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let record = QueueRecord {
        wa_id: "16315551234".into(),
        sender: "15550100000".into(),
        message_type: "text".into(),
        accepted_at_ms: 1,
        expires_at_ms: 2,
        payload: vec![b'x'; 200],
        ..QueueRecord::default()
    };
    let mut g = c.benchmark_group("shard_append_synced");
    g.sample_size(20);
    for batch in [1usize, 10, 100, 1000] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("batch_{batch}"), |b| {
            b.iter(|| {
                let messages =
                    vec![NewMessage { record: record.clone(), idempotency: None, held_template: None }; batch];
                let wait = shard.append_durably(messages).unwrap();
                black_box(runtime.block_on(wait).unwrap())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, routing, validation, shard_append);
criterion_main!(benches);
