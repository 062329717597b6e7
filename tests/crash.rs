//! Crash tests: a real `ferry serve` process killed with SIGKILL, then restarted on the same data
//! dir. What was acknowledged before the kill must all be there afterwards.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use ferry_model::phone;
use ferry_model::routing::{shard_for_idempotency_key, shard_for_recipient};
use ferry_proto::v1;
use ferry_shard::storage::idempotency_key;
use ferry_shard::{NodeLayout, Shard, ShardConfig, SharedResources, StorageLayout};
use support::{
    ChatSimProcess, FerryProcess, LoadOutcome, SendLoad, assert_all_kept, chat_stats, connect, ferry_command, http_get,
    text, wait_for,
};

use tonic::Code;

/// The shards of a node whose process is gone, opened in this process (to look at what it left).
fn open_shards(data: &Path, shards: u16) -> (SharedResources, Vec<Shard>) {
    // The layout asked for does not matter: the data dir exists and keeps its own.
    let layout = NodeLayout::open_or_create(data, shards, StorageLayout::SharedDatabase).unwrap();
    let resources = ferry_shard::test_support::resources();
    let opened = ferry_shard::open_node_shards(&layout, &resources, &ShardConfig::default()).unwrap();
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
    assert!(dir.path().join("shards").is_dir(), "a new data dir keeps every shard in one database (format 2)");
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

/// Sum of `ferry_shard_appended_total` over every shard in a `/metrics` scrape: messages durably
/// appended since the process started.
async fn appended_total(http: std::net::SocketAddr) -> u64 {
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200, "/metrics: {body}");
    body.lines()
        .filter(|l| l.starts_with("ferry_shard_appended_total{"))
        .map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or_else(|| panic!("{l}")) as u64)
        .sum()
}

/// A SIGKILL with idempotency intents outstanding, every time: the first process runs with the
/// test hook `FERRY_TEST_HOLD_KEY_SHARD_WRITES` (a send whose key lives on another shard than its
/// message writes the message and its intent, then holds the key-shard record write back forever,
/// unanswered), so the kill always lands between the two writes. After the restart each key
/// resolves to exactly one message: its retry answers the message already written (only the
/// intent replay at start-up can, for the keys on another shard), and the chat server receives
/// each message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_between_the_message_and_its_key_shard_record_leaves_one_message_per_key() {
    const SHARDS: u16 = 4;
    const N: usize = 48;
    const SENDER: &str = "+15550100000";
    let sim = ChatSimProcess::spawn("127.0.0.1:0", &[]);
    let upstream = sim.addr.to_string();
    let flags = ["--upstream", upstream.as_str(), "--default-sender", SENDER, "--customer-service-window", "off"];
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::spawn_with_env(dir.path(), SHARDS, &flags, &[("FERRY_TEST_HOLD_KEY_SHARD_WRITES", "1")]);
    let mut client = connect(ferry.addr).await;

    // One batch of keyed sends, each to a recipient of its own; a key lives on another shard than
    // its message for most of them (those get an intent, and their record is held back).
    let sender = phone::normalize(SENDER, "1").unwrap();
    let messages: Vec<v1::SendRequest> = (0..N)
        .map(|i| {
            let mut m = text(&format!("+1631555{i:04}"), &format!("held {i}"));
            m.idempotency_key = format!("held-key-{i}");
            m
        })
        .collect();
    let elsewhere = messages
        .iter()
        .filter(|m| {
            let wa = phone::normalize(&m.to, "1").unwrap();
            let key = idempotency_key(sender.as_str(), &m.idempotency_key);
            shard_for_idempotency_key(&key, SHARDS) != shard_for_recipient(&wa, SHARDS)
        })
        .count();
    assert!(elsewhere > 0, "no key on another shard than its message: the test would prove nothing");
    let batch = {
        let mut c = client.clone();
        let messages = messages.clone();
        tokio::spawn(async move { c.send_batch(v1::SendBatchRequest { messages }).await })
    };
    // Every message is durable (its shard's writer counted it), and the batch waits for the
    // records held back: the kill lands between the two writes.
    wait_for(Duration::from_secs(60), &format!("{N} messages appended"), || async {
        match appended_total(ferry.http_addr).await {
            n if n == N as u64 => Ok(()),
            n => Err(format!("{n} appended")),
        }
    })
    .await;
    assert!(!batch.is_finished(), "the batch was answered although its records were held back");
    ferry.kill9();
    let cut = tokio::time::timeout(Duration::from_secs(30), batch).await.expect("the kill ends the batch").unwrap();
    assert!(cut.is_err(), "the batch was answered: {cut:?}");

    // What the kill left: every message once, and an intent without its record for each key on
    // another shard.
    {
        let (_resources, shards) = open_shards(dir.path(), SHARDS);
        assert_eq!(intents_without_record(&shards), elsewhere, "intents left without their record by the kill");
        let per = messages_per_recipient(&shards);
        for m in &messages {
            assert_eq!(per.get(m.to.trim_start_matches('+')), Some(&1), "messages for {} before the restart", m.to);
        }
    }

    // Restarted without the hook: a retry of every key answers its first message.
    let ferry = FerryProcess::spawn_with(dir.path(), SHARDS, &flags);
    client = connect(ferry.addr).await;
    let mut ids = Vec::with_capacity(N);
    for m in &messages {
        let again = client.send(m.clone()).await.unwrap_or_else(|s| panic!("retry of {}: {s}", m.idempotency_key));
        let again = again.into_inner();
        assert!(again.idempotent_replay, "key {} made a second message {}", m.idempotency_key, again.message_id);
        ids.push(again.message_id);
    }
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), N, "two keys answered one message");
    // The chat server receives each message once (resends of a message it has are not new).
    wait_until_at_least_sent(&client, &ids, Duration::from_secs(60)).await;
    let stats = chat_stats(sim.addr).await;
    assert_eq!(stats.unique_messages, N as u64, "messages the chat server received: {stats:?}");
    assert_eq!(ferry.terminate().code(), Some(0), "SIGTERM drains and exits 0");
    let (_resources, shards) = open_shards(dir.path(), SHARDS);
    assert_eq!(intents_without_record(&shards), 0);
    let per = messages_per_recipient(&shards);
    for m in &messages {
        assert_eq!(per.get(m.to.trim_start_matches('+')), Some(&1), "messages for key {}", m.idempotency_key);
    }
}

/// Waits until every id's status is `sent` or later (the chat server acked it).
async fn wait_until_at_least_sent(client: &support::Client, ids: &[String], timeout: Duration) {
    for id in ids {
        wait_for(timeout, &format!("{id} at least sent"), || {
            let (mut c, id) = (client.clone(), id.clone());
            async move {
                match support::status_of(&mut c, &id).await.status.as_str() {
                    "sent" | "delivered" | "read" => Ok(()),
                    other => Err(other.to_owned()),
                }
            }
        })
        .await;
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

/// A single node's data dir (format 2: every shard in one database) is not a replica's: a cluster
/// node refuses it instead of creating empty per-shard databases beside the single node's data.
#[test]
fn a_cluster_node_refuses_a_single_nodes_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::spawn(dir.path(), 2);
    assert_eq!(ferry.terminate().code(), Some(0));
    let listen = format!("127.0.0.1:{}", support::cluster::free_port());
    let peers = format!("1={listen}");
    let mut child = ferry_command()
        .args(["serve", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--shards", "2"])
        .args(["--auth", "disabled", "--node-id", "1", "--cluster-listen", &listen, "--peers", &peers])
        .args(["--replication-factor", "1", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the cluster node started on a single node's data dir");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("a replicated node needs a data dir of its own"), "{stderr}");
    assert!(!dir.path().join("shard-00").exists(), "no per-shard database was created");
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

/// What `ferry serve` would run with: the same `FERRY_*` env vars and flags apply over the file
/// (before, `config check` printed the file alone, so a container's env was not checked).
#[test]
fn config_check_applies_the_env_and_the_flags_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, "shards = 4\nhttp_listen = \"127.0.0.1:8080\"\n").unwrap();
    let out = ferry_command()
        .args(["config", "check"])
        .arg(&path)
        .args(["--http-listen", "0.0.0.0:9090"])
        .env("FERRY_SHARDS", "6")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("shards = 6"), "FERRY_SHARDS wins over the file: {printed}");
    assert!(printed.contains("http_listen = \"0.0.0.0:9090\""), "the flag wins over the file: {printed}");
    // A bad value from the env is refused like a bad value in the file.
    let out = ferry_command().args(["config", "check"]).arg(&path).env("FERRY_SHARDS", "99").output().unwrap();
    assert!(!out.status.success(), "33+ shards accepted: {}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shards"), "{}", String::from_utf8_lossy(&out.stderr));
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
