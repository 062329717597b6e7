//! Paced templates (`[pacing]`), end to end: ferry (ingest, delivery, the pacing rule) and the
//! reference chat server in this process, on port 0. A paced template's send answers
//! `held_for_quality_assessment` and is not delivered; an admin `ResolveHeld` releases it (it is
//! delivered under the id answered at send time) or drops it (`failed`, 132015, visible in
//! `GetMessage` and `WatchStatuses`); the rule releases or drops after `hold_secs` of the
//! coordinator's clock; held messages survive a restart; other messages are unaffected.

mod support;

use std::time::Duration;

use ferry_chatsim::{ChatSim, ChatSimConfig};
use ferry_coordinator::{AfterHold, CoordinatorConfig, HeldCounts, PacingConfig};
use ferry_delivery::DeliveryConfig;
use ferry_model::clock::ManualClock;
use ferry_proto::v1::{self, send_request::Content};
use support::{Client, Delivering, status_of, text, wait_for};

const HELD: &str = "held_for_quality_assessment";

fn template(to: &str, name: &str) -> v1::SendRequest {
    v1::SendRequest {
        to: to.into(),
        content: Some(Content::Template(v1::TemplateMessage {
            name: name.into(),
            language: Some(v1::TemplateLanguage { policy: "deterministic".into(), code: "en_US".into() }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

async fn chatsim() -> ChatSim {
    ChatSim::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), ChatSimConfig::for_test())
        .await
        .unwrap()
}

fn paced_config(dir: &std::path::Path, pacing: PacingConfig) -> CoordinatorConfig {
    CoordinatorConfig { pacing, ..CoordinatorConfig::for_test(dir, 4) }
}

async fn resolve(client: &mut Client, template_name: &str, action: v1::HeldAction) -> v1::ResolveHeldResponse {
    let request = v1::ResolveHeldRequest { template_name: template_name.into(), action: action as i32 };
    client.resolve_held(request).await.expect("resolve held").into_inner()
}

async fn wait_for_status(client: &Client, id: &str, status: &str) {
    wait_for(Duration::from_secs(30), &format!("{id} {status}"), || {
        let (mut c, id) = (client.clone(), id.to_owned());
        async move {
            let seen = status_of(&mut c, &id).await.status;
            if seen == status { Ok(()) } else { Err(format!("status {seen}")) }
        }
    })
    .await;
}

/// A recipient on the same one of 4 shards as `to` (`+1631556NNNN`, the first not in `taken`): a
/// message to it, sent later and read, shows that the shard's delivery loop went past `to`'s.
fn same_shard_marker(to: &str, taken: &mut Vec<String>) -> String {
    use ferry_model::routing::shard_for_recipient;
    let shard = |number: &str| shard_for_recipient(&ferry_model::WaId::from_normalized(number[1..].to_owned()), 4);
    let marker = (0..10_000)
        .map(|n| format!("+1631556{n:04}"))
        .find(|m| shard(m) == shard(to) && !taken.contains(m))
        .expect("a recipient on every shard");
    taken.push(marker.clone());
    marker
}

/// Sends a text to a [`same_shard_marker`] of each of `to` and waits until each is read.
async fn deliver_markers(client: &mut Client, to: &[&str], taken: &mut Vec<String>) {
    for t in to {
        let marker = same_shard_marker(t, taken);
        let id = client.send(text(&marker, "marker")).await.unwrap().into_inner().message_id;
        wait_for_status(client, &id, "read").await;
    }
}

fn history(r: &v1::MessageRecord) -> Vec<&str> {
    r.history.iter().map(|h| h.status.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_templates_are_held_until_an_admin_call_releases_or_drops_them() {
    let sim = chatsim().await;
    let dir = tempfile::tempdir().unwrap();
    let pacing =
        PacingConfig { templates: vec!["promo".into(), "flash".into()], hold_secs: 3600, ..Default::default() };
    let config = paced_config(dir.path(), pacing);
    let ferry = Delivering::start(dir, config, sim.local_addr(), DeliveryConfig::for_test(), ManualClock::new()).await;
    let mut client = ferry.node.client().await;

    // Paced: held, with its id; a keyed replay answers the same id, still held.
    let mut keyed = template("+16315550001", "promo");
    keyed.idempotency_key = "promo-1".into();
    let promo = client.send(keyed.clone()).await.unwrap().into_inner();
    assert_eq!(promo.message_status, HELD);
    let replay = client.send(keyed).await.unwrap().into_inner();
    assert_eq!((replay.message_id.as_str(), replay.message_status.as_str()), (promo.message_id.as_str(), HELD));
    assert!(replay.idempotent_replay);
    let flash = client.send(template("+16315550002", "flash")).await.unwrap().into_inner();
    assert_eq!(flash.message_status, HELD);

    // Not paced: accepted and delivered as usual (their seqs are after the held ones, so the
    // delivery loop's cursor passes the held messages).
    let other = client.send(template("+16315550003", "order_update")).await.unwrap().into_inner();
    let plain = client.send(text("+16315550004", "hello")).await.unwrap().into_inner();
    assert_eq!((other.message_status.as_str(), plain.message_status.as_str()), ("accepted", "accepted"));
    wait_for(Duration::from_secs(30), "the unpaced messages acked", || async {
        let unique = sim.stats().unique_messages;
        if unique == 2 { Ok(()) } else { Err(format!("{unique} messages at the chat server")) }
    })
    .await;

    let held = status_of(&mut client, &promo.message_id).await;
    assert_eq!((held.status.as_str(), history(&held)), (HELD, vec!["accepted", HELD]));
    assert_eq!(held.r#type, "template");
    // Later messages on the held ones' shards were delivered; the held ones were not.
    let mut markers = Vec::new();
    deliver_markers(&mut client, &["+16315550001", "+16315550002"], &mut markers).await;
    assert_eq!(sim.stats().unique_messages, 4, "held messages are not delivered");

    // Release: delivered under the original id, its history shows the hold.
    let released = resolve(&mut client, "promo", v1::HeldAction::Release).await;
    assert_eq!((released.released, released.dropped, released.expired), (1, 0, 0));
    wait_for_status(&client, &promo.message_id, "read").await;
    let read = status_of(&mut client, &promo.message_id).await;
    assert_eq!(history(&read), vec!["accepted", HELD, "sent", "delivered", "read"]);
    assert_eq!(sim.stats().unique_messages, 5);

    // Drop: failed with 132015, in GetMessage and in the status stream.
    let dropped = resolve(&mut client, "flash", v1::HeldAction::Drop).await;
    assert_eq!((dropped.released, dropped.dropped, dropped.expired), (0, 1, 0));
    let failed = status_of(&mut client, &flash.message_id).await;
    assert_eq!(failed.status, "failed");
    let error = failed.error.clone().expect("a failed message has its error");
    assert_eq!((error.code, error.title.as_str()), (132015, "Template is paused"));
    assert_eq!(history(&failed), vec!["accepted", HELD, "failed"]);
    let watch = v1::WatchStatusesRequest {
        message_ids: vec![flash.message_id.clone()],
        start: v1::StartFrom::Oldest as i32,
        ..Default::default()
    };
    let mut stream = client.watch_statuses(watch).await.unwrap().into_inner();
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!((event.status.as_str(), event.error.map(|e| e.code)), ("failed", Some(132015)));
    deliver_markers(&mut client, &["+16315550002"], &mut markers).await;
    assert_eq!(sim.stats().unique_messages, 6, "a dropped message is never delivered");

    // Nothing left to resolve; bad requests say what was expected.
    let again = resolve(&mut client, "promo", v1::HeldAction::Drop).await;
    assert_eq!((again.released, again.dropped, again.expired), (0, 0, 0));
    let bad = v1::ResolveHeldRequest { template_name: "promo".into(), action: 0 };
    let e = client.resolve_held(bad).await.expect_err("unspecified action");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("HELD_ACTION_RELEASE"), "{}", e.message());
    let unnamed = v1::ResolveHeldRequest { template_name: String::new(), action: v1::HeldAction::Release as i32 };
    let e = client.resolve_held(unnamed).await.expect_err("no template name");
    assert_eq!(e.metadata().get("ferry-error-field").unwrap(), "template_name");
    ferry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_survive_a_restart_and_the_rule_releases_them_after_hold_secs() {
    let sim = chatsim().await;
    let dir = tempfile::tempdir().unwrap();
    let pacing = PacingConfig { templates: vec!["promo".into()], hold_secs: 600, after_hold: AfterHold::Release };
    let config = paced_config(dir.path(), pacing);
    let clock = ManualClock::new();
    let ferry =
        Delivering::start(dir, config.clone(), sim.local_addr(), DeliveryConfig::for_test(), clock.clone()).await;
    let mut client = ferry.node.client().await;
    let promo = client.send(template("+16315550011", "promo")).await.unwrap().into_inner();
    assert_eq!(promo.message_status, HELD);
    let plain = client.send(text("+16315550012", "after the held one")).await.unwrap().into_inner();
    wait_for_status(&client, &plain.message_id, "read").await;

    // A graceful restart: still held, still not delivered (the rule's time has not come).
    let dir = ferry.stop().await;
    let ferry =
        Delivering::start(dir, config.clone(), sim.local_addr(), DeliveryConfig::for_test(), clock.clone()).await;
    let mut client = ferry.node.client().await;
    assert_eq!(status_of(&mut client, &promo.message_id).await.status, HELD);
    let applied = ferry.node.coordinator.apply_pacing_rule().await.unwrap();
    assert_eq!(applied, HeldCounts::default(), "the rule waits hold_secs");
    assert_eq!(status_of(&mut client, &promo.message_id).await.status, HELD, "the rule waits hold_secs");
    assert_eq!(sim.stats().unique_messages, 1);

    // hold_secs pass on the coordinator's clock: the rule releases it, under its original id.
    clock.advance(Duration::from_secs(601));
    wait_for_status(&client, &promo.message_id, "read").await;
    assert_eq!(sim.stats().unique_messages, 2);

    // Messages held later are found above the rule's scan floor: one due, then the other.
    let early = client.send(template("+16315550013", "promo")).await.unwrap().into_inner().message_id;
    clock.advance(Duration::from_secs(300));
    let late = client.send(template("+16315550014", "promo")).await.unwrap().into_inner().message_id;
    clock.advance(Duration::from_secs(301));
    wait_for_status(&client, &early, "read").await;
    let applied = ferry.node.coordinator.apply_pacing_rule().await.unwrap();
    assert_eq!(applied, HeldCounts::default(), "301 s old: not due yet");
    assert_eq!(status_of(&mut client, &late).await.status, HELD, "301 s old: not due yet");
    clock.advance(Duration::from_secs(300));
    wait_for_status(&client, &late, "read").await;
    assert_eq!(sim.stats().unique_messages, 4);
    ferry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rule_drops_when_after_hold_is_drop() {
    let sim = chatsim().await;
    let dir = tempfile::tempdir().unwrap();
    let pacing = PacingConfig { templates: vec!["promo".into()], hold_secs: 1, after_hold: AfterHold::Drop };
    let config = paced_config(dir.path(), pacing);
    let ferry = Delivering::start(dir, config, sim.local_addr(), DeliveryConfig::for_test(), ManualClock::new()).await;
    let mut client = ferry.node.client().await;
    let promo = client.send(template("+16315550021", "promo")).await.unwrap().into_inner();
    assert_eq!(promo.message_status, HELD);
    wait_for_status(&client, &promo.message_id, "failed").await;
    let failed = status_of(&mut client, &promo.message_id).await;
    let error = failed.error.unwrap();
    assert_eq!(error.code, 132015);
    assert!(error.details.contains("pacing.after_hold = drop"), "{}", error.details);
    assert_eq!(sim.stats().unique_messages, 0);
    ferry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_serve_holds_across_sigkill_and_ferry_held_drop_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, "[pacing]\ntemplates = [\"promo\"]\nhold_secs = 3600\n").unwrap();
    let data = dir.path().join("data");
    let args = ["--config", config.to_str().unwrap()];
    let ferry = support::FerryProcess::spawn_with(&data, 2, &args);
    let mut client = support::connect(ferry.addr).await;
    let promo = client.send(template("+16315550031", "promo")).await.unwrap().into_inner();
    assert_eq!(promo.message_status, HELD);
    ferry.kill9();

    let ferry = support::FerryProcess::spawn_with(&data, 2, &args);
    let mut client = support::connect(ferry.addr).await;
    assert_eq!(status_of(&mut client, &promo.message_id).await.status, HELD, "held across SIGKILL");
    let out = support::ferry_command()
        .args(["held", "drop", "--template", "promo", "--target", &format!("http://{}", ferry.addr)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let counts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(counts, serde_json::json!({"released": 0, "dropped": 1, "expired": 0}));
    let failed = status_of(&mut client, &promo.message_id).await;
    assert_eq!((failed.status.as_str(), failed.error.map(|e| e.code)), ("failed", Some(132015)));
    assert!(ferry.terminate().success());
}
