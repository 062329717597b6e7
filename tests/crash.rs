//! Crash tests: a real `ferry serve` process killed with SIGKILL, then restarted on the same data
//! dir. What was acknowledged before the kill must all be there afterwards.

mod support;

use std::collections::HashSet;

use support::{FerryProcess, LoadOutcome, SendLoad, assert_all_kept, connect, ferry_command, text};

use tonic::Code;

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
    let LoadOutcome { ids, answers, errors } = load.finish().await;
    assert!(!errors.is_empty(), "the kill cut no send in flight");
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "an id was answered twice");

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
    // Ids stay unique after the restart.
    let fresh = client.send(text("+16315550000", "after restart")).await.unwrap().into_inner().message_id;
    assert!(!ids.contains(&fresh));
    assert_eq!(ferry.terminate().code(), Some(0), "SIGTERM drains and exits 0");
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
