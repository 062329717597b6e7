//! Crash tests: a real `ferry serve` process killed with SIGKILL, then restarted on the same data
//! dir. What was acknowledged before the kill must all be there afterwards.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use ferry_model::ShardId;
use ferry_shard::{NodeLayout, Shard, ShardConfig, SharedResources};
use support::{FerryProcess, LoadOutcome, SendLoad, assert_all_kept, connect, ferry_command, text};

use tonic::Code;

/// The shards of a node whose process is gone, opened in this process (to look at what it left).
fn open_shards(data: &Path, shards: u16) -> (SharedResources, Vec<Shard>) {
    let layout = NodeLayout::open_or_create(data, shards).unwrap();
    let resources = ferry_shard::test_support::resources();
    let opened = (0..shards)
        .map(|i| {
            let dir = layout.shard_dir(i);
            Shard::open(&dir, ShardId(i), shards, layout.meta.node_id, &resources, &ShardConfig::default()).unwrap()
        })
        .collect();
    (resources, opened)
}

/// Idempotency intents on disk whose record is not in its key shard: keys whose message was
/// written and whose record was not when the process died.
fn intents_without_record(shards: &[Shard]) -> usize {
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let mut n = 0;
    for shard in shards {
        for (_, intent) in shard.idempotency_intents().unwrap() {
            if shards[intent.key_shard as usize].get_idempotency(&intent.key, now_ms).unwrap().is_none() {
                n += 1;
            }
        }
    }
    n
}

/// How many messages each recipient (wa_id) has, queued or settled, over every shard.
fn messages_per_recipient(shards: &[Shard]) -> HashMap<String, usize> {
    let mut per = HashMap::new();
    for shard in shards {
        for seq in 1..shard.committed_next_seq() {
            let wa_id = match shard.get_queued(seq).unwrap() {
                Some(record) => record.wa_id,
                None => match shard.get_status(seq).unwrap() {
                    Some(status) => status.wa_id,
                    None => continue, // a seq of a failed batch: never answered, never written
                },
            };
            *per.entry(wa_id).or_insert(0) += 1;
        }
    }
    per
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_send_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::spawn(dir.path(), 4);
    let client = connect(ferry.addr).await;

    // Idempotent sends, acknowledged before the kill.
    let mut keyed = Vec::new();
    for i in 0..24 {
        let mut m = text(&format!("+4479111{i:05}"), &format!("keyed {i}"));
        m.idempotency_key = format!("crash-key-{i}");
        let id = client.clone().send(m.clone()).await.unwrap().into_inner().message_id;
        keyed.push((m, id));
    }

    // 32 concurrent senders with idempotency keys (with 4 shards most keys live on another shard
    // than their message: the kill finds idempotency intents outstanding); SIGKILL once 3,000 sends
    // were acknowledged, while others are in flight.
    const KILL_AFTER: usize = 3_000;
    let load = SendLoad::start_keyed(&client, 32, "+1631");
    load.wait_answered(KILL_AFTER).await;
    ferry.kill9();
    let LoadOutcome { ids, answers, errors, cut_off } = load.finish().await;
    assert!(!errors.is_empty(), "the kill cut no send in flight");
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "an id was answered twice");
    // What the kill left: intents of keys whose record had not reached its key shard (only the
    // replay at start-up can answer a retry of those with their message's id).
    let unrecorded = {
        let (_resources, shards) = open_shards(dir.path(), 4);
        intents_without_record(&shards)
    };
    println!("at the SIGKILL: {} sends cut off, {unrecorded} intents without their record", cut_off.len());

    let ferry = FerryProcess::spawn(dir.path(), 4);
    let mut client = connect(ferry.addr).await;
    // Delivery runs too (in-process chatsim): each is queued, or already acked by the server.
    assert_all_kept(&mut client, &ids, "SIGKILL").await;
    // Idempotency holds across the crash: same id for the same message, conflict for another.
    for (m, id) in &keyed {
        let again = client.send(m.clone()).await.unwrap().into_inner();
        assert_eq!(&again.message_id, id);
        assert!(again.idempotent_replay);
        let mut changed = m.clone();
        changed.biz_opaque_callback_data = "changed".into();
        assert_eq!(client.send(changed).await.unwrap_err().code(), Code::AlreadyExists);
    }
    // Every key answered under load (intents outstanding at the kill) replays its id.
    for (m, id) in &answers {
        let again = client.send(m.clone()).await.unwrap().into_inner();
        assert_eq!((&again.message_id, again.idempotent_replay), (id, true), "key {}", m.idempotency_key);
    }
    // Every send the kill cut off, retried with its key, makes no second message: one message
    // per key (each send of the load has a recipient of its own), whether or not the first try
    // was written, and whether or not its record had reached the key shard.
    for m in &cut_off {
        client.send(m.clone()).await.unwrap_or_else(|s| panic!("retry of key {}: {s}", m.idempotency_key));
    }
    // Ids stay unique after the restart.
    let fresh = client.send(text("+16315550000", "after restart")).await.unwrap().into_inner().message_id;
    assert!(!ids.contains(&fresh));
    assert_eq!(ferry.terminate().code(), Some(0), "SIGTERM drains and exits 0");
    let (_resources, shards) = open_shards(dir.path(), 4);
    let per = messages_per_recipient(&shards);
    for m in answers.iter().map(|(m, _)| m).chain(&cut_off) {
        let wa_id = m.to.trim_start_matches('+');
        assert_eq!(per.get(wa_id), Some(&1), "messages for key {} (sends to {wa_id} only)", m.idempotency_key);
    }
}

#[test]
fn a_data_dir_refuses_another_shard_count() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::spawn(dir.path(), 8);
    assert_eq!(ferry.terminate().code(), Some(0));
    let out = ferry_command()
        .args(["serve", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--shards", "4", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("created with 8 shards but 4"), "{stderr}");
}

#[test]
fn bad_config_is_one_clear_line_and_nonzero_exit() {
    let out = ferry_command().args(["serve", "--shards", "33"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("ferry: error:") && stderr.contains("expected 1 to 32"), "{stderr}");
}

#[test]
fn config_check_prints_the_effective_config_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, "shards = 4\n[webhook]\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"app-s3cret\"\n")
        .unwrap();
    let out = ferry_command().args(["config", "check"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!printed.contains("app-s3cret"), "the secret leaked: {printed}");
    assert!(printed.contains("secret = \"********\""), "{printed}");
    // Defaults are filled in and the file's values win over them.
    assert!(printed.contains("shards = 4") && printed.contains("http_listen = \"127.0.0.1:8080\""), "{printed}");
}

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    // `ferry config check FILE | head -0`: the reader is gone before ferry writes. Unix tools exit
    // quietly then; a panic on EPIPE (exit 101, "failed printing to stdout") is a bug.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, "shards = 4\n").unwrap();
    let mut child = ferry_command()
        .args(["config", "check"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // close the read end: every write gets EPIPE
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
