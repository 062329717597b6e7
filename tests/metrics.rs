//! Health, probes and Prometheus metrics of a real `ferry serve` process (port 0, its in-process
//! chat server): `/metrics` is parsed with a Prometheus text-format parser (`prometheus-parse`)
//! before and after messages flow, and the counters, histograms and per-shard gauges must move;
//! every metric the Grafana dashboard queries must be in a scrape. `/v1/health`, `/healthz`,
//! `/readyz` and gRPC health are checked against a connected node and against one whose chat
//! server is unreachable.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use support::{FerryProcess, connect, http_get, text, wait_for};

async fn get_json(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_get(addr, path).await;
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} answered non-JSON ({e}): {body}")))
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "/metrics: {body}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

/// Sum of the scalar samples named `name` whose labels include `labels` (0 when absent).
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => panic!("{name} is not a scalar"),
        })
        .sum()
}

/// The buckets of histogram `name`: (upper bound, cumulative count).
fn buckets(s: &Scrape, name: &str) -> Vec<(f64, f64)> {
    let sample = s.samples.iter().find(|x| x.metric == name).unwrap_or_else(|| panic!("no histogram {name}"));
    match &sample.value {
        Value::Histogram(b) => b.iter().map(|c| (c.less_than, c.count)).collect(),
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

fn has(s: &Scrape, name: &str) -> bool {
    s.samples.iter().any(|x| x.metric == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_when_messages_flow_and_the_dashboard_queries_only_real_series() {
    let dir = tempfile::tempdir().unwrap();
    // A webhook nobody listens on: callbacks fail, the backlog grows.
    let node = FerryProcess::spawn_with(dir.path(), 2, &["--webhook-url", "http://127.0.0.1:1/hook"]);
    let http = node.http_addr;
    let mut client = connect(node.addr).await;

    let before = scrape(http).await;
    assert_eq!(value(&before, "ferry_messages_accepted_total", &[]), 0.0, "registered at 0 from the start");
    for shard in ["0", "1"] {
        assert!(
            before.samples.iter().any(|x| x.metric == "ferry_queue_depth" && x.labels.get("shard") == Some(shard)),
            "queue depth of shard {shard}"
        );
    }
    let latency_before: f64 = value(&before, "ferry_accept_latency_seconds_count", &[]);

    const N: usize = 6;
    for i in 0..N {
        client.send(text(&format!("+1631555{:04}", 1000 + i), "hello")).await.expect("accepted");
    }
    let mut keyed = text("+16315550999", "once");
    keyed.idempotency_key = "k-1".into();
    client.send(keyed.clone()).await.unwrap();
    let replay = client.send(keyed).await.unwrap().into_inner();
    assert!(replay.idempotent_replay);
    let refused = client.send(text("not a number", "x")).await.expect_err("an invalid recipient is refused");
    let code = refused.metadata().get("ferry-error-code").expect("error code metadata").to_str().unwrap().to_owned();

    let after = scrape(http).await;
    assert_eq!(value(&after, "ferry_messages_accepted_total", &[]), (N + 1) as f64);
    assert_eq!(value(&after, "ferry_idempotent_replays_total", &[]), 1.0);
    assert_eq!(value(&after, "ferry_messages_rejected_total", &[("code", &code)]), 1.0, "rejected by code {code}");
    assert_eq!(value(&after, "ferry_accept_latency_seconds_count", &[]) - latency_before, (N + 1) as f64);
    assert!(value(&after, "ferry_accept_latency_seconds_sum", &[]) > 0.0);
    let b = buckets(&after, "ferry_accept_latency_seconds");
    assert_eq!(b.len(), ferry_http::ops::ACCEPT_LATENCY_BUCKETS.len() + 1, "explicit buckets and +Inf: {b:?}");
    assert_eq!(b.last().unwrap(), &(f64::INFINITY, (N + 1) as f64));
    assert!(b.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative buckets: {b:?}");

    // Delivery: every accepted message is acked by the in-process chat server.
    wait_for(Duration::from_secs(20), "every message acked (histogram) and settled", || async {
        let s = scrape(http).await;
        let acked = value(&s, "ferry_accept_to_ack_seconds_count", &[]);
        let settled = value(&s, "ferry_delivery_settled_total", &[]);
        if acked >= (N + 1) as f64 && settled >= (N + 1) as f64 {
            Ok(())
        } else {
            Err(format!("{acked} acked, {settled} settled of {}", N + 1))
        }
    })
    .await;
    wait_for(Duration::from_secs(20), "webhook failures and backlog", || async {
        let s = scrape(http).await;
        let (failures, backlog) =
            (value(&s, "ferry_webhook_failures_total", &[]), value(&s, "ferry_webhook_backlog", &[]));
        if failures > 0.0 && backlog > 0.0 {
            Ok(())
        } else {
            Err(format!("ferry_webhook_failures_total {failures}, ferry_webhook_backlog {backlog}"))
        }
    })
    .await;
    let s = scrape(http).await;
    assert_eq!(buckets(&s, "ferry_accept_to_ack_seconds").len(), ferry_http::ops::ACCEPT_TO_ACK_BUCKETS.len() + 1);
    assert!(value(&s, "ferry_session_setups_total", &[]) >= 1.0);
    assert!(value(&s, "ferry_session_cache_hits_total", &[]) >= (N + 1) as f64);
    assert_eq!(value(&s, "ferry_gateway_connected", &[]), 2.0, "both shards connected");
    assert_eq!(value(&s, "ferry_in_flight", &[]), 0.0, "every envelope answered: nothing in flight");
    for name in ["ferry_in_flight", "ferry_rocksdb_sst_bytes", "ferry_rocksdb_pending_compaction_bytes"] {
        for shard in ["0", "1"] {
            assert!(
                s.samples.iter().any(|x| x.metric == name && x.labels.get("shard") == Some(shard)),
                "{name} of shard {shard}"
            );
        }
    }

    // The dashboard: valid JSON, and every ferry_* series it queries exists.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/grafana/ferry-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard file")).expect("dashboard JSON");
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            let mut rest = expr;
            while let Some(at) = rest.find("ferry_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                    .collect();
                rest = &rest[at + name.len()..];
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() >= 20, "the dashboard covers the metrics: {queried:?}");
    let missing: Vec<_> = queried
        .iter()
        .filter(|n| !has(&s, n) && !n.strip_suffix("_bucket").is_some_and(|base| has(&s, base)))
        .collect();
    assert!(missing.is_empty(), "the dashboard queries series /metrics does not have: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_probes_follow_the_chat_server_link() {
    let dir = tempfile::tempdir().unwrap();
    let node = FerryProcess::spawn(dir.path(), 2);
    let http = node.http_addr;
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    wait_for(Duration::from_secs(10), "/readyz turns 200 once the shards are connected", || async {
        let (status, body) = http_get(http, "/readyz").await;
        if status == 200 { Ok(()) } else { Err(format!("{status} {body}")) }
    })
    .await;
    let (status, ready) = get_json(http, "/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["shards"], 2);
    wait_for(Duration::from_secs(10), "every shard connected", || async {
        let (_, h) = get_json(http, "/v1/health").await;
        let status = |shard: &str| h["health"][shard]["gateway_status"].clone();
        if status("shard-00") == "connected" && status("shard-01") == "connected" {
            Ok(())
        } else {
            Err(format!("gateway_status {} and {}", status("shard-00"), status("shard-01")))
        }
    })
    .await;
    let (status, health) = get_json(http, "/v1/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["health"]["shard-00"]["role"], "shard");
    assert_eq!(health["health"].as_object().unwrap().len(), 2, "{health}");
    assert_eq!(health["meta"]["version"], env!("CARGO_PKG_VERSION"), "the same meta.version as /v1/messages");

    // gRPC health, per service.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", node.addr)).unwrap().connect().await.unwrap();
    let mut grpc_health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["ferry.v1.Messages", ""] {
        let r = grpc_health
            .check(tonic_health::pb::HealthCheckRequest { service: service.into() })
            .await
            .unwrap_or_else(|e| panic!("health of `{service}`: {e}"))
            .into_inner();
        assert_eq!(r.status(), tonic_health::pb::health_check_response::ServingStatus::Serving, "`{service}`");
    }

    // A node whose chat server is unreachable: live, not ready, every gateway not connected.
    let dir2 = tempfile::tempdir().unwrap();
    let cut = FerryProcess::spawn_with(dir2.path(), 2, &["--upstream", "127.0.0.1:1"]);
    assert_eq!(http_get(cut.http_addr, "/healthz").await.0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, ready) = get_json(cut.http_addr, "/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["ready"], false);
    assert_eq!(ready["shards_connected"], 0);
    assert!(ready["reason"].as_str().unwrap().contains("chat server"), "{ready}");
    let (_, health) = get_json(cut.http_addr, "/v1/health").await;
    for shard in ["shard-00", "shard-01"] {
        let s = health["health"][shard]["gateway_status"].as_str().unwrap();
        assert!(s == "connecting" || s == "disconnected", "{shard}: {s}");
    }
}
