//! The failover benchmark (issue #12; `benches/failover.rs` runs it at full size,
//! `tests/bench_scripts.rs` at smoke size): three `ferry serve` nodes (every shard a Raft group of
//! the three) and one `ferry chatsim` under continuous load. Each round SIGKILLs the leader of
//! shard 0, waits until every shard the killed node led is delivered by a successor, then
//! restarts the killed node on its data dir and waits until the cluster is steady again.
//!
//! The figure is the time from the SIGKILL to the **first envelope the chat server acked on the
//! successor's stream**: chatsim's `ChatAdmin/History` names, per channel (shard), each accepted
//! `Hello{term, leader_node}` and the server time of the first ack on that term's streams, so the
//! kill and the ack are read off one machine clock. A round also reports when the successor's
//! stream said `Hello` and its first ack of a new message id (not a resend).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_proto::chat::v1::chat_admin_client::ChatAdminClient;
use ferry_proto::chat::v1::{HistoryRequest, TermHistory};
use ferry_proto::v1::messages_client::MessagesClient;
use ferry_proto::v1::{self, SendBatchRequest};
use tonic::transport::Channel;

use super::cluster::Cluster;

/// The knobs of one run.
#[derive(Debug, Clone)]
pub struct FailoverOptions {
    /// SIGKILLs of a leader (rounds).
    pub kills: usize,
    pub shards: u16,
    /// Messages per second offered, in `SendBatch` calls of `batch` spread over the running nodes.
    pub rate: u64,
    pub batch: usize,
    /// Distinct recipients the load is spread over (every shard gets messages).
    pub recipients: usize,
    /// Load time between the cluster being steady and the next kill.
    pub settle: Duration,
}

/// One shard's failover in one round.
#[derive(Debug, Clone)]
pub struct ShardFailover {
    pub shard: u16,
    /// The killed leader's term on the chat server's channel.
    pub old_term: u64,
    pub successor: u64,
    pub new_term: u64,
    /// Kill → the successor's first accepted `Hello`.
    pub hello: Duration,
    /// Kill → the first envelope acked on the successor's stream (the figure).
    pub first_ack: Duration,
    /// Kill → the first ack of a new message id on it (None: only resends were acked when the
    /// round ended).
    pub first_delivery: Option<Duration>,
}

/// One round: which node was killed and every shard it led.
#[derive(Debug, Clone)]
pub struct Round {
    pub killed: u64,
    pub shards: Vec<ShardFailover>,
}

impl Round {
    /// The round's figure: its slowest shard's kill → first ack on the successor's stream.
    pub fn first_ack(&self) -> Duration {
        self.shards.iter().map(|s| s.first_ack).max().unwrap_or_default()
    }
}

#[derive(Debug, Default)]
pub struct FailoverReport {
    pub rounds: Vec<Round>,
    /// Messages the load had answered with an id, messages refused in an answered call (no leader
    /// within `leader_wait_ms`: 1011), and calls that failed as a whole (a dead node).
    pub accepted: u64,
    pub refused: u64,
    pub failed_calls: u64,
    /// How long the load ran.
    pub load_time: Duration,
    /// The per-recipient order check over the chat server's first arrivals (its listed ids).
    pub order_checked: usize,
    pub order_violations: Vec<String>,
}

/// p50 and max of `samples` (nearest rank).
pub fn p50_max(samples: &[Duration]) -> (Duration, Duration) {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    match sorted.len() {
        0 => (Duration::ZERO, Duration::ZERO),
        n => (sorted[(n - 1) / 2], sorted[n - 1]),
    }
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn since(kill_ms: i64, at_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(at_ms - kill_ms).unwrap_or(0))
}

/// Per shard (channel number), its (term, leader) pairs on the chat server, in the order first
/// seen. ferry's channel client id is the shard's id space, so a shard is one channel.
async fn channel_terms(admin: &mut ChatAdminClient<Channel>) -> HashMap<u16, Vec<TermHistory>> {
    let history = admin.history(HistoryRequest { recipients: false }).await.expect("chatsim history").into_inner();
    history.channels.into_iter().map(|c| (c.channel as u16, c.terms)).collect()
}

/// The continuous load: `SendBatch` calls to the running nodes in turn, paced to the offered
/// rate; failures are counted and the next call goes on.
struct Load {
    up: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    const SENDERS: usize = 4;

    fn start(options: &FailoverOptions, up: Vec<SocketAddr>) -> Load {
        let up = Arc::new(Mutex::new(up));
        let stop = Arc::new(AtomicBool::new(false));
        let (accepted, refused, failed) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let calls_per_sec = (options.rate as f64 / options.batch as f64).max(0.1);
        let interval = Duration::from_secs_f64(Self::SENDERS as f64 / calls_per_sec);
        let tasks = (0..Self::SENDERS)
            .map(|task| {
                let (up, stop) = (up.clone(), stop.clone());
                let (accepted, refused, failed) = (accepted.clone(), refused.clone(), failed.clone());
                let (batch, recipients) = (options.batch, options.recipients.max(1));
                tokio::spawn(async move {
                    let mut clients: HashMap<SocketAddr, MessagesClient<Channel>> = HashMap::new();
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    for n in 0u64.. {
                        tick.tick().await;
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let Some(addr) = ({
                            let up = up.lock().unwrap();
                            (!up.is_empty()).then(|| up[(n as usize + task) % up.len()])
                        }) else {
                            continue;
                        };
                        let client = clients.entry(addr).or_insert_with(|| {
                            let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                                .unwrap()
                                .connect_timeout(Duration::from_secs(1))
                                .timeout(Duration::from_secs(10));
                            MessagesClient::new(endpoint.connect_lazy())
                        });
                        let messages = (0..batch)
                            .map(|i| {
                                let r = (n as usize * batch + i) * Self::SENDERS + task;
                                super::text(&format!("+1631{:07}", r % recipients), &format!("failover {task} {n} {i}"))
                            })
                            .collect();
                        match client.send_batch(SendBatchRequest { messages }).await {
                            Ok(r) => {
                                let results = r.into_inner().results;
                                let ok = (results.iter())
                                    .filter(|r| matches!(r.outcome, Some(v1::send_result::Outcome::Accepted(_))))
                                    .count();
                                accepted.fetch_add(ok as u64, Ordering::Relaxed);
                                refused.fetch_add((results.len() - ok) as u64, Ordering::Relaxed);
                            }
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Load { up, stop, accepted, refused, failed, tasks }
    }

    fn set_up(&self, up: Vec<SocketAddr>) {
        *self.up.lock().unwrap() = up;
    }

    /// Stops the senders: (accepted, refused, failed calls).
    async fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        (load(&self.accepted), load(&self.refused), load(&self.failed))
    }
}

/// Every running node's view of every shard's group (`raft` of `/v1/health`), by node id.
async fn raft_views(cluster: &Cluster) -> HashMap<u64, serde_json::Value> {
    let mut views = HashMap::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let Some(node) = node else { continue };
        let got = tokio::time::timeout(Duration::from_secs(2), super::http_get(node.http_addr, "/v1/health")).await;
        if let Ok((200, body)) = got
            && let Ok(health) = serde_json::from_str::<serde_json::Value>(&body)
        {
            views.insert(i as u64 + 1, health["health"].clone());
        }
    }
    views
}

/// Waits until every shard is steady: exactly one running node leads and delivers it, every
/// running node names that leader, and its stream is the latest (term, leader) on the chat
/// server's channel and has had an ack. Returns each shard's (leader, term on the channel).
async fn wait_steady(
    cluster: &Cluster,
    admin: &mut ChatAdminClient<Channel>,
    timeout: Duration,
) -> HashMap<u16, (u64, u64)> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let views = raft_views(cluster).await;
        let terms = channel_terms(admin).await;
        let running = cluster.running().len();
        let mut steady = HashMap::new();
        let mut waiting = None;
        for shard in 0..cluster.shards() {
            let raft = |v: &serde_json::Value| v[format!("shard-{shard:02}")]["raft"].clone();
            let leaders: Vec<u64> = (views.iter())
                .filter(|(_, v)| raft(v)["role"] == "leader" && raft(v)["delivering"] == true)
                .map(|(id, _)| *id)
                .collect();
            let latest = terms.get(&shard).and_then(|t| t.last());
            match (leaders.as_slice(), latest) {
                ([leader], Some(t))
                    if views.len() == running
                        && views.values().all(|v| raft(v)["leader"] == *leader)
                        && t.leader_node == *leader
                        && t.first_ack_unix_ms > 0 =>
                {
                    steady.insert(shard, (*leader, t.term));
                }
                _ => {
                    waiting = Some(format!(
                        "shard {shard}: delivering leaders {leaders:?}, chat server's latest term {latest:?}, views {:?}",
                        views.values().map(raft).collect::<Vec<_>>()
                    ));
                    break;
                }
            }
        }
        let Some(waiting) = waiting else { return steady };
        assert!(tokio::time::Instant::now() < deadline, "the cluster is not steady after {timeout:?}: {waiting}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the benchmark; panics (saying what it saw) when a round does not complete.
pub async fn run(options: &FailoverOptions) -> FailoverReport {
    let mut cluster = Cluster::start(3, options.shards);
    let addrs = |c: &Cluster| c.running().into_iter().map(|(_, a)| a).collect::<Vec<_>>();
    let mut admin = ChatAdminClient::connect(format!("http://{}", cluster.chatsim.addr)).await.expect("chatsim");
    for shard in 0..options.shards {
        cluster.wait_leader(shard, None, Duration::from_secs(60)).await;
    }
    let load = Load::start(options, addrs(&cluster));
    let load_started = std::time::Instant::now();
    let mut report = FailoverReport::default();
    for _ in 0..options.kills {
        wait_steady(&cluster, &mut admin, Duration::from_secs(60)).await;
        tokio::time::sleep(options.settle).await;
        let steady = wait_steady(&cluster, &mut admin, Duration::from_secs(60)).await;
        let victim = steady[&0].0;
        let led: Vec<(u16, u64)> = {
            let mut led: Vec<(u16, u64)> =
                steady.iter().filter(|(_, (l, _))| *l == victim).map(|(s, (_, t))| (*s, *t)).collect();
            led.sort_unstable();
            led
        };
        load.set_up(cluster.running().into_iter().filter(|(id, _)| *id != victim).map(|(_, a)| a).collect());
        let kill_ms = unix_ms();
        cluster.kill9(victim);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let shards = loop {
            let terms = channel_terms(&mut admin).await;
            let done: Vec<ShardFailover> = led
                .iter()
                .filter_map(|&(shard, old_term)| {
                    let newer: Vec<&TermHistory> = terms.get(&shard)?.iter().filter(|t| t.term > old_term).collect();
                    let first = newer.iter().filter(|t| t.first_ack_unix_ms > 0).min_by_key(|t| t.first_ack_unix_ms)?;
                    let hello = newer.iter().map(|t| t.hello_unix_ms).min().expect("first is among them");
                    let delivery = newer.iter().map(|t| t.first_delivery_unix_ms).filter(|&ms| ms > 0).min();
                    Some(ShardFailover {
                        shard,
                        old_term,
                        successor: first.leader_node,
                        new_term: first.term,
                        hello: since(kill_ms, hello),
                        first_ack: since(kill_ms, first.first_ack_unix_ms),
                        first_delivery: delivery.map(|ms| since(kill_ms, ms)),
                    })
                })
                .collect();
            if done.len() == led.len() {
                break done;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "30 s after killing node {victim}, shards {led:?} have no successor delivering: {terms:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        report.rounds.push(Round { killed: victim, shards });
        cluster.restart(victim);
        load.set_up(addrs(&cluster));
    }
    let (accepted, refused, failed) = load.finish().await;
    report.load_time = load_started.elapsed();
    report.accepted = accepted;
    report.refused = refused;
    report.failed_calls = failed;
    let history = super::order::chat_history(cluster.chatsim.addr).await;
    report.order_checked = history.recipients.iter().map(|r| r.message_ids.len()).sum();
    report.order_violations = super::order::recipient_order_violations(&history.recipients);
    report
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

impl FailoverReport {
    /// What the benchmark prints: one line per round, then the figure
    /// (`failover over N kills (...): p50 X s, max Y s`) and the load's totals.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (n, round) in self.rounds.iter().enumerate() {
            let shards: Vec<String> = (round.shards.iter())
                .map(|s| {
                    let delivery = s.first_delivery.map_or_else(|| "-".to_owned(), secs);
                    format!(
                        "shard {} term {} → node {} term {}: hello {}, first ack {}, first new id {delivery}",
                        s.shard,
                        s.old_term,
                        s.successor,
                        s.new_term,
                        secs(s.hello),
                        secs(s.first_ack)
                    )
                })
                .collect();
            lines.push(format!("kill {}: node {}; {}", n + 1, round.killed, shards.join("; ")));
        }
        let per_kill: Vec<Duration> = self.rounds.iter().map(Round::first_ack).collect();
        let (p50, max) = p50_max(&per_kill);
        lines.push(format!(
            "failover over {} kills (SIGKILL → first ack on the successor's stream, slowest shard of each kill): p50 {}, \
             max {}",
            per_kill.len(),
            secs(p50),
            secs(max)
        ));
        let shard_0: Vec<Duration> =
            (self.rounds.iter()).filter_map(|r| r.shards.iter().find(|s| s.shard == 0)).map(|s| s.first_ack).collect();
        let (p50, max) = p50_max(&shard_0);
        lines.push(format!("shard 0 alone: p50 {}, max {}", secs(p50), secs(max)));
        lines.push(format!(
            "load: {} messages accepted in {:.0} s ({:.0} msg/s), {} refused (no leader in time), {} calls failed",
            self.accepted,
            self.load_time.as_secs_f64(),
            self.accepted as f64 / self.load_time.as_secs_f64().max(0.001),
            self.refused,
            self.failed_calls
        ));
        lines.push(format!(
            "per-recipient order: {} violations over {} first arrivals checked",
            self.order_violations.len(),
            self.order_checked
        ));
        lines.extend(self.order_violations.iter().take(10).cloned());
        lines
    }
}
