//! Benchmark scripts must not rot silently: each runs once here at smoke size (a second of load)
//! against the binary these tests built, and must produce its figure. The figure itself is not
//! judged here (performance lives in benches/README.md); only that the script still measures.

mod support;

use std::process::Command;

#[test]
fn targets_script_measures_at_smoke_size() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(root.join("benches/targets.sh"))
        .env("FERRY_BIN", support::ferry_bin())
        .envs([("SHARDS", "2"), ("BATCH", "10"), ("CONCURRENCY", "4"), ("DURATION", "1s"), ("RECIPIENTS", "50")])
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_TARGET")
        .env_remove("FERRY_HTTP")
        .output()
        .expect("run benches/targets.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "targets.sh failed: {}\n{stdout}\n{stderr}", out.status);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("max sustained (acked) "))
        .unwrap_or_else(|| panic!("no figure in the output:\n{stdout}\n{stderr}"));
    let rate: u64 = line["max sustained (acked) ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable figure: {line}"));
    assert!(rate > 0, "the script measured nothing (every call refused?): {line}\n{stdout}");
    assert!(line.contains("accept p50 ") && line.contains(", p99 "), "{line}");
}

#[test]
fn cloud_script_measures_both_targets_at_smoke_size() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(root.join("benches/cloud.sh"))
        .env("FERRY_BIN", support::ferry_bin())
        .envs([("SHARDS", "2"), ("COUNT", "300"), ("NUMBERS", "3"), ("RECIPIENTS", "50"), ("PACE_SECS", "1")])
        .output()
        .expect("run benches/cloud.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cloud.sh failed: {}\n{stdout}\n{stderr}", out.status);
    let figure = |prefix: &str| -> f64 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` figure in the output:\n{stdout}\n{stderr}"));
        line.rsplit(": ")
            .next()
            .and_then(|v| v.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unreadable figure: {line}"))
    };
    assert!(figure("end to end (accepted → read relayed)") > 0.0, "{stdout}");
    let taken =
        stdout.lines().find(|l| l.starts_with("taken: ")).unwrap_or_else(|| panic!("no pacing figure:\n{stdout}"));
    assert!(taken.contains(" msg/s of 800 allowed = "), "{taken}");
    assert!(stdout.contains("refused 130429: "), "{stdout}");
}

#[test]
fn cluster_script_measures_a_single_node_and_a_cluster_at_smoke_size() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut command = Command::new("bash");
    support::clear_ferry_env(&mut command);
    let out = command
        .arg(root.join("benches/cluster.sh"))
        .env("FERRY_BIN", support::ferry_bin())
        .envs([("SHARDS", "2"), ("BATCH", "10"), ("CONCURRENCY", "4"), ("DURATION", "1s"), ("RECIPIENTS", "50")])
        .output()
        .expect("run benches/cluster.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cluster.sh failed: {}\n{stdout}\n{stderr}", out.status);
    for name in ["single node: accepted ", "3-node cluster (RF 3): accepted "] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name:?} figure in the output:\n{stdout}\n{stderr}"));
        let rate: f64 = line[name.len()..]
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unreadable figure: {line}"));
        assert!(rate > 0.0, "the script measured nothing: {line}\n{stdout}");
    }
    assert!(stdout.contains("leads shards"), "the cluster's leaders are reported:\n{stdout}");
}

/// The failover benchmark (`benches/failover.rs`, whose harness is `support::failover`) at smoke
/// size: one SIGKILL of shard 0's leader under load, measured to the successor's first ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_bench_measures_one_kill_at_smoke_size() {
    let options = support::failover::FailoverOptions {
        kills: 1,
        shards: 2,
        rate: 200,
        batch: 10,
        recipients: 100,
        settle: std::time::Duration::from_secs(1),
    };
    let report = support::failover::run(&options).await;
    let lines = report.lines();
    println!("{}", lines.join("\n"));
    assert_eq!(report.rounds.len(), 1, "{lines:?}");
    let round = &report.rounds[0];
    assert!(round.shards.iter().any(|s| s.shard == 0), "shard 0's failover is measured: {lines:?}");
    for s in &round.shards {
        assert_ne!(s.successor, round.killed, "the successor is another node: {lines:?}");
        assert!(s.new_term > s.old_term && s.first_ack >= s.hello, "{s:?}");
        assert!(s.first_ack > std::time::Duration::ZERO, "{s:?}");
    }
    assert!(lines.iter().any(|l| l.starts_with("failover over 1 kills ")), "{lines:?}");
    assert!(report.accepted > 0, "the load was accepted: {lines:?}");
    assert!(report.order_checked > 0 && report.order_violations.is_empty(), "{lines:?}");
}
